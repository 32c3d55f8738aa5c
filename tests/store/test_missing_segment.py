"""A segment file deleted under a running store (the daemon): noticed, not silent.

A block whose segment file is gone is a CorruptBlock naming the segment (never an
OSError traceback, never another segment's bytes), logged once per segment; a segment deleted
after it was opened for reading stays readable through the open file, and the store logs,
once, that it was deleted and will be lost at the next restart."""

from __future__ import annotations

import logging
import os

import pytest

import store.local as local
from store.block import BlockType
from store.errors import CorruptBlock
from store.local import LocalStore


def _filled(tmp_path, n=60):
    LocalStore.create(tmp_path / "s")
    s = LocalStore.open(tmp_path / "s", segment_size=32 << 10)
    scores = [s.put(BlockType.DATA, os.urandom(3000)) for _ in range(n)]
    s.sync()
    return s, scores


def _segment_of(s: LocalStore, score: bytes) -> int:
    return s._segment_of(s.locate(score).position)


def test_a_block_in_a_deleted_segment_is_a_precise_error_logged_once(tmp_path, caplog):
    s, scores = _filled(tmp_path)
    try:
        seg = s.segment_starts()[1]
        inside = [x for x in scores if _segment_of(s, x) == seg]
        assert len(inside) >= 2
        s._seg_path(seg).unlink()
        with caplog.at_level(logging.ERROR, logger="store.local"):
            for x in inside[:3]:
                with pytest.raises(CorruptBlock) as e:
                    s.get(x)
                assert f"segment file {s._seg_path(seg).name} is missing" in str(e.value)
        assert len([r for r in caplog.records if "is missing" in r.getMessage()]) == 1
        # Blocks elsewhere still read.
        assert s.get(scores[0]).data
        # check names the hole and every block in it as lost.
        rep = s.check()
        assert rep.lost == set(inside)
        assert any("a segment file was deleted" in e for e in rep.errors)
    finally:
        s.close()


def test_a_segment_deleted_while_open_is_logged_once(tmp_path, caplog, monkeypatch):
    s, scores = _filled(tmp_path)
    monkeypatch.setattr(local, "_UNLINKED_EVERY", 0.0)
    try:
        seg = s.segment_starts()[1]
        x = next(x for x in scores if _segment_of(s, x) == seg)
        data = s.get(x).data  # opens the segment for reading
        s._seg_path(seg).unlink()
        with caplog.at_level(logging.ERROR, logger="store.local"):
            for _ in range(3):
                assert s.get(x).data == data  # still readable through the open file
        hits = [r for r in caplog.records if "was deleted while in use" in r.getMessage()]
        assert len(hits) == 1 and s._seg_path(seg).name in hits[0].getMessage()
    finally:
        s.close()


def test_a_read_only_open_names_the_missing_segment(tmp_path):
    s, scores = _filled(tmp_path)
    seg = s.segment_starts()[1]
    inside = [x for x in scores if _segment_of(s, x) == seg]
    s.close()
    os.unlink(tmp_path / "s" / "segments" / f"{seg:016x}.seg")
    with LocalStore.open(tmp_path / "s", readonly=True) as ro:
        with pytest.raises(CorruptBlock) as e:
            ro.get(inside[0])
        assert "no segment file holds log position" in str(e.value)
