"""A spawn writer for the crash test, killed with SIGKILL at random moments.

Each operation is one engine call. Before it, the writer prints
``BEGIN <name> <digest before> <digest after>`` and after it ``DONE``, flushing each line, so
the test knows every file's state after the last completed operation and the two states the
file of an interrupted operation may be in. Every few operations it calls fsync.
"""

from __future__ import annotations

import hashlib
import random
import sys

from spawn.cred import ROOT
from spawn.spawner import Spawner
from store.local import LocalStore


def digest(b: bytes | bytearray | None) -> str:
    return "-" if b is None else hashlib.blake2b(bytes(b), digest_size=16).hexdigest()


def main() -> None:
    store_dir, spawns_dir, sid, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rng = random.Random(seed)
    store = LocalStore.open(store_dir)
    e = Spawner(store, spawns_dir).engine(sid)
    files = {n: bytearray(e.read(ROOT, a.ino, 0, a.size)) for n, a in e.readdir(ROOT, 1) if n.startswith(b"w")}
    out = sys.stdout
    n_ops = 0
    while True:
        name = b"w%d" % rng.randrange(6)
        old = files.get(name)
        kind = rng.random()
        if old is None:
            op, new = "create", bytearray()
        elif kind < 0.2:
            op, new = "truncate", old[: len(old) // 2]
        elif kind < 0.3:
            op, new = "unlink", None
        else:
            op = "write"
            data = rng.randbytes(rng.randrange(1, 150_000))
            off = rng.randrange(0, len(old) + 1)
            new = bytearray(old)
            if off + len(data) > len(new):
                new.extend(bytes(off + len(data) - len(new)))
            new[off : off + len(data)] = data
        out.write(f"BEGIN {name.decode()} {digest(old)} {digest(new)}\n")
        out.flush()
        if op == "create":
            e.create(ROOT, 1, name, 0o644)
        elif op == "unlink":
            e.unlink(ROOT, 1, name)
        elif op == "truncate":
            e.setattr(ROOT, e.lookup(ROOT, 1, name).ino, size=len(new))
        else:
            e.write(ROOT, e.lookup(ROOT, 1, name).ino, off, data)
        if new is None:
            files.pop(name)
        else:
            files[name] = new
        out.write("DONE\n")
        out.flush()
        n_ops += 1
        if n_ops % 5 == 0:
            e.fsync(ROOT)


if __name__ == "__main__":
    main()
