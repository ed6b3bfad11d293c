"""Pure policy: what the relay decides, given plain values and `now`; no I/O, no asyncio."""
