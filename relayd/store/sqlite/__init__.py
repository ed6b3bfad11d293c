"""The default store backend: one SQLite file (WAL, synchronous=FULL, group commit)."""
