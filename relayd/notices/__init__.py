"""Operator notices: the notifier (dedup, digests), its sink, the queue and disk watches."""
