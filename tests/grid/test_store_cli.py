"""`grid init` and `grid store …` as a user runs them: real processes, a real grid home."""

from __future__ import annotations

import json
import os

from tests.grid.conftest import run_grid

grid = run_grid


def test_init_is_idempotent(home):
    assert b"already exists" in grid(home, "init").stdout
    assert (home / "store" / "FORMAT").is_file()


def test_missing_home_says_how(tmp_path):
    p = grid(tmp_path / "nope", "store", "stat", check=False)
    assert p.returncode != 0
    assert p.stderr.decode().startswith("grid: grid home ")
    assert "grid init" in p.stderr.decode()
    assert b"Traceback" not in p.stderr


def test_put_cat_roundtrip(home, tmp_path):
    f = tmp_path / "data.bin"
    data = os.urandom(700_000) + bytes(300_000) + os.urandom(1234)
    f.write_bytes(data)
    score = grid(home, "store", "put", str(f)).stdout.decode().strip()
    assert score.startswith("blake3:") and len(score) == 71
    assert grid(home, "store", "cat", score).stdout == data
    # stdin, and the same bytes give the same score
    assert grid(home, "store", "put", "-", input=data).stdout.decode().strip() == score


def test_stat_and_check_json(home, tmp_path):
    f = tmp_path / "a"
    f.write_bytes(b"x" * 100_000)
    grid(home, "store", "put", str(f))
    st = json.loads(grid(home, "store", "stat", "--json").stdout)
    assert st["blocks"] >= 1 and st["logical_bytes"] >= 100_000 // 16
    ck = json.loads(grid(home, "store", "check", "--json").stdout)
    assert ck["ok"] and ck["errors"] == []
    rb = json.loads(grid(home, "store", "check", "--rebuild", "--json").stdout)
    assert rb["ok"] and rb["blocks"] == ck["blocks"]


def test_bad_inputs(home):
    for bad in ("blake3:zz", "deadbeef", "blake3:" + "0" * 63):
        p = grid(home, "store", "cat", bad, check=False)
        assert p.returncode == 1 and b"is not a score" in p.stderr and b"Traceback" not in p.stderr
    p = grid(home, "store", "cat", "blake3:" + "ab" * 32, check=False)
    assert p.returncode == 1 and b"no block blake3:abab" in p.stderr
    p = grid(home, "store", "put", "/nonexistent/file", check=False)
    assert p.returncode == 1 and b"No such file" in p.stderr


def test_check_finds_corruption(home, tmp_path):
    f = tmp_path / "a"
    f.write_bytes(os.urandom(50_000))
    grid(home, "store", "put", str(f))
    seg = sorted((home / "store" / "segments").glob("*.seg"))[0]
    with open(seg, "r+b") as fh:
        fh.seek(seg.stat().st_size - 10)
        fh.write(b"\x00\xff\x00")
    p = grid(home, "store", "check", check=False)
    assert p.returncode == 1
    assert b"is damaged (payload does not hash to the record's score)" in p.stderr


def test_help_has_examples(home):
    for args in (("--help",), ("store", "--help"), ("store", "put", "--help")):
        out = grid(home, *args).stdout.decode()
        assert "example" in out
