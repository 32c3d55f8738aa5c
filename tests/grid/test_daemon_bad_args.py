"""Bad arguments on the daemon's control socket: each a one-line EINVAL refusal to that
request, never a traceback in the daemon's log (invariant 10)."""

from __future__ import annotations

import errno

import pytest

from grid.daemon import nameops
from grid.daemon.client import DaemonClient, DaemonError
from tests.grid.gridnode import new_node

BAD_ARGS = ([], [1], [None], [[1]], [{"a": 1}], [1.5], ["x", 1], ["x", "y", 3], [True],
            ["x", ["y"]], ["\x00"], ["x" * 5000])
BAD_KW = [("name_forget", ["x"], {"keep_last": "abc"}), ("name_forget", ["x"], {"keep_bogus": 1}),
          ("name_forget", ["x"], {"keep_within": 5}), ("save", ["x"], {"name": 3}),
          ("share", ["x", "y"], {"remove": "no"}), ("spawns", [], {"z": 1}),
          ("names", [], {"all": "yes"})]


@pytest.fixture(scope="module")
def node():
    n = new_node()
    n.init()
    n.start()
    try:
        yield n
    finally:
        n.close()


def _call(n, op, args, kw):
    with DaemonClient(n.home / "run" / "grid.sock", timeout=10) as c:
        return c.call(op, *args, **kw)


def test_wrong_types_are_refused_without_tracebacks(node):
    ops = ["spawn", "spawns", "status", "save", "kill", "share", *sorted(nameops.LOCAL)]
    refused = 0
    for op in ops:
        for args in BAD_ARGS:
            try:
                _call(node, op, args, {})
            except DaemonError as e:
                refused += 1
                assert "\n" not in str(e)
    for op, args, kw in BAD_KW:
        with pytest.raises(DaemonError) as e:
            _call(node, op, args, kw)
        assert e.value.errno == errno.EINVAL, (op, kw, e.value)
    assert refused > len(ops) * 8
    assert _call(node, "ping", [], {})  # the daemon is fine
    node.stop()
    log = node.log.read_text()
    assert "Traceback" not in log, log[-3000:]
