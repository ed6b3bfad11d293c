"""The command line: `relayd` subcommands, the queue tool, test-upstream, send-test and sendmail."""
