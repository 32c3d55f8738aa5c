"""bench/ninep_ab: large 9P reads of one or more versions of grid, side by side with diod.

    sudo .venv/bin/python bench/ninep_ab.py [--mode cold|warm|coldcold] [--mib 256]
                                            [--trials 6] [--roots DIR[,DIR...]]

bench/ninep.py measures one daemon's first read once and its warm reads a few times; on a
machine whose rates move ±20 % from one minute to the next that cannot tell two versions of
the read path apart. This runs each version (--roots: checkouts of grid, each used as the
daemon's code; default this one) in turns, many times, and prints medians:

* ``cold``: per trial and version, a fresh `grid serve` (its decoded-content cache empty), a
  spawn, one `diodcat` of the --mib MiB file (half random, half zeros, as bench/ninep.py's);
  MB/s and the daemon's CPU µs per MiB (its children's not counted);
* ``warm``: a daemon per version and diod, all started once and read once; then rounds of
  one `diodcat` each; MB/s, server CPU µs per MiB, and the median per round of grid / diod;
* ``coldcold``: as ``cold``, with the page cache dropped before every read, diod's too (diod
  then reads its plain file from disk, grid its store).

Needs root (diod -n, drop_caches) and the Debian diod package. Results in
docs/benchmarks.md ("Cold reads").
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ninep as nb  # noqa: E402  (bench/ninep.py: the clients and helpers)


def stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGTERM)
    p.wait()


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("cold", "warm", "coldcold"), default="cold")
    ap.add_argument("--mib", type=int, default=256, help="size of the file read (MiB)")
    ap.add_argument("--trials", type=int, default=6, help="reads per version (rounds, warm)")
    ap.add_argument("--roots", default=str(HERE.parent),
                    help="comma-separated checkouts of grid whose code the daemons run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/ninep_ab: run as root (diod serves as root with -n)")
    roots = [str(Path(r).resolve()) for r in args.roots.split(",")]
    for r in roots:
        if not (Path(r) / "grid" / "cli" / "main.py").is_file():
            sys.exit(f"bench/ninep_ab: {r} is not a checkout of grid")
    base = Path(tempfile.mkdtemp(prefix="bench-9pab-", dir="/var/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    size = args.mib << 20
    try:
        data = base / "data"
        data.mkdir()
        with open(data / "big", "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 19) + bytes(1 << 19))
        homes = {}
        for i, r in enumerate(roots):
            homes[r] = base / f"home{i}"
            nb.grid(homes[r], "init")
            nb.grid(homes[r], "import", str(data), "bench")
        rate: dict[str, list[float]] = {r: [] for r in roots}
        cpu: dict[str, list[float]] = {r: [] for r in roots}
        if args.mode in ("warm", "coldcold"):
            dsock = base / "diod.sock"
            diod = subprocess.Popen([nb.tool("diod"), "-f", "-n", "-l", str(dsock), "-e", str(data),
                                     "-L", str(base / "diod.log")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base)
            procs.append(diod)
            nb.wait_socket(dsock, diod, "diod")
            rate["diod"], cpu["diod"] = [], []

        def one(who: str, sock: str, aname: str, pid: int) -> None:
            c0 = nb.cpu_seconds(pid)
            rate[who].append(nb.cat_mbs(sock, aname, "big", size, 65536))
            cpu[who].append((nb.cpu_seconds(pid) - c0) * 1e6 / args.mib)

        if args.mode == "warm":
            servers = {"diod": (str(dsock), str(data), diod.pid)}
            for r in roots:
                d = nb.start_daemon(homes[r], Path(r))
                procs.append(d)
                sid = nb.grid(homes[r], "spawn", "-q", "bench").strip()
                servers[r] = (str(homes[r] / "run" / "9p.sock"), sid, d.pid)
            for sock, aname, _pid in servers.values():  # each decodes / caches once
                nb.cat_mbs(sock, aname, "big", size, 65536)
            for _ in range(args.trials):
                for who, (sock, aname, pid) in servers.items():
                    one(who, sock, aname, pid)
        else:
            for _ in range(args.trials):
                if args.mode == "coldcold":
                    drop_caches()
                    one("diod", str(dsock), str(data), diod.pid)
                for r in roots:
                    d = nb.start_daemon(homes[r], Path(r))
                    try:
                        sid = nb.grid(homes[r], "spawn", "-q", "bench").strip()
                        if args.mode == "coldcold":
                            drop_caches()
                        one(r, str(homes[r] / "run" / "9p.sock"), sid, d.pid)
                    finally:
                        stop(d)
                        (homes[r] / "run" / "9p.sock").unlink(missing_ok=True)
        print(f"bench/ninep_ab --mode {args.mode}: {args.mib} MiB, {args.trials} trials; "
              f"load average {os.getloadavg()[0]:.2f}")
        for who, v in rate.items():
            line = (f"{who}\n  MB/s {' '.join(f'{x:.0f}' for x in v)}  median "
                    f"{statistics.median(v):.0f}  server CPU µs/MiB median "
                    f"{statistics.median(cpu[who]):.0f}")
            if "diod" in rate and who != "diod":
                if args.mode == "warm":
                    per = [x / y for x, y in zip(v, rate["diod"], strict=True)]
                    line += f"  grid/diod per round median {statistics.median(per):.2f}"
                else:
                    line += (f"  median / diod's median "
                             f"{statistics.median(v) / statistics.median(rate['diod']):.2f}")
            print(line)
    finally:
        for p in procs:
            stop(p)
        subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
