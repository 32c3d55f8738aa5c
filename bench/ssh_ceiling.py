"""bench/ssh_ceiling: what an SSH transport can carry on this machine, with no SFTP and no grid.

    .venv/bin/python bench/ssh_ceiling.py [--mib 256] [--runs 2] [--profile DIR]

OpenSSH's ``ssh`` client streams --mib MiB through one session channel, down (the server
writes zeros, the client discards them) and up (the client sends zeros, the server counts
them), once per cipher/MAC pair OpenSSH offers, against two servers:

* **asyncssh**: asyncssh's server (the one grid's daemon runs) in a process of its own, an
  exec request answered by a coroutine that writes or reads the channel in 256 KiB pieces;
* **OpenSSH**: ``sshd -D -f CONFIG`` on a spare port with its own host key and config (the
  system's sshd and its config are not touched), running ``head -c`` / ``cat >/dev/null``.

Then, to separate the SFTP layer from the transport, ``sshfs`` reads and writes a --mib MiB
file in a tmpfs-free temporary directory through each server's own SFTP: asyncssh's stock
``SFTPServer`` (plain files, no grid) and OpenSSH's ``sftp-server``.

With --profile DIR, py-spy records the asyncssh server process during each asyncssh run
(``DIR/CIPHER-down.txt``: self-time per function, top entries). Needs root (sshd), ssh,
sshd (apt openssh-server), sshfs. The machine is shared: print uptime beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
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

#: (cipher, MAC) pairs; the MAC is implied by the AEAD ciphers.
SUITES: list[tuple[str, str | None]] = [
    ("chacha20-poly1305@openssh.com", None),
    ("aes128-gcm@openssh.com", None),
    ("aes256-gcm@openssh.com", None),
    ("aes128-ctr", "umac-64-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
]
CHUNK = 256 << 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the asyncssh server (run as a child: python bench/ssh_ceiling.py --serve ...) -------------


async def _serve(port: int, host_key: str, authorized: str, root: str) -> None:
    import asyncssh

    async def process(p: asyncssh.SSHServerProcess) -> None:
        cmd = (p.command or "").split()
        if cmd[:1] == ["down"]:
            left, zero = int(cmd[1]), bytes(CHUNK)
            while left > 0:
                p.stdout.write(zero[:left])
                left -= CHUNK
                await p.stdout.drain()
        elif cmd[:1] == ["up"]:
            n = 0
            while data := await p.stdin.read(CHUNK):
                n += len(data)
            p.stdout.write(f"{n}\n".encode())
        p.exit(0)  # anything else ("true"): no output

    def sftp(chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(chan, chroot=root.encode())

    await asyncssh.create_server(
        None, "127.0.0.1", port, server_host_keys=[host_key], authorized_client_keys=authorized,
        process_factory=process, sftp_factory=sftp, encoding=None, allow_pty=False)
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the driver ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, base: Path, mib: int, runs: int, profile: Path | None) -> None:
        self.base, self.mib, self.runs, self.profile = base, mib, runs, profile
        self.key = base / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
                       check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host")],
                       check=True)
        (base / "authorized_keys").write_text((base / "id.pub").read_text())
        self.files = base / "files"
        self.files.mkdir()
        with open(self.files / "big", "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))

    def ssh(self, port: int, cipher: str, mac: str | None, *cmd: str) -> list[str]:
        out = ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(self.key), "-o",
               "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-c", cipher]
        if mac:
            out += ["-m", mac]
        return [*out, "root@127.0.0.1", *cmd]

    def stream(self, port: int, cipher: str, mac: str | None, server: str) -> tuple[float, float]:
        """Best-of-runs MB/s down and up through one session channel."""
        n = self.mib << 20
        down_cmd = ("down", str(n)) if server == "asyncssh" else ("head", "-c", str(n), "/dev/zero")
        up_cmd = ("up",) if server == "asyncssh" else ("cat", ">/dev/null")
        downs, ups = [], []
        setup = self.setup_time(port, cipher, mac)
        for _ in range(self.runs):
            t0 = time.monotonic()
            subprocess.run(self.ssh(port, cipher, mac, *down_cmd), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, check=True)
            downs.append(n / (time.monotonic() - t0 - setup) / 1e6)
            t0 = time.monotonic()
            with open("/dev/zero", "rb") as z:
                src = subprocess.Popen(["head", "-c", str(n)], stdin=z, stdout=subprocess.PIPE)
                subprocess.run(self.ssh(port, cipher, mac, *up_cmd), stdin=src.stdout,
                               capture_output=True, check=True)
                assert src.stdout is not None
                src.stdout.close()
                src.wait()
            ups.append(n / (time.monotonic() - t0 - setup) / 1e6)
        return max(downs), max(ups)

    def setup_time(self, port: int, cipher: str, mac: str | None) -> float:
        """The fastest of three logins running an empty command (key exchange, auth, channel
        open and close), taken off each timed stream so only the bytes are measured."""
        best = float("inf")
        for _ in range(3):
            t0 = time.monotonic()
            subprocess.run(self.ssh(port, cipher, mac, "true"), capture_output=True, check=False)
            best = min(best, time.monotonic() - t0)
        return best

    def sshfs(self, port: int, remote: str, cipher: str) -> tuple[float, float]:
        """Best-of-runs MB/s of dd through sshfs (1 MiB blocks): read of big, write with fsync."""
        mnt = self.base / "mnt"
        mnt.mkdir(exist_ok=True)
        subprocess.run(["sshfs", "-F", "/dev/null", "-p", str(port), f"root@127.0.0.1:{remote}",
                        str(mnt), "-o", f"IdentityFile={self.key},IdentitiesOnly=yes,"
                        "BatchMode=yes,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
                        f"Ciphers={cipher}"], check=True, capture_output=True)
        try:
            reads, writes = [], []
            for i in range(self.runs):
                reads.append(dd(str(mnt / "big"), "/dev/null", self.mib))
                writes.append(dd("/dev/zero", str(mnt / f"w{i}"), self.mib, "conv=fsync"))
                os.unlink(mnt / f"w{i}")
            return max(reads), max(writes)
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


def dd(src: str, dst: str, mib: int, *extra: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", f"count={mib}", *extra],
                   check=True, capture_output=True)
    return mib * (1 << 20) / (time.monotonic() - t0) / 1e6


@contextlib.contextmanager
def asyncssh_server(b: Bench) -> object:
    port = free_port()
    p = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(b.base / "host"),
                          str(b.base / "authorized_keys"), str(b.files)], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        yield port, p.pid
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)


@contextlib.contextmanager
def openssh_server(b: Bench) -> object:
    """sshd in the foreground (-D) with a config of our own: the system's is not read."""
    port = free_port()
    cfg = b.base / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {b.base / 'host'}\n"
        f"PidFile {b.base / 'sshd.pid'}\nAuthorizedKeysFile {b.base / 'authorized_keys'}\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nPrintMotd no\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    with open(b.base / "sshd.log", "wb") as log:
        p = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], stderr=log)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if p.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"sshd did not start: {(b.base / 'sshd.log').read_text()}")
        time.sleep(0.05)
    try:
        yield port, p.pid
    finally:
        p.terminate()
        p.wait(timeout=10)


