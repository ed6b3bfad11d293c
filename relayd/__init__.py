"""relayd: an outbound-mail relay daemon."""

from __future__ import annotations

__version__ = "0.1.0"
