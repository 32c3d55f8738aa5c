"""bench/ninep: grid's 9P server against diod, with diod's own clients on both.

    .venv/bin/python bench/ninep.py [--mib 256] [--msize 65536] [--runs 3] [--seconds 3]

The same bytes are served twice in one run: by `grid serve` (a spawn of an imported
directory, over the daemon's Unix socket, aname = the spawn id) and by `diod` exporting that
directory (its Unix socket too, so the transports match). The clients are the same binaries:

* large sequential read: `diodcat` of one file of --mib MiB to /dev/null, MB/s (the first
  read of the spawn is cold, from the block store; later runs are warm; diod's are from the
  page cache after the first);
* getattr: `diodload -g` (16 threads stat `ctl:null`) ops/s;
* read + write of synthetic files: `diodload` (threads copy `ctl:zero` to `ctl:null`), MB/s.

Each figure is the best of --runs, and the ratios grid/diod are what DESIGN.md's targets
speak of (large reads >= 0.8, getattr >= 0.5). Needs root (diod runs as root, -n: no auth)
and the Debian diod package. The machine is noisy: compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SBIN = "/usr/sbin"


def tool(name: str) -> str:
    path = shutil.which(name) or os.path.join(SBIN, name)
    if not os.path.exists(path):
        sys.exit(f"bench/ninep: {name} not found (apt install diod)")
    return path


def grid(home: Path, *args: str) -> str:
    env = dict(os.environ, GRID_HOME=str(home), PYTHONPATH=str(ROOT), GRID_AUTOSTART="0")
    p = subprocess.run([sys.executable, "-m", "grid.cli.main", *args], env=env,
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        sys.exit(f"bench/ninep: grid {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def wait_socket(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"bench/ninep: {what} did not start")
        time.sleep(0.05)
    time.sleep(0.2)


def cat_mbs(server: str, aname: str, name: str, size: int, msize: int) -> float:
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        p = subprocess.run([tool("diodcat"), "-s", server, "-a", aname, "-m", str(msize), name],
                           stdout=null, stderr=subprocess.PIPE, check=False)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench/ninep: diodcat on {server}: {p.stderr.decode().strip()}")
    return size / took / 1e6


def load(server: str, seconds: int, msize: int, getattr: bool) -> tuple[int, int, int]:
    """diodload's "N ops/s, R rMB/s, W wMB/s"."""
    args = [tool("diodload"), "-s", server, "-r", str(seconds), "-m", str(msize)]
    p = subprocess.run([*args, *(["-g"] if getattr else [])], capture_output=True, text=True,
                       check=False)
    words = p.stderr.split()
    if p.returncode != 0 or len(words) < 6 or words[0] != "diodload:":
        sys.exit(f"bench/ninep: diodload on {server}: {p.stderr.strip()}")
    return int(words[1]), int(words[3]), int(words[5])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="size of the file read (MiB)")
    ap.add_argument("--msize", type=int, default=65536, help="9P msize for both")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3, help="diodload run time")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/ninep: run as root (diod serves as root with -n)")
    base = Path(tempfile.mkdtemp(prefix="bench-9p-", dir="/tmp"))
    daemon = diod = None
    try:
        data = base / "data"
        data.mkdir()
        size = args.mib << 20
        with open(data / "big", "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 19) + bytes(1 << 19))  # half compressible
        home = base / "home"
        grid(home, "init")
        grid(home, "import", str(data), "bench")
        env = dict(os.environ, GRID_HOME=str(home), PYTHONPATH=str(ROOT), GRID_AUTOSTART="0")
        daemon = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_socket(home / "run" / "9p.sock", daemon, "grid serve")
        sid = grid(home, "spawn", "-q", "bench").strip()
        dsock = base / "diod.sock"
        diod = subprocess.Popen([tool("diod"), "-f", "-n", "-l", str(dsock), "-e", str(data),
                                 "-e", "ctl", "-L", str(base / "diod.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_socket(dsock, diod, "diod")
        servers = {"grid": (str(home / "run" / "9p.sock"), sid), "diod": (str(dsock), str(data))}
        results: dict[str, dict[str, float]] = {k: {} for k in servers}
        for who, (sock, aname) in servers.items():
            reads = [cat_mbs(sock, aname, "big", size, args.msize) for _ in range(args.runs)]
            results[who]["read cold MB/s"] = reads[0]
            results[who]["read warm MB/s"] = max(reads[1:] or reads)
            g = [load(sock, args.seconds, args.msize, True)[0] for _ in range(args.runs)]
            results[who]["getattr ops/s"] = max(g)
            rw = [load(sock, args.seconds, args.msize, False) for _ in range(args.runs)]
            results[who]["zero->null MB/s"] = max(r[1] for r in rw)
        print(f"9P: grid (spawn over its Unix socket) vs diod (directory, Unix socket); "
              f"{args.mib} MiB file, msize {args.msize}, best of {args.runs}")
        print(f"{'':20} {'grid':>10} {'diod':>10} {'grid/diod':>10}")
        for key in results["grid"]:
            gv, dv = results["grid"][key], results["diod"][key]
            ratio = gv / dv if dv else float("nan")
            print(f"{key:20} {gv:10.0f} {dv:10.0f} {ratio:10.2f}")
    finally:
        for p in (diod, daemon):
            if p is not None and p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
