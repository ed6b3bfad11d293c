"""`python -m relayd` runs the CLI."""

from __future__ import annotations

from relayd.cli.main import main

main()
