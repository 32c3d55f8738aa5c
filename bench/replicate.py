"""bench/replicate: `grid replicate` between two real nodes on loopback, beside raw TLS.

    .venv/bin/python bench/replicate.py [--gib 1] [--workdir /var/tmp/grid-bench-repl] [--keep]

In one run:
  1. raw TLS (before step 4 and again after it; the ratio uses the better of the two,
     since the machine is shared and noisy): a Python ``ssl`` socket pair on 127.0.0.1 (TLS 1.3, the grid's own node
     certificates and contexts, so the same cipher), one thread sending ``--gib`` GiB in
     1 MiB writes, the other reading and discarding: MB/s (10^6 bytes/s) of payload;
  2. two grid homes, a (made the CA) and b (joined), b running ``grid serve --blocks``;
  3. the import-benchmark tree (bench/gentree.py make_big, same seed) imported on a;
  4. full replication a -> b: wall time of ``grid replicate`` (interpreter start-up included),
     the block payload bytes it sent (its --json summary), MB/s = payload / wall;
  5. change 1 % of the tree's bytes in place (gentree.mutate_inplace, the import benchmark's
     change), import again on a, replicate again: time, payload bytes, and both as a fraction
     of the full run.

"Bytes on the wire" here is block payload sent (uncompressed, as the protocol carries it);
the frame headers and has-queries add 9 bytes a frame and 32 bytes a score scanned.
Results: a table on stdout and ``bench/out/replicate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replication import certs  # noqa: E402


def _load_gentree():
    """bench/gentree.py by path: putting bench/ on sys.path would let bench/ndb.py shadow
    the ndb package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gentree", ROOT / "bench" / "gentree.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gentree"] = mod
    spec.loader.exec_module(mod)
    return mod


gentree = _load_gentree()

GIB = 1 << 30
CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grid(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GRID_HOME=str(home), PYTHONPATH=str(ROOT), GRID_AUTOSTART="0")
    p = subprocess.run([sys.executable, "-m", "grid.cli.main", *args], env=env,
                       capture_output=True, text=True)
    if check and p.returncode:
        raise SystemExit(f"grid {' '.join(args)} failed: {p.stderr}")
    return p


def raw_tls(home: Path, nbytes: int) -> float:
    """MB/s of *nbytes* through one TLS 1.3 connection on loopback, node certs both ends."""
    d = home / "certs" / "node"
    files = (d / certs.CERT_FILE, d / certs.KEY_FILE, d / certs.CA_FILE)
    sctx, cctx = certs.server_context(*files), certs.client_context(*files)
    me = certs.load_bundle(d).identity.name
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    got = [0]

    def serve() -> None:
        conn, _ = lsock.accept()
        with sctx.wrap_socket(conn, server_side=True) as s:
            while chunk := s.recv(CHUNK):
                got[0] += len(chunk)

    t = threading.Thread(target=serve)
    t.start()
    payload = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            cctx.wrap_socket(raw, server_hostname=me) as s:
        t0 = time.perf_counter()
        for _ in range(nbytes // CHUNK):
            s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        t.join()
        dt = time.perf_counter() - t0
    lsock.close()
    assert got[0] == nbytes // CHUNK * CHUNK
    return got[0] / dt / 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def replicate(home: Path, receiver: int) -> tuple[float, dict[str, object]]:
    """One `grid replicate --json`: wall time and its summary, plus the CPU seconds of the
    replicator and of the receiving daemon during it (which side limits the rate)."""
    env = dict(os.environ, GRID_HOME=str(home), PYTHONPATH=str(ROOT), GRID_AUTOSTART="0")
    r0 = cpu_seconds(receiver)
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "replicate", "--json"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    dt = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"grid replicate failed: {err}")
    summary = json.loads(out.splitlines()[0])
    summary["receiver_cpu_s"] = cpu_seconds(receiver) - r0
    return dt, summary


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "replicate.json"))
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="grid-bench-repl-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    a, b = work / "a", work / "b"
    port = free_port()
    daemon = None
    try:
        grid(a, "init", "--node-name", "a", "--grid-name", "bench")
        grid(a, "join-bundle", "b", "-o", str(work / "b.bundle"))
        grid(b, "init", "--join", str(work / "b.bundle"))
        grid(a, "peer", "add", "b", f"127.0.0.1:{port}")
        grid(b, "peer", "add", "a", "127.0.0.1:1")
        tls = raw_tls(a, int(args.gib * GIB))
        print(f"raw TLS (python ssl, loopback)      {tls:8.0f} MB/s", flush=True)
        tree = work / "tree"
        info = gentree.make_big(tree, args.gib, 1)
        t0 = time.perf_counter()
        grid(a, "import", str(tree), "big")
        print(f"import on a                         {time.perf_counter() - t0:8.1f} s "
              f"({info.logical_bytes / 1e6:.0f} MB logical)", flush=True)
        env = dict(os.environ, GRID_HOME=str(b), PYTHONPATH=str(ROOT), GRID_AUTOSTART="0")
        with open(work / "b.log", "ab") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "serve",
                                       "--blocks", f"127.0.0.1:{port}"], env=env,
                                      stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        os.sync()
        c0 = _children_cpu()
        full_t, full = replicate(a, daemon.pid)
        full["sender_cpu_s"] = _children_cpu() - c0
        print(f"  CPU: replicator {full['sender_cpu_s']:.1f} s, receiving daemon "
              f"{full['receiver_cpu_s']:.1f} s", flush=True)
        tls_after = raw_tls(a, int(args.gib * GIB))
        print(f"raw TLS again, after it              {tls_after:8.0f} MB/s", flush=True)
        tls_before, tls = tls, max(tls, tls_after)  # the ratio against the better of the two
        full_mbps = int(full["bytes"]) / full_t / 1e6  # type: ignore[call-overload]
        print(f"full replication a -> b             {full_t:8.1f} s, {full['blocks']} blocks, "
              f"{int(full['bytes']) / 1e6:.0f} MB, {full_mbps:.0f} MB/s "  # type: ignore[call-overload]
              f"= {full_mbps / tls:.0%} of raw TLS", flush=True)
        changed = gentree.mutate_inplace(tree, 0.01)
        grid(a, "import", str(tree), "big")
        os.sync()
        c0 = _children_cpu()
        inc_t, inc = replicate(a, daemon.pid)
        inc["sender_cpu_s"] = _children_cpu() - c0
        print(f"after a 1 % change ({changed / 1e6:.1f} MB)      {inc_t:8.2f} s, "
              f"{inc['blocks']} blocks, {int(inc['bytes']) / 1e6:.1f} MB = "  # type: ignore[call-overload]
              f"{inc_t / full_t:.1%} of the full run's time "
              f"(in-process {inc['seconds']:.2f} s = {inc['seconds'] / full['seconds']:.1%})",
              flush=True)
        result = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "gib": args.gib, "tree": info.as_dict(), "raw_tls_mbps": tls_before, "raw_tls_after_mbps": tls_after,
            "full": {**full, "wall_seconds": full_t, "mbps": full_mbps, "of_raw_tls": full_mbps / tls},
            "incremental": {**inc, "changed_bytes": changed, "wall_seconds": inc_t,
                            "of_full_time": inc_t / full_t},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(60)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
