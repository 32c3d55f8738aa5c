"""The corruption matrix: damage a real store's files, then run `grid store check` and
`grid store check --rebuild` as a user would (real processes) and count what survives.

For every kind of damage: check names exactly the damaged records, rebuild keeps every block
that still verifies (counted against the log), nothing is truncated that a valid record
follows, and no command dies of a signal or prints a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from store.block import BlockType
from store.local import LocalStore
from store.score import format_score
from store.segment import RECORD_HEADER_SIZE
from tests.grid.conftest import ROOT, run_grid

grid = run_grid


def _fill(home: Path, n: int, *, segment_size: int = 1 << 30, size: int = 3000) -> list[tuple[int, int, bytes]]:
    """Write *n* incompressible DATA blocks; return (position, end, score) of each record."""
    with LocalStore.open(home / "store", segment_size=segment_size) as s:
        for _ in range(n):
            s.put(BlockType.DATA, os.urandom(size))
        s.sync()
        return [(r.position, r.next_position, bytes(r.score)) for r in s.iter_log(0)]


def _segments(home: Path) -> list[Path]:
    return sorted((home / "store" / "segments").glob("*.seg"))


def _seg_for(home: Path, pos: int) -> tuple[Path, int]:
    segs = [(int(p.stem, 16), p) for p in _segments(home)]
    start, path = max((s, p) for s, p in segs if s <= pos)
    return path, pos - start


def _flip(home: Path, pos: int) -> None:
    path, off = _seg_for(home, pos)
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x5A]))


def _check(home: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    p = grid(home, "store", "check", "--json", *extra, check=False)
    assert b"Traceback" not in p.stderr, p.stderr.decode()
    assert p.returncode in (0, 1), (p.returncode, p.stderr.decode())
    return p, json.loads(p.stdout)


def _readable(home: Path, scores: list[bytes]) -> int:
    with LocalStore.open(home / "store", readonly=True) as s:
        n = 0
        for x in scores:
            try:
                s.get(x)
                n += 1
            except Exception:  # counting what does not read back
                pass
        return n


def test_flipped_payload_byte_in_the_last_segment_is_skipped_not_cut(home):
    recs = _fill(home, 120)
    victim = recs[40]
    _flip(home, victim[0] + RECORD_HEADER_SIZE + 100)
    seg = _segments(home)[-1]
    size = seg.stat().st_size
    p, ck = _check(home)
    assert p.returncode == 1
    assert ck["bad_records"] == 1 and ck["records"] == len(recs) - 1
    assert ck["lost_blocks"] == [format_score(victim[2])]
    bad = ck["segments"][0]["bad"]
    assert [(b["position"], b["score"], b["torn"]) for b in bad] == [(victim[0], format_score(victim[2]), False)]

    p, rb = _check(home, "--rebuild")
    assert p.returncode == 1, "a store with a damaged record is not ok, even after a rebuild"
    assert rb["blocks"] == len(recs) - 1 and rb["bad_records"] == 1
    assert b"1 damaged record(s) skipped" in p.stderr
    assert seg.stat().st_size == size, "nothing is cut when valid records follow the damage"
    good = [r[2] for r in recs if r is not victim]
    assert _readable(home, good) == len(good)
    # And the text form names the block, once, without bytes reprs.
    p = grid(home, "store", "check", check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count(victim[2].hex()) == 2  # the damaged record, the lost block
    assert "b'" not in err and "Traceback" not in err


def test_flipped_header_in_an_earlier_segment_resyncs(home):
    recs = _fill(home, 200, segment_size=128 << 10)
    assert len(_segments(home)) >= 3
    victim = recs[10]  # in the first segment
    _flip(home, victim[0] + 20)  # inside the score: the header CRC fails
    p, ck = _check(home)
    assert p.returncode == 1
    assert ck["bad_records"] == 1 and ck["records"] == len(recs) - 1
    assert sum(s["records"] for s in ck["segments"]) == len(recs) - 1
    bad = [b for s in ck["segments"] for b in s["bad"]]
    assert bad[0]["position"] == victim[0] and bad[0]["length"] == victim[1] - victim[0]
    # The index still knows the block whose header is gone: it is named as lost.
    assert ck["lost_blocks"] == [format_score(victim[2])]

    p, rb = _check(home, "--rebuild")
    assert p.returncode == 1
    assert rb["blocks"] == len(recs) - 1 and rb["lost_by_rebuild"] == 1
    assert any("old index listed" in n for n in rb["notes"])
    good = [r[2] for r in recs if r is not victim]
    assert _readable(home, good) == len(good)
    # A second rebuild gives the same answer (nothing more lost, nothing looping).
    _, rb2 = _check(home, "--rebuild")
    assert rb2["blocks"] == len(recs) - 1


def test_flipped_last_record_is_corruption_not_a_torn_tail(home):
    recs = _fill(home, 30)
    victim = recs[-1]
    _flip(home, victim[0] + RECORD_HEADER_SIZE + 5)
    size = _segments(home)[-1].stat().st_size
    p, rb = _check(home, "--rebuild")
    assert p.returncode == 1 and rb["blocks"] == len(recs) - 1 and rb["bad_records"] == 1
    assert _segments(home)[-1].stat().st_size == size
    # The writer appends after the damaged record; both stay readable and checked.
    with LocalStore.open(home / "store") as s:
        x = s.put(BlockType.DATA, os.urandom(2000))
    p, ck = _check(home)
    assert ck["records"] == len(recs) and ck["bad_records"] == 1
    assert _readable(home, [x]) == 1


def test_truncated_last_segment_recovers(home):
    recs = _fill(home, 50)
    seg = _segments(home)[-1]
    cut = recs[-1][0] + 1000  # half of the last record remains
    os.truncate(seg, cut - int(seg.stem, 16))
    for args in (("store", "check"), ("store", "stat"), ("ls", "nothing")):
        p = grid(home, *args, check=False)
        assert b"Traceback" not in p.stderr and p.returncode in (0, 1), p.stderr
    p, rb = _check(home, "--rebuild")
    assert rb["blocks"] == len(recs) - 1
    assert rb["lost_by_rebuild"] == 1 and p.returncode == 1, "the cut-off block is reported lost"
    assert any("quarantine" in n for n in rb["notes"])
    quarantined = list((home / "store" / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].stat().st_size == 1000
    p, ck = _check(home)
    assert p.returncode == 0 and ck["ok"] and ck["blocks"] == len(recs) - 1
    assert _readable(home, [r[2] for r in recs[:-1]]) == len(recs) - 1


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "deleted", "garbage"])
def test_damaged_lmdb_index_is_rebuilt_from_the_log(home, damage):
    recs = _fill(home, 80)
    data = home / "store" / "index" / "data.mdb"
    size = data.stat().st_size
    if damage == "zeroed":
        data.write_bytes(bytes(size))
    elif damage == "truncated":
        os.truncate(data, 5000)
    elif damage == "deleted":
        for f in data.parent.iterdir():
            f.unlink()
        data.parent.rmdir()
    else:
        with open(data, "r+b") as f:
            f.seek(16)
            f.write(os.urandom(200))
            f.seek(4096 + 16)
            f.write(os.urandom(200))
    for args in (("store", "check"), ("store", "stat"), ("ls", "x")):
        p = grid(home, *args, check=False)
        assert p.returncode == 1, (args, p.returncode, p.stderr)  # never SIGBUS (-7 / 135)
        assert b"Traceback" not in p.stderr
    p = grid(home, "store", "check", check=False)
    assert b"grid store check --rebuild" in p.stderr or b"no block store" in p.stderr
    p, rb = _check(home, "--rebuild")
    assert p.returncode == 0, p.stderr.decode()
    assert rb["ok"] and rb["blocks"] == len(recs)
    assert _readable(home, [r[2] for r in recs]) == len(recs)


def test_failed_rebuild_changes_nothing(home, monkeypatch):
    recs = _fill(home, 60)
    import store.local as local

    real = local.scan_segment

    def dying(*a, **kw):
        for i, item in enumerate(real(*a, **kw)):
            if i == 30:
                raise OSError(5, "injected read error")
            yield item

    monkeypatch.setattr(local, "scan_segment", dying)
    with pytest.raises(OSError):
        LocalStore.open(home / "store", rebuild=True)
    monkeypatch.setattr(local, "scan_segment", real)
    assert not (home / "store" / "index.new").exists()
    assert _readable(home, [r[2] for r in recs]) == len(recs)
    p, ck = _check(home)
    assert p.returncode == 0 and ck["blocks"] == len(recs)


def test_sigkilled_rebuild_changes_nothing(home):
    recs = _fill(home, 3000, size=2000)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = (
        "import sys\nfrom store.local import LocalStore\n"
        "LocalStore.open(sys.argv[1], rebuild=True).close()\n"
    )
    for delay in (0.05, 0.15, 0.3):
        proc = subprocess.Popen([sys.executable, "-c", code, str(home / "store")], env=env)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        p, ck = _check(home)
        assert p.returncode == 0 and ck["blocks"] == len(recs), ck["errors"][:3]
    # An index.new left complete but not swapped in is finished by the next writer.
    with LocalStore.open(home / "store") as s:
        s.rebuild_index()
    _, ck = _check(home)
    assert ck["ok"] and ck["blocks"] == len(recs)


def test_check_beside_a_running_writer_reports_no_false_problems(home, tmp_path):
    """A writer appends (and syncs now and then) while check runs: check reads only what
    the index has committed, so it reports nothing wrong."""
    _fill(home, 20)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = (
        "import os,sys\nfrom store.local import LocalStore\n"
        "s=LocalStore.open(sys.argv[1])\n"
        "for i in range(400):\n"
        "    s.put(1, os.urandom(3000))\n"
        "    if i == 100: s.sync(); print('synced', flush=True)\n"
        "print('written', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(home / "store")], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"synced\n"
        assert proc.stdout.readline() == b"written\n"
        p, ck = _check(home)
        assert p.returncode == 0, ck["errors"][:3]
        assert ck["ok"] and ck["blocks"] == 20 + 101 and ck["unchecked_bytes"] > 0
        p = grid(home, "store", "check", "--rebuild", check=False)
        assert p.returncode == 1 and b"in use by its writer" in p.stderr
    finally:
        proc.kill()
        proc.wait()
    p, ck = _check(home)  # the killed writer's unsynced tail is re-indexed by the next writer
    assert ck["ok"]
