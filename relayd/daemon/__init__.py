"""The daemon: wiring and lifecycle, schedule, reload, heartbeat, retention, admin endpoint."""
