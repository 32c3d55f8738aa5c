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


# -- the matrix with repair: two real nodes, a damaged one and its replica ------------------

def _scores_in_log(store_dir: Path) -> set[bytes]:
    """The distinct blocks whose records verify, read straight from the segment files (the
    index is not consulted: it may be the damaged part)."""
    from store.logscan import Good, scan_segment

    dec = LocalStore.__new__(LocalStore)
    import store.local as local

    dec._zstd = local._Compressor(3)
    out: set[bytes] = set()
    for seg in sorted((store_dir / "segments").glob("*.seg")):
        with open(seg, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            for it in scan_segment(f, int(seg.stem, 16), 16, size, dec._decode_payload):
                if isinstance(it, Good):
                    out.add(it.header.score)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Node a (imports a tree in small segments, pushes it to b) and b, its replica, whose
    daemon listens; a's pristine store is kept to start every case from."""
    import shutil

    from tests.replication.grid3 import make_grid

    tmp = tmp_path_factory.mktemp("pair")
    a, b = make_grid(2, tmp)
    try:
        b.start()
        (a.node.home / "store" / "segment_size").write_text(str(96 << 10))
        src = tmp / "src"
        (src / "d" / "e").mkdir(parents=True)
        rnd = __import__("random").Random(3)
        for i in range(12):
            (src / "d" / f"f{i}.bin").write_bytes(rnd.randbytes(20_000 + 7_000 * i))
        (src / "d" / "e" / "small.txt").write_text("small\n" * 300)
        (src / "top.txt").write_text("top\n")
        a.grid("import", str(src), "proj")
        (src / "top.txt").write_text("top, second version\n")
        a.grid("import", str(src), "proj")
        a.grid("replicate")
        pristine = tmp / "pristine"
        shutil.copytree(a.node.home / "store", pristine)
        with LocalStore.open(pristine, readonly=True) as s:
            recs = [(r.position, r.next_position, bytes(r.score)) for r in s.iter_log(0)]
        yield a, b, src, pristine, recs, tmp
    finally:
        a.node.close()
        b.node.close()


def _reset(a, pristine: Path) -> Path:
    import shutil

    store = a.node.home / "store"
    shutil.rmtree(store)
    shutil.copytree(pristine, store)
    return store


def _a_check(a, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    p = a.grid("store", "check", "--json", *extra, check=False)
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode in (0, 1), (p.returncode, p.stderr)
    return p, json.loads(p.stdout)


def _repair_and_verify(a, src: Path, tmp: Path, recs, *, lost: int) -> dict:
    import filecmp

    p = a.grid("store", "repair", "--json", check=False)
    assert "Traceback" not in p.stderr, p.stderr
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["ok"], (out, p.stderr)
    assert out["restored"] >= lost and not out["unrecoverable"]
    p, ck = _a_check(a)
    assert p.returncode == 0 and ck["ok"], ck["errors"][:5]
    assert ck["bad_records"] == 0 and ck["lost_blocks"] == []
    assert _readable(a.node.home, [r[2] for r in recs]) == len({r[2] for r in recs})
    dest = tmp / f"export-{os.urandom(4).hex()}"
    a.grid("export", "proj", str(dest))
    cmp = filecmp.dircmp(src, dest)
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files), "export identical to the source"
    assert all(filecmp.cmp(src / "d" / f, dest / "d" / f, shallow=False) for f in os.listdir(src / "d")
               if f.endswith(".bin"))
    # A second repair finds nothing to do.
    again = json.loads(a.grid("store", "repair", "--json").stdout)
    assert again["ok"] and again["restored"] == 0
    return out


def _kept_after_rebuild(a, recs, damaged: set[bytes]) -> dict:
    _p, rb = _a_check(a, "--rebuild")
    want = {r[2] for r in recs} - damaged
    assert rb["blocks"] == len(want) == len(_scores_in_log(a.node.home / "store")), \
        "blocks kept == blocks that verify"
    assert _readable(a.node.home, sorted(want)) == len(want)
    return rb


@pytest.mark.parametrize("where", ["last", "earlier"])
@pytest.mark.parametrize("rebuild", [False, True])
def test_matrix_flipped_byte_then_repair(pair, where, rebuild):
    a, _b, src, pristine, recs, tmp = pair
    _reset(a, pristine)
    segs = _segments(a.node.home)
    assert len(segs) >= 4
    in_last = [r for r in recs if r[0] >= int(segs[-1].stem, 16)]
    victim = in_last[len(in_last) // 2] if where == "last" else recs[3]
    # last: a payload byte (the header names the block); earlier: a header byte (it does not)
    _flip(a.node.home, victim[0] + (RECORD_HEADER_SIZE + 7 if where == "last" else 20))
    p, ck = _a_check(a)
    assert p.returncode == 1 and ck["bad_records"] == 1
    assert ck["lost_blocks"] == [format_score(victim[2])]
    p, ck = _a_check(a, "--names")
    assert {n["name"] for n in ck["names"]} == {"proj"} and ck["names"][0]["blocks"] >= 1
    p = a.grid("store", "check", "--names", check=False)
    assert p.returncode == 1 and "grid: store check: name proj (" in p.stderr
    assert "name record(s) broken" in p.stdout and "Traceback" not in p.stderr
    if rebuild:
        rb = _kept_after_rebuild(a, recs, {victim[2]})
        assert rb["bad_records"] == 1
    out = _repair_and_verify(a, src, tmp, recs, lost=0 if rebuild else 1)
    assert out["peers"] == {"b": out["restored"]}
    # The damaged record stays in the log (repair never deletes), reported as healed.
    _, ck = _a_check(a)
    assert ck["healed_records"] == 1


@pytest.mark.parametrize("which", ["last", "earlier"])
def test_matrix_truncated_segment_then_repair(pair, which):
    a, _b, src, pristine, recs, tmp = pair
    _reset(a, pristine)
    segs = _segments(a.node.home)
    seg = segs[-1] if which == "last" else segs[1]
    start = int(seg.stem, 16)
    inside = [r for r in recs if start <= r[0] and r[1] <= start + seg.stat().st_size]
    cut = inside[len(inside) // 2][0] + 100
    os.truncate(seg, cut - start)
    damaged = {r[2] for r in inside if r[1] > cut}
    p, ck = _a_check(a)
    if which == "earlier":  # the index still places blocks past the cut: lost, named
        assert p.returncode == 1 and set(ck["lost_blocks"]) == {format_score(x) for x in damaged}
    else:  # the writer's open refuses an index past the log's end; check says what to run
        assert p.returncode == 1
    _kept_after_rebuild(a, recs, damaged)
    _repair_and_verify(a, src, tmp, recs, lost=0)


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "deleted"])
def test_matrix_damaged_index_then_repair(pair, damage):
    a, _b, src, pristine, recs, tmp = pair
    store = _reset(a, pristine)
    data = store / "index" / "data.mdb"
    if damage == "zeroed":
        data.write_bytes(bytes(data.stat().st_size))
    elif damage == "truncated":
        os.truncate(data, 5000)
    else:
        import shutil

        shutil.rmtree(store / "index")
    p = a.grid("store", "check", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "grid store check --rebuild" in p.stderr
    p = a.grid("store", "repair", check=False)
    assert "Traceback" not in p.stderr
    if damage == "deleted":  # the writer makes a new index and recovery indexes the whole log
        assert p.returncode == 0, p.stderr
    else:  # repair cannot start on an unreadable index: it says what to run
        assert p.returncode == 1 and "grid store check --rebuild" in p.stderr
    _kept_after_rebuild(a, recs, set())
    out = _repair_and_verify(a, src, tmp, recs, lost=0)
    assert out["restored"] == 0


def test_matrix_segment_deleted_under_a_running_daemon_then_repair(pair):
    a, _b, src, pristine, recs, tmp = pair
    _reset(a, pristine)
    a.node.start()
    try:
        segs = _segments(a.node.home)
        gone = segs[2]
        start, size = int(gone.stem, 16), gone.stat().st_size
        inside = {r[2] for r in recs if start <= r[0] < start + size}
        gone.unlink()
        # check beside the daemon (read-only, no lock) reports the missing segment
        p, ck = _a_check(a)
        assert p.returncode == 1
        assert set(ck["lost_blocks"]) == {format_score(x) for x in inside}
        missing = [s for s in ck["segments"] if s["segment"].endswith("(missing)")]
        assert missing and "a segment file was deleted" in missing[0]["bad"][0]["reason"]
        # a read of a block in it names the segment
        p = a.grid("store", "cat", format_score(sorted(inside)[0]), check=False)
        assert p.returncode == 1 and "no segment file holds log position" in p.stderr
        assert "Traceback" not in p.stderr
        # the daemon's own reads (its block socket) name the segment, and its log says so once
        from store.client import RemoteStore
        from store.errors import CorruptBlock

        with RemoteStore.connect_unix(str(a.node.home / "run" / "blocks.sock"), name="t") as rs:
            for x in sorted(inside)[:3]:
                with pytest.raises(CorruptBlock, match=f"segment file {gone.name} is missing"):
                    rs.get(x)
        assert a.node.log.read_text().count(f"segment file {gone.name} is missing") == 1
        # repair says precisely what to do while the daemon holds the store
        p = a.grid("store", "repair", check=False)
        assert p.returncode == 1 and "grid stop" in p.stderr and "Traceback" not in p.stderr
    finally:
        a.node.stop()
    p, ck = _a_check(a)
    assert p.returncode == 1 and len(ck["lost_blocks"]) == len(inside)
    _repair_and_verify(a, src, tmp, recs, lost=len(inside))


def test_repair_without_a_replica_reports_exactly_what_is_lost(pair):
    a, b, _src, pristine, recs, _tmp = pair
    _reset(a, pristine)
    victim = recs[5]
    _flip(a.node.home, victim[0] + RECORD_HEADER_SIZE + 3)
    b.node.stop()  # no peer answers
    try:
        p = a.grid("store", "repair", "--json", check=False)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        out = json.loads(p.stdout)
        assert not out["ok"] and out["restored"] == 0
        assert [u["score"] for u in out["unrecoverable"]] == [format_score(victim[2])]
        assert out["peer_errors"] and "cannot reach b" in out["peer_errors"][0]
        p = a.grid("store", "repair", check=False)
        assert p.returncode == 1
        assert f"block {format_score(victim[2])} is lost" in p.stderr
    finally:
        b.start()
