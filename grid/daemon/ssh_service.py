"""The SSH service's entry in grid.daemon.server.SERVICE_MODULES.

The service itself is grid.daemon.sshd; it is imported only when ``grid serve --ssh`` asks for
it, because asyncssh takes ~0.1 s to import and every daemon start (autostart included) would
pay it otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grid.daemon.sshd import SSHService


def make(daemon: Any) -> SSHService | None:
    """The SSH service when ``grid serve --ssh HOST:PORT`` asked for one, else None."""
    listen = getattr(daemon.settings, "listen_ssh", None)
    if not listen:
        return None
    from grid.daemon.sshd import SSHService

    return SSHService(daemon, listen)
