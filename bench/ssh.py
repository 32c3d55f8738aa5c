"""bench/ssh: sequential read and write through sshfs (the daemon's SFTP service) beside a FUSE
mount (`grid mount`) of the same spawn, in one run.

    .venv/bin/python bench/ssh.py [--mib 128] [--runs 3] [--cipher aes128-gcm@openssh.com]

One grid home, one imported file of --mib MiB of random bytes, one spawn of it, mounted three
times: by `grid mount` (FUSE, through the daemon), by `sshfs` to `grid serve --ssh` (asyncssh
in the daemon, an ed25519 key listed in ndb for root) and by `sshfs` to OpenSSH's sshd running
grid's bridge as its sftp subsystem (`sshd -D -f CONFIG` on a spare port with a config and host
key of its own, the system's sshd untouched; docs/ssh.md, "OpenSSH in front"). The SFTP server
is the daemon's in both sshfs cases; only the SSH transport differs; its cipher is ssh's
default (chacha20-poly1305) unless --cipher names one (on a CPU with AES instructions
AES-GCM is the faster: docs/benchmarks.md "Cold reads"). Each figure is the best of --runs:

* read: `dd` of the imported file to /dev/null with 1 MiB blocks, the mounts in turn, each
  --runs times (FUSE's first read is from the block store, its others from the page cache;
  sshfs mounts have no page cache here, so every sshfs read asks the daemon);
* write: `dd` of --mib MiB from /dev/zero into a new file, with conv=fsync; for sshfs also
  before the FUSE mount is made (with a caching mount attached, every SFTP write first has
  the mount drop its cached attributes of the file: a round trip per write request).

Needs root, /dev/fuse, sshfs and ssh; the OpenSSH column needs /usr/sbin/sshd (apt
openssh-server) and is left out without it. The machine is noisy: compare the ratio sshfs/FUSE, not
the absolute figures.

With --profile DIR, after the figures, py-spy (pip install py-spy) records the daemon, one
thread at a time (``--threads``, 250 Hz, idle not sampled), while each sshfs mount is read
--runs more times: DIR/LABEL.raw (collapsed stacks) and DIR/LABEL.txt (self time per
function and the functions most often on the stack, per thread).
"""

from __future__ import annotations

import argparse
import collections
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


SSHD = "/usr/sbin/sshd"
#: Seconds for the spawn's changes to be committed (spawn.overlay's checkpoint interval, and
#: some): reads of a spawn with uncommitted changes take the engine's owner thread and skip
#: SFTP's read-ahead, which would charge the writes before a read to the read.
COMMITTED = 2.5
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def mount_sshfs(port: int, remote: str, mnt: Path, key: Path, cipher: str = "") -> None:
    """sshfs of *remote* at *mnt*; *cipher*: the SSH cipher to ask for (else ssh's default,
    chacha20-poly1305 in OpenSSH 9)."""
    opts = (f"IdentityFile={key},IdentitiesOnly=yes,"
            "BatchMode=yes,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null")
    if cipher:
        opts += f",Ciphers={cipher}"
    subprocess.run(["sshfs", "-F", "/dev/null", "-p", str(port), f"root@127.0.0.1:{remote}",
                    str(mnt), "-o", opts], check=True, capture_output=True)


def start_sshd(base: Path, keys: Path, subsystem: str, tag: str) -> tuple[subprocess.Popen[bytes], int]:
    """OpenSSH's sshd in the foreground with a config and host key of its own, running
    *subsystem* as its sftp subsystem (the system's sshd and its config are not touched)."""
    if not (keys / "host").exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host")],
                       check=True, capture_output=True)
    (keys / "authorized_keys").write_text((keys / "k.pub").read_text())
    port = free_port()
    cfg = base / f"sshd_config.{tag}"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"PidFile {base / f'sshd.{tag}.pid'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\n"
        f"SetEnv PYTHONPATH={ROOT}\n"
        f"Subsystem sftp {subsystem}\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    with open(base / f"sshd.{tag}.log", "wb") as log:
        p = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stderr=log)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p, port
        if p.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"bench/ssh: sshd did not start: {(base / f'sshd.{tag}.log').read_text()}")
        time.sleep(0.05)


def profile(pid: int, out: Path, label: str, mnt: Path, mib: int, runs: int) -> None:
    """py-spy on the daemon (*pid*) while *mnt*'s big file is read *runs* times."""
    raw = out / f"{label}.raw"
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "250",
                            "--threads", "-f", "raw", "-o", str(raw), "--pid", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    try:
        got = [dd(str(mnt / "big"), "/dev/null", mib) for _ in range(runs)]
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    text = f"{label}: reads {', '.join(f'{g:.0f}' for g in got)} MB/s under py-spy\n"
    (out / f"{label}.txt").write_text(text + summarize(raw))
    print(text, end="")


