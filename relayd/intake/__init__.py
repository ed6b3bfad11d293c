"""Intake: the SMTP server local apps talk to (server.py), what it decides and enqueues
(handler.py), its replies, its AUTH layer, and the intake worker processes."""
