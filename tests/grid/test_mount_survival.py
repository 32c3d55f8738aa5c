"""A mount survives the processes that serve it (docs/daemon.md, "When the daemon goes away").

The daemon serves every mount on the spawn's host thread; the mount process only holds a
copy of the channel. SIGKILL either one in the middle of writes: the writer is never told
(requests wait in the kernel while the daemon is down, and the next daemon has the kernel
resend what the dead one left unanswered), every write that returned is there afterwards,
and nothing sees ENOTCONN.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grid.gridnode import Node, new_node, skip_without_mounts, wait_for

skip_without_mounts()

RECORD = 1000
TOTAL = 3000

# Writes TOTAL numbered records with plain write(2) calls, no fsync, printing how many have
# returned every 100; any error is printed and ends it with status 1.
WRITER = r"""
import os, sys
path, total, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
try:
    for n in range(total):
        os.write(fd, (b"%08d" % n) * (size // 8))
        if n % 100 == 99:
            print(n + 1, flush=True)
    os.close(fd)
except OSError as e:
    print("error", e, flush=True)
    sys.exit(1)
print("done", flush=True)
"""


@pytest.fixture
def node() -> Iterator[Node]:
    n = new_node()
    try:
        n.init()
        src = n.base / "src"
        src.mkdir()
        (src / "base.txt").write_text("base\n")
        n.grid("import", str(src), "keep")
        n.start()
        yield n
    finally:
        n.close()


def mount_pid(m) -> int:
    out = subprocess.run(["pgrep", "-f", f"spawn.fuse_main .*{m}$"], capture_output=True,
                         text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def expected(n: int) -> bytes:
    return b"".join((b"%08d" % i) * (RECORD // 8) for i in range(n))


def test_daemon_killed_mid_write_loses_no_completed_write(node: Node) -> None:
    m = node.base / "m"
    m.mkdir()
    node.grid("spawn", "-q", "keep", "--mount", str(m))
    kills = 0
    w = subprocess.Popen([sys.executable, "-c", WRITER, str(m / "f"), str(TOTAL), str(RECORD)],
                         stdout=subprocess.PIPE, text=True)
    assert w.stdout is not None
    seen = 0
    for line in w.stdout:
        if line.startswith(("error", "done")):
            assert line.startswith("done"), line
            break
        seen = int(line)
        if seen % 600 == 0 and kills < 4:  # mid-stream: the writer has more to write
            node.kill9()
            kills += 1
            time.sleep(0.3)  # the writer now waits in the kernel
            node.start()
    assert w.wait(60) == 0
    assert kills == 4
    assert (m / "f").read_bytes() == expected(TOTAL)
    assert (m / "base.txt").read_text() == "base\n"


def test_mount_process_killed_leaves_the_mount_served(node: Node) -> None:
    m = node.base / "m"
    m.mkdir()
    node.grid("spawn", "-q", "keep", "--mount", str(m))
    (m / "before").write_text("x")
    os.kill(mount_pid(m), 9)
    time.sleep(0.2)
    (m / "after").write_text("y")  # the daemon still serves the channel
    assert sorted(os.listdir(m)) == ["after", "base.txt", "before"]
    r = node.grid("unmount", str(m), check=False)
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: not os.path.ismount(m), timeout=10)


def test_unmount_ends_the_mount_process_at_once(node: Node) -> None:
    m = node.base / "m"
    m.mkdir()
    node.grid("spawn", "-q", "keep", "--mount", str(m))
    pid = mount_pid(m)
    t0 = time.monotonic()
    node.grid("unmount", str(m))
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}")
                    or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", timeout=5)
    assert time.monotonic() - t0 < 3


def test_a_dead_daemon_is_started_again_from_the_mount(node: Node) -> None:
    """Nobody restarts a SIGKILLed daemon here: the mount process does, after a grace
    period, with the CLI's autostart; the writer waits in the kernel meanwhile (no ENOTCONN)
    and every write lands. A daemon stopped on purpose (grid stop) is left stopped."""
    import socket

    def answering() -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(node.home / "run" / "grid.sock"))
            return True
        except OSError:
            return False
        finally:
            s.close()

    m = node.base / "m"
    m.mkdir()
    # (the tests' nodes run with GRID_AUTOSTART=0, which the mount respects: this one may)
    node.grid("spawn", "-q", "keep", "--mount", str(m), autostart=True)
    (m / "before").write_text("1")
    node.kill9()
    t0 = time.monotonic()
    (m / "after").write_text("2")  # waits in the kernel until a daemon serves the mount
    waited = time.monotonic() - t0
    assert (m / "after").read_text() == "2" and (m / "before").read_text() == "1"
    assert waited >= 1.5, waited  # the mount gave a supervisor its grace period first
    assert answering()
    node.grid("stop")  # on purpose: the mount waits and starts nothing
    assert wait_for(lambda: not answering(), timeout=30)
    time.sleep(4)
    assert not answering()
    node.start()  # someone starts it: the mount is served again
    assert wait_for(lambda: (m / "before").read_text() == "1", timeout=30)
