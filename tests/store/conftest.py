"""Fixtures: every BlockStore implementation, for the contract suite; a local store."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from store.base import BlockStore
from store.local import LocalStore
from store.memory import MemoryStore

KINDS = ["memory", "local"]
if importlib.util.find_spec("tests.store.remote_helpers") is not None:
    KINDS += ["remote-unix", "remote-tcp", "remote-tls"]


@pytest.fixture(params=KINDS)
def any_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[BlockStore]:
    kind = request.param
    if kind == "memory":
        s: BlockStore = MemoryStore()
        yield s
        s.close()
    elif kind == "local":
        LocalStore.create(tmp_path / "store")
        s = LocalStore.open(tmp_path / "store")
        yield s
        s.close()
    else:
        from tests.store.remote_helpers import connect, start_server

        LocalStore.create(tmp_path / "store")
        backing = LocalStore.open(tmp_path / "store")
        address, stop = start_server(backing, kind=kind.split("-")[1], tmp_path=tmp_path)
        client = connect(address)
        yield client
        client.close()
        stop()
        backing.close()


@pytest.fixture
def local_store(tmp_path) -> Iterator[LocalStore]:
    LocalStore.create(tmp_path / "store")
    s = LocalStore.open(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def store(local_store: LocalStore) -> LocalStore:
    """A local store of its own, on disk (the name the cache's and decoder's tests use)."""
    return local_store
