"""A daemon service (grid.daemon.server.SERVICE_MODULES): not built yet."""

from __future__ import annotations

from typing import Any


def make(daemon: Any) -> None:
    """Nothing to start yet."""
    return None
