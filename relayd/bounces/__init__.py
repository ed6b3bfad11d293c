"""Late bounces: the IMAP poller, its session, matching reports to stored mail, and its jobs."""
