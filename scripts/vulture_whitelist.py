# ruff: noqa
"""Names vulture cannot see used (scripts/check runs `vulture relayd` with this file).

Vulture reads this file as more source (it is never imported or run, hence the bare names):
a name mentioned here counts as used. Each entry says why it is not dead. At
--min-confidence 80 vulture reports unused imports, unused arguments and unreachable code
only, so framework hooks (aiosmtpd's handle_*/smtp_*, pydantic validators) need no entry
here; vulture reports them at 60.
"""

# The async context manager protocol calls __aexit__(exc_type, exc, tb); the stores
# (store/sqlite/store.py, store/postgres/store.py) and ImapSession (bounces/imap.py) close
# whether or not the block raised, so they never read the exception.
exc_type
tb

# store/postgres/sql.py: named only inside the quoted `Conn` type alias, quoted because
# asyncpg's PoolConnectionProxy cannot be subscripted at runtime.
PoolConnectionProxy
