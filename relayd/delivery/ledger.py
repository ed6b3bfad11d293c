"""The end of a metered send: stamp its reservation, or give the slot back.

A lane reserves a send in the store's ledger before it connects (SendLedger.reserve_send);
the ledger counts the send from its final reply, so every window at the provider holds at
most N arrivals however late the message arrived. A stamp the store cannot write must not
cost the attempt's outcome (the message would be sent again): the reservation then stays
open, counted as under way until `open_for` has passed, which only makes later sends wait.
"""

from __future__ import annotations

from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.store.base import SendLedger

log = get_logger("dispatch")


async def finish_send(
    store: SendLedger, reservation: int | None, at: float, reached_data: bool
) -> None:
    """Stamp `reservation` with `at` (the final reply's time), or release it if the upstream
    never had the message; nothing for an unmetered send (None)."""
    if reservation is None:
        return
    try:
        await store.finish_send(reservation, at, reached_data)
    except StoreError as exc:
        log.error("store_error", reservation=reservation, error=str(exc))