def summarize(raw: Path, n: int = 25) -> str:
    """Per thread: its samples, the functions with the most self time and the functions
    most often anywhere on its stack (% of the thread's samples)."""
    self_t: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:] or ["?"]
        c = int(count)
        total[thread] += c
        self_t[thread][frames[-1]] += c
        for f in set(frames):
            incl[thread][f] += c
    lines = []
    for thread, t in total.most_common():
        lines.append(f"\n== {thread}: {t} samples\n-- self")
        lines += [f"{100 * c / t:5.1f}%  {f}" for f, c in self_t[thread].most_common(n)]
        lines.append("-- on the stack")
        lines += [f"{100 * c / t:5.1f}%  {f}" for f, c in incl[thread].most_common(n)]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", type=Path, help="py-spy the daemon per sshfs mount into DIR")
    ap.add_argument("--cipher", default="",
                    help="SSH cipher for every sshfs mount (e.g. aes128-gcm@openssh.com; "
                         "default: ssh's own choice)")
    args = ap.parse_args()
    for tool in ("sshfs", "ssh", "ssh-keygen", "fusermount3"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/ssh: {tool} not found (apt install sshfs openssh-client fuse3)")
    base = Path(tempfile.mkdtemp(prefix="grid-bench-ssh-", dir="/tmp"))
    home, src, fuse, sshfs, keys, opensshfs, overfuse = (
        base / n for n in ("home", "src", "fuse", "sshfs", "keys", "opensshfs", "overfuse"))
    serve = None
    sshd: list[tuple[subprocess.Popen[bytes], int]] = []
    mounts: list[tuple[str, Path]] = []
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
        mount_sshfs(port, f"/{sid}", sshfs, keys / "k", args.cipher)
        if os.path.exists(SSHD):
            sshd.append(start_sshd(base, keys, f"{sys.executable} -m grid.sftp_bridge "
                                               f"{home / 'run' / 'sftp.sock'}", "bridge"))
            opensshfs.mkdir()
            mount_sshfs(sshd[-1][1], f"/{sid}", opensshfs, keys / "k", args.cipher)
            mounts.append(("OpenSSH", opensshfs))
        alone = []  # before the FUSE mount exists: no other client to tell of each change
        for i in range(args.runs):
            alone.append(dd("/dev/zero", str(sshfs / f"w{i}"), args.mib, "conv=fsync"))
            os.unlink(sshfs / f"w{i}")
        grid(home, "mount", sid, str(fuse))
        if os.path.exists(SFTP_SERVER):  # the reference: OpenSSH's own server over the FUSE mount
            sshd.append(start_sshd(base, keys, SFTP_SERVER, "sftp-server"))
            overfuse.mkdir()
            mount_sshfs(sshd[-1][1], str(fuse), overfuse, keys / "k", args.cipher)
            mounts.append(("sftp-srv", overfuse))
        mounts[:0] = [("FUSE", fuse), ("asyncssh", sshfs)]
        print(f"bench/ssh: load average {os.getloadavg()[0]:.1f} before", flush=True)
        time.sleep(COMMITTED)
        reads: dict[str, list[float]] = {label: [] for label, _ in mounts}
        writes: dict[str, list[float]] = {label: [] for label, _ in mounts}
        for _ in range(args.runs):  # round robin: the machine's load moves over a run
            for label, mnt in mounts:
                reads[label].append(dd(str(mnt / "big"), "/dev/null", args.mib))
        for i in range(args.runs):
            for label, mnt in mounts:
                writes[label].append(dd("/dev/zero", str(mnt / f"w{i}"), args.mib, "conv=fsync"))
                os.unlink(mnt / f"w{i}")
        print(f"bench/ssh: {args.mib} MiB, MB/s; sshfs through asyncssh (grid serve --ssh), "
              "through OpenSSH's sshd with grid.sftp_bridge, and OpenSSH's sftp-server over "
              f"the FUSE mount; cipher {args.cipher or 'ssh default'}; load average "
              f"{os.getloadavg()[0]:.1f} after")
        others = [label for label, _ in mounts[1:]]
        print(f"{'':24}{'FUSE':>9}" + "".join(f"{o:>10}{'/FUSE':>7}" for o in others))
        rows = {
            "read, first": {k: v[0] for k, v in reads.items()},
            f"read, best of {args.runs}": {k: max(v) for k, v in reads.items()},
            f"write, best of {args.runs}": {k: max(v) for k, v in writes.items()},
        }
        for row, r in rows.items():
            f = r["FUSE"]
            print(f"{row:24}{f:9.1f}" + "".join(f"{r[o]:10.1f}{r[o] / f:7.2f}" for o in others))
        first = rows["read, first"]["FUSE"]
        print(f"{'best read / FUSE first':24}{'':9}" + "".join(
            f"{'':10}{rows[f'read, best of {args.runs}'][o] / first:7.2f}" for o in others)
            + "   (a FUSE re-read is the page cache)")
        print(f"sshfs (asyncssh) write with no FUSE mount of the spawn: {max(alone):.1f} MB/s")
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            time.sleep(COMMITTED)  # the writes above are committed: reads as in the figures
            for label, mnt in mounts:
                if label in ("asyncssh", "OpenSSH"):
                    profile(serve.pid, args.profile, label, mnt, args.mib, args.runs)
    finally:
        for m in (overfuse, opensshfs, sshfs, fuse):
            subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True, check=False)
        for p, _port in sshd:
            p.terminate()
            p.wait(timeout=10)
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                serve.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
