"""How long a lane may wait for the reply to the final dot; pure.

RFC 5321 4.5.3.2.6 asks a client to wait 10 minutes for it: the server may be scanning or
storing the message, and a client that gives up early sends it again (a duplicate). The
lease bounds that wait: past it another worker may take the message, so the wait ends a
margin before the lease does.
"""

from __future__ import annotations

FINAL_REPLY_WAIT = 600.0  # RFC 5321 4.5.3.2.6: "Data termination: 10 minutes"
LEASE_MARGIN = 30.0  # at most; a tenth of the lease when that is shorter


def final_reply_timeout(lease_until: float, now: float, timeout: float, lease_time: float) -> float:
    """Seconds from `now` (a send's start) by which the final dot's reply must come: 10
    minutes, cut to end a margin before the lease does, but never below the general
    `timeout` while the lease lasts that long."""
    left = lease_until - now
    within_lease = left - min(LEASE_MARGIN, lease_time / 10)
    return max(min(FINAL_REPLY_WAIT, within_lease), min(timeout, left), 0.0)
