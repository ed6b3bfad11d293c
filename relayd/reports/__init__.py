"""Reports relayd makes about its own queue (DSNs, delay warnings), and their outbox."""
