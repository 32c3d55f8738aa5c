"""OpenSSH's ``Subsystem sftp`` command for grid: hand the session to the node daemon.

    Subsystem sftp /path/to/python -m grid.sftp_bridge HOME/run/sftp.sock

sshd runs this as the user it authenticated, with the decrypted SFTP stream on stdin and
stdout. The bridge passes those two descriptors to the daemon's SFTP socket (SCM_RIGHTS;
grid.daemon.sftp_service), which learns the user from the kernel (SO_PEERCRED) and serves
the stream itself; the bridge copies no byte. It keeps no copy of the descriptors (so sshd
sees the session end when the daemon ends it) and exits when the daemon closes the socket.

Kept to the standard library and out of the grid package's imports, so that a session
starts in the interpreter's own start-up time (40-150 ms on the loaded test VM). Exit status
0 when the daemon served the session, 1 (with a message on stderr, which sshd passes to the client)
when it could not be reached, 2 for a wrong command line.
"""

from __future__ import annotations

import os
import socket
import sys

HELLO = b"grid-sftp 1"  # grid.daemon.sftp_service.HELLO


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m grid.sftp_bridge HOME/run/sftp.sock", file=sys.stderr)
        return 2
    path = argv[0]
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        socket.send_fds(sock, [HELLO], [0, 1])
    except OSError as e:
        print(f"grid sftp: cannot reach the grid daemon at {path}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)  # the daemon holds the session's ends now; ours would keep sshd
    os.dup2(devnull, 1)  # from seeing it close
    while sock.recv(4096):  # the daemon says nothing: it closes when the session is over
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
