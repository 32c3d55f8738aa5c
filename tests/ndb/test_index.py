"""The LMDB index: used transparently, caught up after appends, rebuilt after other changes."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import pytest

from ndb.database import INDEX_THRESHOLD, NdbFile
from ndb.index import Index, index_path


def records(n: int, start: int = 0) -> str:
    return "".join(
        f"name=n{i} score=blake3:{i:064x} user=u{i % 7} date=2026-01-01T00:00:00.{i % 1000000:06d}Z\n"
        for i in range(start, start + n)
    )


def names(f: NdbFile, attr: str, value: str) -> list[str]:
    return [m.entry.get("name") or "" for m in f.search(attr, value)]


def test_index_is_built_and_used(tmp_path):
    p = tmp_path / "names"
    p.write_text(records(1000))
    f = NdbFile(p, index=True)
    assert names(f, "name", "n7") == ["n7"]
    assert index_path(p).is_dir()
    assert names(f, "user", "u3")[:3] == ["n3", "n10", "n17"]
    assert len(names(f, "user", "u3")) == len(range(3, 1000, 7))
    assert names(f, "name", "nosuch") == []


def test_automatic_from_threshold(tmp_path):
    small = tmp_path / "small"
    small.write_text(records(10))
    assert names(NdbFile(small), "name", "n1") == ["n1"]
    assert not index_path(small).exists()
    big = tmp_path / "big"
    big.write_text(records(INDEX_THRESHOLD // 100 + 100))
    assert big.stat().st_size >= INDEX_THRESHOLD
    assert names(NdbFile(big), "name", "n1") == ["n1"]
    assert index_path(big).exists()


def test_appends_are_caught_up(tmp_path):
    p = tmp_path / "names"
    p.write_text(records(100))
    f = NdbFile(p, index=True)
    assert names(f, "name", "n150") == []
    with open(p, "a") as fh:
        fh.write(records(100, start=100))
    assert names(f, "name", "n150") == ["n150"]
    with open(p, "a") as fh:
        fh.write("name=n1 score=blake3:" + "f" * 64 + " user=x date=2026-01-02T00:00:00Z\n")
    assert [m.entry.get("user") for m in f.search("name", "n1")] == ["u1", "x"]


def test_appended_continuation_line_rebuilds(tmp_path):
    p = tmp_path / "f"
    p.write_text("sys=a ip=1\nsys=b ip=2\n")
    f = NdbFile(p, index=True)
    assert names(f, "sys", "b") == [""]
    with open(p, "a") as fh:
        fh.write("\tip=3\n")  # continues sys=b
    found = f.search("ip", "3")
    assert [m.entry.get("sys") for m in found] == ["b"]
    assert f.search("sys", "b")[0].entry.values("ip") == ["2", "3"]


def test_rewrite_in_place_rebuilds(tmp_path):
    p = tmp_path / "f"
    p.write_text("sys=a ip=1\nsys=b ip=2\n")
    f = NdbFile(p, index=True)
    assert f.search("ip", "2")[0].entry.get("sys") == "b"
    with open(p, "r+") as fh:  # same inode, same size, new content
        fh.write("sys=c ip=2\nsys=d ip=1\n")
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    assert f.search("ip", "2")[0].entry.get("sys") == "c"


def test_replace_by_rename_rebuilds(tmp_path):
    p = tmp_path / "f"
    p.write_text("sys=a ip=1\n")
    f = NdbFile(p, index=True)
    assert f.search("ip", "1")[0].entry.get("sys") == "a"
    tmp = tmp_path / "f.new"
    tmp.write_text("sys=z ip=1\n")
    os.rename(tmp, p)
    assert f.search("ip", "1")[0].entry.get("sys") == "z"


def test_stale_entry_detected_even_when_signature_matches(tmp_path):
    p = tmp_path / "f"
    p.write_text("sys=a ip=1\nsys=b ip=2\n")
    f = NdbFile(p, index=True)
    assert f.search("ip", "2")[0].entry.get("sys") == "b"
    st = p.stat()
    with open(p, "r+") as fh:  # same size, and the old mtime put back: the signature lies
        fh.write("sys=b ip=9\nsys=a ip=1\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    # The entry at b's old span no longer holds ip=2: the index is rebuilt.
    assert [m.entry.get("sys") for m in f.search("ip", "2")] == []
    assert [m.entry.get("sys") for m in f.search("ip", "9")] == ["b"]


def test_damaged_index_is_rebuilt(tmp_path):
    p = tmp_path / "f"
    p.write_text(records(50))
    assert names(NdbFile(p, index=True), "name", "n3") == ["n3"]
    data = index_path(p) / "data.mdb"
    from ndb import index as index_module

    index_module._forget_env(index_path(p))
    data.write_bytes(b"garbage" * 1000)
    assert names(NdbFile(p, index=True), "name", "n4") == ["n4"]


def test_unwritable_index_falls_back_to_scan(tmp_path, monkeypatch):
    p = tmp_path / "f"
    p.write_text(records(20))

    def refuse(self):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(Index, "_try_open", refuse)
    assert names(NdbFile(p, index=True), "name", "n5") == ["n5"]


def test_torn_tail_not_indexed_until_complete(tmp_path):
    p = tmp_path / "f"
    p.write_text(records(10) + "name=torn score=blake3:")
    f = NdbFile(p, index=True)
    assert names(f, "name", "torn") == []
    assert names(f, "name", "n9") == ["n9"]


def test_long_values_are_indexed(tmp_path):
    p = tmp_path / "f"
    long = "k" * 2000
    p.write_text(f"a=1 big={long}\na=2 big=short\n")
    f = NdbFile(p, index=True)
    assert [m.entry.get("a") for m in f.search("big", long)] == ["1"]
    assert [m.entry.get("a") for m in f.search("big", long[:-1])] == []


@pytest.mark.slow
def test_100k_entries_answer_under_a_millisecond(tmp_path):
    p = tmp_path / "names"
    p.write_text(records(100_000))
    f = NdbFile(p)  # automatic: the file is far above the threshold
    assert names(f, "name", "n0") == ["n0"]  # builds the index
    times = []
    for i in range(0, 100_000, 97):
        t = time.perf_counter()
        found = f.search("name", f"n{i}")
        times.append(time.perf_counter() - t)
        assert found[0].entry.get("name") == f"n{i}"
    assert statistics.median(times) < 0.001


def test_index_dir_can_be_deleted(tmp_path):
    p = tmp_path / "f"
    p.write_text(records(30))
    assert names(NdbFile(p, index=True), "name", "n1") == ["n1"]
    from ndb import index as index_module

    index_module._forget_env(index_path(p))
    shutil.rmtree(index_path(p))
    assert names(NdbFile(Path(p), index=True), "name", "n2") == ["n2"]
