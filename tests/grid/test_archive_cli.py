"""`grid import`, `export`, `ls`, `cat`, `diff` end to end, through the command."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.grid.conftest import run_grid
from tests.spawn.treecompare import snapshot


def make_tree(top):
    (top / "sub").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"hello\n")
    (top / "sub" / "r.bin").write_bytes(os.urandom(2_000_000))
    os.symlink("a.txt", top / "link")


def test_import_export_roundtrip(home, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    snapshot(src)
    before = snapshot(src)
    p = run_grid(home, "import", str(src), "proj")
    score = p.stdout.decode().strip()
    assert score.startswith("blake3:")
    assert b"import proj: 2 files" in p.stderr
    names = json.loads(run_grid(home, "names", "--json").stdout)
    assert any(n["name"] == "proj" and n["score"] == score for n in names)
    run_grid(home, "export", "proj", str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == before
    # A raw score works wherever a name does.
    run_grid(home, "export", score, str(tmp_path / "out2"))
    assert snapshot(tmp_path / "out2")["meta"].keys() == before["meta"].keys()


def test_ls_cat(home, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    run_grid(home, "import", str(src), "proj")
    assert run_grid(home, "ls", "proj").stdout.decode().split() == ["a.txt", "link", "sub"]
    assert run_grid(home, "cat", "proj:a.txt").stdout == b"hello\n"
    assert run_grid(home, "cat", "proj:sub/r.bin").stdout == (src / "sub" / "r.bin").read_bytes()
    listing = json.loads(run_grid(home, "ls", "--json", "proj").stdout)
    assert {x["name"]: x.get("target") for x in listing}["link"] == "a.txt"
    long = run_grid(home, "ls", "-l", "proj:sub").stdout.decode()
    assert "r.bin" in long and "2000000" in long


def test_reimport_uses_cache_and_keeps_history(home, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    first = run_grid(home, "import", str(src), "proj").stdout.decode().strip()
    (src / "a.txt").write_bytes(b"changed\n")
    (src / "new").write_bytes(b"n")
    p = run_grid(home, "import", str(src), "proj")
    second = p.stdout.decode().strip()
    assert b"1 files unchanged" in p.stderr  # r.bin was not read again
    hist = json.loads(run_grid(home, "history", "proj", "--json").stdout)
    assert [h["score"] for h in hist] == [second, first]
    assert hist[0]["prev"] == first
    diff = run_grid(home, "diff", f"proj@{first}", "proj").stdout.decode().splitlines()
    assert diff == ["M a.txt", "+ new"]
    # Inode numbers are stable across re-import.
    old = {x["name"]: x["ino"] for x in json.loads(run_grid(home, "ls", "--json", first).stdout)}
    new = {x["name"]: x["ino"] for x in json.loads(run_grid(home, "ls", "--json", "proj").stdout)}
    assert all(new[k] == v for k, v in old.items())


def test_rename_keeps_inode_number(home, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    run_grid(home, "import", str(src), "proj")
    ino = {x["name"]: x["ino"] for x in json.loads(run_grid(home, "ls", "--json", "proj").stdout)}["a.txt"]
    os.rename(src / "a.txt", src / "renamed.txt")
    run_grid(home, "import", str(src), "proj")
    after = {x["name"]: x["ino"] for x in json.loads(run_grid(home, "ls", "--json", "proj").stdout)}
    assert after["renamed.txt"] == ino


def test_bad_inputs_change_nothing(home, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    names_before = (home / "ndb" / "names").read_bytes()
    for args, msg in [
        (("import", str(src), "bad name"), b"white space"),
        (("import", str(src), "x=y"), b"name"),
        (("import", str(tmp_path / "missing"), "proj"), b"not a directory"),
        (("import", str(src), "proj", "--user", "nosuchuser"), b"unknown user"),
        (("cat", "nosuch:x"), b"no such name"),
        (("export", "blake3:" + "0" * 64, str(tmp_path / "o")), b"no block"),
        (("ls", "blake3:zz"), b"not a score"),
    ]:
        p = run_grid(home, *args, check=False)
        assert p.returncode != 0, args
        assert msg in p.stderr, (args, p.stderr)
        assert b"Traceback" not in p.stderr
    assert (home / "ndb" / "names").read_bytes() == names_before
    run_grid(home, "import", str(src), "proj")
    p = run_grid(home, "ls", "proj:nope", check=False)
    assert p.returncode == 1 and b"no such file" in p.stderr
    p = run_grid(home, "cat", "proj:sub", check=False)
    assert p.returncode == 1 and b"not a regular file" in p.stderr
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_bytes(b"x")
    p = run_grid(home, "export", "proj", str(out), check=False)
    assert p.returncode == 1 and b"not empty" in p.stderr
    assert os.listdir(out) == ["x"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_unreadable_files_are_skipped_loudly():
    """As an ordinary user, an unreadable file is reported and makes the exit status 1."""
    import shutil
    import tempfile
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp(prefix="grid-nobody-", dir="/tmp"))
    tmp_path.chmod(0o777)
    try:
        _unreadable(tmp_path)
    finally:
        for p in tmp_path.rglob("*"):
            if not p.is_symlink():
                p.chmod(0o700)
        shutil.rmtree(tmp_path)


def _unreadable(tmp_path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "src"
    make_tree(src)
    (src / "secret").write_bytes(b"no")
    (src / "secret").chmod(0o000)
    (src / "closed").mkdir()
    (src / "closed").chmod(0o000)
    for p in [src, *src.rglob("*")]:
        if not p.is_symlink():
            os.chown(p, 65534, 65534)
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    run_grid(home, "init", prefix=nobody)
    p = run_grid(home, "import", str(src), "proj", check=False, prefix=nobody)
    assert p.returncode == 1, p.stderr
    err = p.stderr.decode()
    assert "skipped" in err and "secret" in err and "closed" in err
    assert "2 skipped" in err
    # The rest was imported and named.
    assert run_grid(home, "cat", "proj:a.txt", prefix=nobody).stdout == b"hello\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_stays_on_one_filesystem(home, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    mnt = src / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        (mnt / "other-fs-file").write_bytes(b"x")
        p = run_grid(home, "import", str(src), "proj")
        assert b"not crossing into another filesystem" in p.stderr
        assert run_grid(home, "ls", "proj:mnt").stdout == b""
        run_grid(home, "import", str(src), "proj2", "--cross-filesystems")
        assert run_grid(home, "ls", "proj2:mnt").stdout == b"other-fs-file\n"
    finally:
        subprocess.run(["umount", str(mnt)])


def test_cache_hits_under_another_name(home, tmp_path):
    """The files cache is keyed by path, not by snapshot name (as borg's is)."""
    src = tmp_path / "src"
    make_tree(src)
    run_grid(home, "import", str(src), "one")
    p = run_grid(home, "import", str(src), "two")
    assert b"read 0 B (2 files unchanged)" in p.stderr
    # A new name numbers its inodes afresh: same tree, same numbers as the first import.
    a = {x["name"]: x["ino"] for x in json.loads(run_grid(home, "ls", "--json", "one").stdout)}
    b = {x["name"]: x["ino"] for x in json.loads(run_grid(home, "ls", "--json", "two").stdout)}
    assert a == b


def test_progress_bar_on_a_terminal(home, tmp_path):
    """On a terminal, import shows files, bytes, rate and dedup; otherwise only the summary."""
    import fcntl
    import pty
    import struct
    import sys
    import termios

    from tests.grid.conftest import ROOT

    src = tmp_path / "src"
    src.mkdir()
    for i in range(80):  # enough to outlast tqdm's 0.1 s refresh interval several times
        (src / f"f{i}").write_bytes(os.urandom(2_000_000))
    env = dict(os.environ, GRID_HOME=str(home), PYTHONPATH=str(ROOT))
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(sys.executable, [sys.executable, "-m", "grid.cli.main", "import", str(src), "tty"], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out.extend(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text = out.decode(errors="replace")
    assert "files=" in text and "dedup=" in text and "B/s" in text
    # Not on a terminal: no bar, one summary line.
    p = run_grid(home, "import", str(src), "notty")
    assert b"files=" not in p.stderr and p.stderr.count(b"\n") == 1