@contextlib.contextmanager
def pyspy(pid: int, out: Path | None) -> object:
    if out is None:
        yield
        return
    raw = out.with_suffix(".raw")
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
                            "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
        out.write_text(top_self(raw))


def top_self(raw: Path, n: int = 15) -> str:
    """Self time per leaf function of a py-spy raw (collapsed) profile, idle excluded."""
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        c = int(count)
        total += c
        leaf[frames[-1]] += c
    lines = [f"{total} samples"]
    for name, c in leaf.most_common(n):
        lines.append(f"{100 * c / total:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        asyncio.run(_serve(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--only", choices=("stream", "sshfs"))
    args = ap.parse_args()
    for tool in ("ssh", "ssh-keygen", "sshfs", "/usr/sbin/sshd"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/ssh_ceiling: {tool} not found (apt install openssh-server sshfs)")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="grid-bench-ceiling-", dir="/var/tmp"))
    try:
        b = Bench(base, args.mib, args.runs, args.profile)
        print(f"bench/ssh_ceiling: {args.mib} MiB, best of {args.runs}, MB/s; "
              f"{os.getloadavg()[0]:.1f} load")
        if args.only != "sshfs":
            print(f"{'cipher':32}{'MAC':32}{'asyncssh down':>14}{'up':>8}{'OpenSSH down':>14}{'up':>8}")
            for cipher, mac in SUITES:
                with asyncssh_server(b) as (port, pid):
                    prof = args.profile / f"{cipher.split('@')[0]}-{(mac or 'aead').split('@')[0]}.txt" \
                        if args.profile else None
                    with pyspy(pid, prof):
                        a = b.stream(port, cipher, mac, "asyncssh")
                with openssh_server(b) as (port, _):
                    o = b.stream(port, cipher, mac, "openssh")
                print(f"{cipher:32}{mac or '(AEAD)':32}{a[0]:14.0f}{a[1]:8.0f}{o[0]:14.0f}{o[1]:8.0f}",
                      flush=True)
        if args.only != "stream":
            print(f"sshfs, dd 1 MiB blocks: {'server':40}{'read':>8}{'write':>8}")
            for cipher in ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"):
                with asyncssh_server(b) as (port, pid):
                    prof = args.profile / f"sshfs-{cipher.split('@')[0]}.txt" if args.profile else None
                    with pyspy(pid, prof):
                        r = b.sshfs(port, "/", cipher)
                print(f"{'':24}{'asyncssh SFTPServer, ' + cipher.split('@')[0]:40}{r[0]:8.0f}{r[1]:8.0f}",
                      flush=True)
                with openssh_server(b) as (port, _):
                    r = b.sshfs(port, str(b.files), cipher)
                print(f"{'':24}{'OpenSSH sftp-server, ' + cipher.split('@')[0]:40}{r[0]:8.0f}{r[1]:8.0f}",
                      flush=True)
        print(f"load after: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
