"""bench/ssh: sequential read and write through sshfs (the daemon's SFTP service) beside a FUSE
mount (`grid mount`) of the same spawn, in one run.

    .venv/bin/python bench/ssh.py [--mib 128] [--runs 3]

One grid home, one imported file of --mib MiB of random bytes, one spawn of it, mounted twice:
by `grid mount` (FUSE, through the daemon) and by `sshfs` (SFTP over SSH to `grid serve
--ssh`, an ed25519 key listed in ndb for root). Each figure is the best of --runs:

* read: `dd` of the imported file to /dev/null with 1 MiB blocks (the first run through
  either mount is cold, from the block store; the others read the spawn's cache);
* write: `dd` of --mib MiB from /dev/zero into a new file, with conv=fsync; for sshfs also
  before the FUSE mount is made (with a caching mount attached, every SFTP write first has
  the mount drop its cached attributes of the file: a round trip per write request).

Needs root, /dev/fuse, sshfs and ssh. The machine is noisy: compare the ratio sshfs/FUSE, not
the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def grid(home: Path, *args: str) -> str:
    env = dict(os.environ, GRID_HOME=str(home), PYTHONPATH=str(ROOT), GRID_AUTOSTART="0")
    p = subprocess.run([sys.executable, "-m", "grid.cli.main", *args], env=env,
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        sys.exit(f"bench/ssh: grid {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dd(src: str, dst: str, mib: int, *extra: str) -> float:
    """MB/s of one dd run (bytes / wall time, 10^6 bytes per MB)."""
    t0 = time.monotonic()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", f"count={mib}", *extra],
                   check=True, capture_output=True)
    return mib * (1 << 20) / (time.monotonic() - t0) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for tool in ("sshfs", "ssh", "ssh-keygen", "fusermount3"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/ssh: {tool} not found (apt install sshfs openssh-client fuse3)")
    base = Path(tempfile.mkdtemp(prefix="grid-bench-ssh-", dir="/tmp"))
    home, src, fuse, sshfs, keys = (base / n for n in ("home", "src", "fuse", "sshfs", "keys"))
    serve = None
    try:
        grid(home, "init")
        src.mkdir()
        with open(src / "big", "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        grid(home, "import", str(src), "bench")
        keys.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "k")],
                       check=True, capture_output=True)
        grid(home, "user", "rm", "root")  # grid init recorded root without a key
        grid(home, "user", "add", "root", "--uid", "0", "--ssh-key", str(keys / "k.pub"))
        port = free_port()
        env = dict(os.environ, GRID_HOME=str(home), PYTHONPATH=str(ROOT), GRID_AUTOSTART="0")
        with open(base / "daemon.log", "wb") as log:
            serve = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "serve", "--ssh",
                                      f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=log)
        deadline = time.monotonic() + 30
        while not (home / "run" / "grid.sock").exists():
            if serve.poll() is not None or time.monotonic() > deadline:
                sys.exit("bench/ssh: grid serve did not start")
            time.sleep(0.05)
        time.sleep(0.3)
        sid = grid(home, "spawn", "-q", "bench").strip()
        fuse.mkdir()
        sshfs.mkdir()
        subprocess.run(["sshfs", "-F", "/dev/null", "-p", str(port), f"root@127.0.0.1:/{sid}",
                        str(sshfs), "-o", f"IdentityFile={keys / 'k'},IdentitiesOnly=yes,"
                        "BatchMode=yes,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null"],
                       check=True, capture_output=True)
        alone = []  # before the FUSE mount exists: no other client to tell of each change
        for i in range(args.runs):
            alone.append(dd("/dev/zero", str(sshfs / f"w{i}"), args.mib, "conv=fsync"))
            os.unlink(sshfs / f"w{i}")
        grid(home, "mount", sid, str(fuse))
        results: dict[str, dict[str, float]] = {"FUSE": {}, "sshfs": {}}
        for label, mnt in (("FUSE", fuse), ("sshfs", sshfs)):
            reads = [dd(str(mnt / "big"), "/dev/null", args.mib) for _ in range(args.runs)]
            writes = []
            for i in range(args.runs):
                writes.append(dd("/dev/zero", str(mnt / f"w{i}"), args.mib, "conv=fsync"))
                os.unlink(mnt / f"w{i}")
            results[label] = {"read cold": reads[0], "read warm": max(reads[1:] or reads),
                              "write": max(writes)}
        print(f"bench/ssh: {args.mib} MiB, best of {args.runs}, MB/s")
        print(f"{'':12}{'FUSE':>10}{'sshfs':>10}{'sshfs/FUSE':>12}")
        for k in ("read cold", "read warm", "write"):
            f, s = results["FUSE"][k], results["sshfs"][k]
            print(f"{k:12}{f:10.1f}{s:10.1f}{s / f:12.2f}")
        print(f"sshfs write with no FUSE mount of the spawn: {max(alone):.1f} MB/s")
    finally:
        for m in (sshfs, fuse):
            subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True, check=False)
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                serve.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
