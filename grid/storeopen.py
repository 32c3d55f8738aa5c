"""Opening the home's block store for a command, whether or not the node daemon runs.

The store has one writer process (store.local's lock). While the node daemon runs, it is
that writer, and a command that writes (``grid import``, ``grid store put``) reaches the same
store through the daemon's block socket (``run/blocks.sock``, the block protocol) instead;
reading commands open the store read-only, which needs no lock.
"""

from __future__ import annotations

from grid.errors import UserError
from grid.home import GridHome
from store.base import BlockStore


def open_store(home: GridHome, *, readonly: bool = False) -> BlockStore:
    from store.client import RemoteError, RemoteStore
    from store.errors import StoreLocked
    from store.local import LocalStore

    try:
        return LocalStore.open(home.store, readonly=readonly)
    except StoreLocked as e:
        sock = home.blocks_socket
        try:
            return RemoteStore.connect_unix(str(sock), name="grid")
        except (OSError, RemoteError) as why:
            raise UserError("store", f"{e}; and nothing answers on {sock} ({why})") from None
