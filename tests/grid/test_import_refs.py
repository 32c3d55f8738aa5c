"""Imports that fail record nothing; names and scores that references could not name again
are refused at the door."""

from __future__ import annotations

import os

import pytest

from tests.grid.conftest import run_grid

grid = run_grid


def _names(home) -> str:
    return grid(home, "names").stdout.decode()


def test_a_symlink_to_a_directory_imports_the_directory(home, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("hi\n")
    os.symlink("real", tmp_path / "link")
    grid(home, "import", str(tmp_path / "link"), "p")
    assert grid(home, "cat", "p:f").stdout == b"hi\n"


def test_an_import_whose_top_cannot_be_read_records_nothing(home, tmp_path, monkeypatch):
    from spawn import importer
    from store.memory import MemoryStore

    real = importer._listdir

    def deny(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(importer, "_listdir", deny)
    (tmp_path / "d").mkdir()
    with pytest.raises(PermissionError):
        importer.Importer(MemoryStore()).run(tmp_path / "d", name="x")
    monkeypatch.setattr(importer, "_listdir", real)
    # As a process: a file instead of a directory, /proc/self's fd links: nothing recorded.
    for bad in (str(tmp_path / "nope"), "/proc/self/fd/0"):
        p = grid(home, "import", bad, "x", check=False)
        assert p.returncode == 1 and b"Traceback" not in p.stderr
    assert "x " not in _names(home)


@pytest.mark.parametrize("name", ["a:b", "a@b", "x:"])
def test_names_with_reference_characters_are_refused(home, tmp_path, name):
    (tmp_path / "d").mkdir()
    p = grid(home, "import", str(tmp_path / "d"), name, check=False)
    assert p.returncode == 1 and b"which references use" in p.stderr
    assert name not in _names(home)


def test_trailing_characters_after_a_score_are_refused(home, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    score = grid(home, "import", str(tmp_path / "d"), "p").stdout.decode().split()[0]
    assert grid(home, "ls", score).stdout == b"f\n"
    assert grid(home, "ls", score + ":").stdout == b"f\n"
    for bad in (score + "x", score + "xf", "p@" + score + "zz"):
        p = grid(home, "ls", bad, check=False)
        assert p.returncode == 1 and b"is not a score" in p.stderr, p.stderr


def test_name_set_refuses_the_zero_score_and_absent_roots(home):
    """A name points only at a root that is there: `grid name set` refuses the zero score
    and a score whose block the store lacks, and records nothing."""
    before = _names(home)
    for score, why in (("blake3:" + "0" * 64, b"zero score"),
                       ("blake3:" + "ab" * 32, b"not in this node's store")):
        p = grid(home, "name", "set", "x", score, check=False)
        assert p.returncode == 1 and why in p.stderr, p.stderr
    assert _names(home) == before
