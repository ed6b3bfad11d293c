"""What an operator does by hand, from the CLI or the status page (web/): test-upstream,
send-test and the queue tool's operations."""
