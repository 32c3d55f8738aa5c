"""A peer that lies: pull must end with a precise error, never loop, crash or record what a
peer may not send (far-future dates, rights-conferring attributes, oversize merges)."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest

from ndb.errors import NdbRecordError, NdbValueError
from ndb.names import NameDB, NameSet
from ndb.syntax import Pair
from ndb.values import date_after
from replication import control
from replication.control import MAGIC, ControlClient, ControlError, encode
from replication.listener import check_peer_records
from replication.replicate import PULL, Stats, pull_blocks, push_names
from store.memory import MemoryStore
from tests.replication.test_replicate_listener import (  # noqa: F401 - fixtures
    Running,
    pki,
    record,
    served,
)


class Rogue:
    """A control-connection peer on a socketpair answering every request with *reply(req)*."""

    def __init__(self, reply) -> None:
        self.mine, theirs = socket.socketpair()
        self.requests = 0
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, args=(theirs,), daemon=True)
        self.thread.start()
        self.client = ControlClient(self.mine, "rogue")  # type: ignore[arg-type]

    def _serve(self, s: socket.socket) -> None:
        with s:
            assert s.recv(len(MAGIC), socket.MSG_WAITALL) == MAGIC
            while True:
                head = s.recv(4, socket.MSG_WAITALL)
                if len(head) < 4:
                    return
                (n,) = struct.unpack(">I", head)
                req = json.loads(s.recv(n, socket.MSG_WAITALL))
                self.requests += 1
                if self.requests > 50:
                    return  # a looping client would spin here
                s.sendall(encode(self.reply(req)))


@pytest.mark.parametrize(("reply", "why"), [
    (lambda r: {"ok": True, "records": [[r["start"], r["start"], "ab" * 32]], "end": 10**9},
     "does not advance"),
    (lambda r: {"ok": True, "records": [[0, 100, "ab" * 32]], "end": 10**9}, "does not advance"),
    (lambda r: {"ok": True, "records": [["x", 1, "ab" * 32]], "end": 5}, "malformed log record"),
    (lambda r: {"ok": True, "records": [[16, 80, "zz" * 32]], "end": 500}, "malformed score"),
    (lambda r: {"ok": True, "records": "nope", "end": 5}, "malformed log reply"),
    (lambda r: {"ok": True, "records": [[16, 80, "ab" * 32]]}, "malformed log reply"),
    (lambda r: {"ok": True, "records": [[i * 10 + 16, i * 10 + 26, "ab" * 32] for i in range(5000)],
                "end": 10**9}, "more than"),
])
def test_a_lying_log_reply_is_a_precise_error_not_a_loop(reply, why):
    rogue = Rogue(reply)
    with pytest.raises(ControlError, match=why):
        pull_blocks(rogue.client, MemoryStore(), MemoryStore(), Stats(peer="rogue", mode=PULL),
                    16, lambda pos: None)
    assert rogue.requests == 1
    rogue.client.close()


def test_malformed_names_and_merge_replies():
    rogue = Rogue(lambda r: {"ok": True, "names": 5, "added": "many"})
    with pytest.raises(ControlError, match="malformed names reply"):
        rogue.client.names()
    with pytest.raises(ControlError, match="malformed merge reply"):
        rogue.client.merge("")
    rogue.client.close()


def test_far_future_and_rights_attributes_are_refused(pki, served):  # noqa: F811
    far = record("proj", None, date="9999-12-31T23:59:59.999999Z")
    with pytest.raises(NdbRecordError, match="ahead of this node's clock"):
        check_peer_records([far], "names from x")
    with pytest.raises(NdbValueError, match="no date can follow"):
        date_after(far.date)  # a precise error, never OverflowError
    import dataclasses

    rooted = dataclasses.replace(record("proj", None), extra=(Pair("uid", "0"),))
    with pytest.raises(NdbRecordError, match="uid="):
        check_peer_records([rooted], "names from x")
    with ControlClient.connect("127.0.0.1", served.port, pki.client_ctx("client"), "server") as c:
        for bad, why in ((far, "ahead of this node"), (rooted, "uid=")):
            with pytest.raises(ControlError, match=why):
                c.merge(bad.text())
        big = "".join(record(f"n{i}", None).text() for i in range(60_000))
        with pytest.raises(ControlError, match="more than 20000"):
            c.merge(big)
        assert c.names() == ""  # nothing of it was recorded
        # A large but honest set goes through in pieces.
        stats = Stats(peer="server", mode="push")
        push_names(c, NameSet.of(record(f"n{i}", None) for i in range(60_000)), stats)
        assert stats.names == 60_000
    assert len(NameDB(served.names_path).all()) == 60_000


def test_an_idle_control_connection_times_out(pki, served, monkeypatch):  # noqa: F811
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.5)
    with ControlClient.connect("127.0.0.1", served.port, pki.client_ctx("client"), "server") as c:
        assert c.names() == ""
        import time

        time.sleep(1.5)
        with pytest.raises((ControlError, OSError)):
            c.names()
