"""Mounting and unmounting a FUSE channel with fusermount3, without libfuse.

``fusermount3`` is the setuid helper every FUSE filesystem uses: it checks that the calling
user may mount at the mountpoint, opens /dev/fuse, mounts, and hands the open descriptor back
over a Unix socket named by the ``_FUSE_COMMFD`` environment variable (SCM_RIGHTS). Running
it as the user who asked for the mount keeps the kernel's and fusermount's rules (a user
mounts only on a directory they may write, ``allow_other`` only where /etc/fuse.conf says
``user_allow_other``) whoever serves the channel afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence


class MountError(OSError):
    """fusermount3 refused or failed; the message is its own."""


def mount(mountpoint: str, options: Sequence[str]) -> int:
    """Mount a FUSE filesystem at *mountpoint*; return the channel's descriptor (ours)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        proc = subprocess.Popen(
            ["fusermount3", "-o", ",".join(options), "--", mountpoint],
            env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        theirs.close()
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
        except OSError:
            fds = []
        _, err = proc.communicate(timeout=60)
        if not fds:
            why = err.decode(errors="replace").strip().splitlines()
            raise MountError(f"cannot mount {mountpoint}: "
                             + (why[-1].removeprefix("fusermount3: ") if why else
                                f"fusermount3 exit {proc.returncode}"))
        for extra in fds[1:]:
            os.close(extra)
        if proc.returncode != 0:
            os.close(fds[0])
            raise MountError(f"cannot mount {mountpoint}: fusermount3 exit {proc.returncode}")
        return fds[0]
    finally:
        ours.close()
        if theirs.fileno() >= 0:
            theirs.close()


def unmount(mountpoint: str, *, lazy: bool = False) -> str | None:
    """Unmount *mountpoint*; None when done, else fusermount3's reason."""
    r = subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), "--", mountpoint],
                       capture_output=True, text=True, check=False)
    if r.returncode == 0:
        return None
    lines = r.stderr.strip().splitlines()
    return lines[-1].removeprefix("fusermount3: ") if lines else f"fusermount3 exit {r.returncode}"
