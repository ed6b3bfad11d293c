"""The shared store backend: one PostgreSQL database for every relayd node."""
