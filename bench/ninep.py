"""bench/ninep: grid's 9P server against diod, with diod's own clients on both.

    .venv/bin/python bench/ninep.py [--mib 256] [--msize 65536] [--runs 3] [--seconds 3]

The same bytes are served twice in one run: by `grid serve` (a spawn of an imported
directory, over the daemon's Unix socket, aname = the spawn id) and by `diod` exporting that
directory (its Unix socket too, so the transports match). The clients are the same binaries:

* large sequential read: `diodcat` of one file of --mib MiB to /dev/null, MB/s (the first
  read of the spawn is cold, from the block store; later runs are warm; diod's are from the
  page cache after the first);
* getattr: `diodload -g` (16 threads stat `ctl:null`) ops/s;
* read + write of synthetic files: `diodload` (threads copy `ctl:zero` to `ctl:null`), MB/s;
* large sequential write: diod has no writing tool, so the bench's own minimal 9P2000.L
  client (blocking socket, raw frames, no per-message validation: the same code for both
  servers) creates a file and writes --mib MiB to it in --wmsize requests, --depth of them
  in flight (1 = one at a time, as diodcat reads), then clunks it and removes it, MB/s
  from the first Twrite to the Rclunk; no fsync on either side (diod writes to ext4's page
  cache, grid to its overlay and journal).

Each figure is the best of --runs, and the ratios grid/diod are what DESIGN.md's targets
speak of (large reads >= 0.8, getattr >= 0.5, writes >= 0.5). Beside them, each server's CPU
time (user + system, all threads, from /proc) per MiB read or written and per getattr, summed
over the runs: on a loaded machine the rates move with the load, the CPU time much less. Needs root (diod runs as root, -n: no auth)
and the Debian diod package. The machine is noisy: compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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


def start_daemon(home: Path, root: Path = ROOT) -> subprocess.Popen[bytes]:
    """`grid serve` for *home*, running the code of the checkout *root*, once its 9P socket
    is up."""
    env = dict(os.environ, GRID_HOME=str(home), PYTHONPATH=str(root), GRID_AUTOSTART="0")
    d = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "serve"], env=env, cwd=root,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_socket(home / "run" / "9p.sock", d, "grid serve")
    return d


def cat_mbs(server: str, aname: str, name: str, size: int, msize: int) -> float:
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        p = subprocess.run([tool("diodcat"), "-s", server, "-a", aname, "-m", str(msize), name],
                           stdout=null, stderr=subprocess.PIPE, check=False)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench/ninep: diodcat on {server}: {p.stderr.decode().strip()}")
    return size / took / 1e6


def _rpc(sock: socket.socket, frame: bytes, want: int) -> bytes:
    sock.sendall(frame)
    return _reply(sock, want)


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def _reply(sock: socket.socket, want: int) -> bytes:
    size, rtype = struct.unpack("<IB", _recv(sock, 5))
    body = _recv(sock, size - 5)
    if rtype != want:
        code = struct.unpack_from("<I", body, 2)[0] if rtype == 7 else -1
        raise OSError(code, f"9P reply type {rtype}, wanted {want}")
    return body


def write_mbs(server: str, aname: str, size: int, msize: int, depth: int) -> float:
    """Create ``wbench`` at the root of *aname*, write *size* bytes in msize - 24 byte
    Twrites (*depth* in flight), clunk and remove it; MB/s up to the Rclunk."""
    from spawn.ninep import messages as m9
    from spawn.ninep.codec import encode
    from spawn.ninep.messages import NOFID, NOTAG, Dialect

    L = Dialect.LINUX
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(server)
        body = _rpc(sock, encode(m9.Tversion(tag=NOTAG, msize=msize, version=b"9P2000.L"), L), 101)
        msize = struct.unpack_from("<I", body, 2)[0]
        _rpc(sock, encode(m9.Tattach(tag=1, fid=0, afid=NOFID, uname=b"", aname=aname.encode(),
                                     n_uname=os.geteuid()), L), 105)
        _rpc(sock, encode(m9.Twalk(tag=1, fid=0, newfid=1, wnames=()), L), 111)
        _rpc(sock, encode(m9.Tlcreate(tag=1, fid=1, name=b"wbench", flags=os.O_WRONLY,
                                      mode=0o644, gid=os.getegid()), L), 15)
        chunk = msize - 24
        block = (os.urandom(chunk // 2) + bytes(chunk - chunk // 2))  # half compressible
        head = struct.Struct("<IBHIQI")
        t0 = time.perf_counter()
        offset = inflight = 0
        tag = 0
        while offset < size or inflight:
            while offset < size and inflight < depth:
                n = min(chunk, size - offset)
                tag = (tag + 1) % 0xFFFF
                sock.sendall(head.pack(23 + n, 118, tag, 1, offset, n) + block[:n])
                offset += n
                inflight += 1
            _reply(sock, 119)
            inflight -= 1
        _rpc(sock, encode(m9.Tclunk(tag=1, fid=1), L), 121)
        took = time.perf_counter() - t0
        _rpc(sock, encode(m9.Twalk(tag=1, fid=0, newfid=2, wnames=(b"wbench",)), L), 111)
        _rpc(sock, encode(m9.Tremove(tag=1, fid=2), L), 123)
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


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of process *pid* (every thread, or only *thread*) so far."""
    stat = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(stat).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="size of the file read (MiB)")
    ap.add_argument("--msize", type=int, default=65536, help="9P msize for both")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3, help="diodload run time")
    ap.add_argument("--wmsize", type=int, default=(1 << 20) + 24, help="msize of the write row")
    ap.add_argument("--depth", type=int, default=1, help="Twrites in flight in the write row")
    ap.add_argument("--only", default="", help="comma-separated rows: read,getattr,rw,write")
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
        daemon = start_daemon(home)
        print(f"bench/ninep: grid serve pid {daemon.pid}", file=sys.stderr, flush=True)
        sid = grid(home, "spawn", "-q", "bench").strip()
        dsock = base / "diod.sock"
        diod = subprocess.Popen([tool("diod"), "-f", "-n", "-l", str(dsock), "-e", str(data),
                                 "-e", "ctl", "-L", str(base / "diod.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=base)  # diod may dump core when terminated: not here
        wait_socket(dsock, diod, "diod")
        servers = {"grid": (str(home / "run" / "9p.sock"), sid), "diod": (str(dsock), str(data))}
        results: dict[str, dict[str, float]] = {k: {} for k in servers}
        rows = set(args.only.split(",")) if args.only else {"read", "getattr", "rw", "write"}
        pids = {"grid": daemon.pid, "diod": diod.pid}
        # The servers' CPU time per unit of work, summed over the runs: less at the mercy of
        # other load on the machine than the rates (a waiting server spends none).
        cpu: dict[str, dict[str, float]] = {k: {} for k in servers}
        each: dict[str, list[float]] = {}  # the write row's runs, as measured
        for who, (sock, aname) in servers.items():
            c0 = cpu_seconds(pids[who])
            if "read" in rows:
                reads = [cat_mbs(sock, aname, "big", size, args.msize) for _ in range(args.runs)]
                results[who]["read cold MB/s"] = reads[0]
                results[who]["read warm MB/s"] = max(reads[1:] or reads)
                c1 = cpu_seconds(pids[who])
                cpu[who]["read, µs/MiB"] = (c1 - c0) * 1e6 / (args.mib * args.runs)
                c0 = c1
            if "getattr" in rows:
                g = [load(sock, args.seconds, args.msize, True)[0] for _ in range(args.runs)]
                results[who]["getattr ops/s"] = max(g)
                c1 = cpu_seconds(pids[who])
                cpu[who]["getattr, µs/op"] = (c1 - c0) * 1e6 / (sum(g) * args.seconds)
                c0 = c1
            if "rw" in rows:
                rw = [load(sock, args.seconds, args.msize, False) for _ in range(args.runs)]
                results[who]["zero->null MB/s"] = max(r[1] for r in rw)
                c0 = cpu_seconds(pids[who])
            if "write" in rows:
                # grid's main thread (its thread id is the pid) runs the asyncio loop that
                # receives the 9P frames; the spawn's host thread writes them
                t0 = cpu_seconds(pids[who], pids[who])
                w = [write_mbs(sock, aname, size, args.wmsize, args.depth) for _ in range(args.runs)]
                results[who]["write MB/s"] = max(w)
                each[who] = w
                c1 = cpu_seconds(pids[who])  # (includes each run's removal of the file)
                cpu[who]["write, µs/MiB"] = (c1 - c0) * 1e6 / (args.mib * args.runs)
                main_thread = (cpu_seconds(pids[who], pids[who]) - t0) * 1e6 / (args.mib * args.runs)
                cpu[who]["  main thread"] = main_thread if who == "grid" else float("nan")
        print(f"9P: grid (spawn over its Unix socket) vs diod (directory, Unix socket); "
              f"{args.mib} MiB file, msize {args.msize} (writes: {args.wmsize}, {args.depth} in "
              f"flight), best of {args.runs}; load average {os.getloadavg()[0]:.2f}")
        print(f"{'':20} {'grid':>10} {'diod':>10} {'grid/diod':>10}")
        for key in results["grid"]:
            gv, dv = results["grid"][key], results["diod"][key]
            ratio = gv / dv if dv else float("nan")
            print(f"{key:20} {gv:10.0f} {dv:10.0f} {ratio:10.2f}")
        for who, w in each.items():
            print(f"write MB/s, each run, {who}: {' '.join(f'{x:.0f}' for x in w)}")
        print("server CPU time (user + system, all threads), summed over the runs:")
        for key in cpu["grid"]:
            gv, dv = cpu["grid"][key], cpu["diod"][key]
            print(f"{key:20} {gv:10.1f} {dv:10.1f} {gv / dv if dv else float('nan'):10.2f}")
    finally:
        for p in (diod, daemon):
            if p is not None and p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
