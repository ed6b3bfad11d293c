"""Intake: the SMTP server local apps talk to, its AUTH layer, and the intake worker processes."""
