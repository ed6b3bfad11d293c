"""Reports relayd makes about its own queue (DSNs, delay warnings), and the outbox that queues
all mail relayd makes itself."""
