"""How long a lane waits for the reply to the final dot.

RFC 5321 4.5.3.2.6 asks a client to wait 10 minutes for it: the server may be scanning or
storing the message, and a client that gives up early sends it again (a duplicate). The
lease does not cut that wait short: it is renewed while the send lasts
(delivery/renewal.py), so no other worker takes the message meanwhile unless this node
stops answering (queue.node_timeout on PostgreSQL), which at-least-once delivery allows.
"""

from __future__ import annotations

FINAL_REPLY_WAIT = 600.0  # RFC 5321 4.5.3.2.6: "Data termination: 10 minutes"
