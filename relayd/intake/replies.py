"""Every reply intake itself sends, with its enhanced status code (RFC 3463).

One module for the whole SMTP conversation (commands, DATA, AUTH), so one test
(tests/unit/test_intake_replies.py) keeps each name true to its code and class. Replies
with no constant here are aiosmtpd's own (EHLO, STARTTLS, AUTH's 334 and 538, 530).
"""

from __future__ import annotations

R250_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
R250_OK = "250 2.1.0 Ok"
R250_RCPT_OK = "250 2.1.5 Ok"
R354_DATA = "354 End data with <CR><LF>.<CR><LF>"
R421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, please try again later"
R451_STORE_UNAVAILABLE = "451 4.3.0 Temporary local problem, please try again later"
R452_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients (at most {limit} per message)"
R454_AUTH_LOCKED = "454 4.7.0 Too many failed authentication attempts, try again later"
R500_LINE_TOO_LONG = (
    "500 5.5.2 Line too long (this relay's server.max_line_length is {limit} bytes)"
)
R501_SYNTAX_MAIL = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
R501_SYNTAX_RCPT = "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"
R501_SYNTAX_DATA = "501 5.5.4 Syntax: DATA"
R501_BAD_DSN_PARAMETER = "501 5.5.4 Bad DSN parameter: {reason}"
R503_NEED_MAIL = "503 5.5.1 Error: need MAIL command"
R503_NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
R503_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
R535_AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
R552_TOO_BIG = "552 5.3.4 Message too big for this relay (at most {limit} bytes)"
R553_BAD_RECIPIENT = "553 5.1.3 Bad recipient address syntax: {reason}"
R553_BAD_SENDER = "553 5.1.3 Bad sender address syntax: {reason}"
R553_SENDER_NOT_ALLOWED = "553 5.7.1 Sender address not allowed for user {user}"
R554_ACCESS_DENIED = "554 5.7.1 Access denied: {client} is not in server.allowed_networks"
R555_UNKNOWN_PARAMETER = "555 5.5.4 Unsupported parameter {param}"
