#!/usr/bin/env bash
# Set up everything grid needs on a Debian machine, as root: Debian packages, then a virtual
# environment (.venv) with grid and its test tools installed. Idempotent and quiet when done.
set -euo pipefail
cd "$(dirname "$0")/.."

# restic and borgbackup are the peers bench/import_bench.py measures grid against.
DEBS=(python3 python3-venv python3-dev gcc pkg-config fuse3 libfuse3-dev diod restic borgbackup
      python3-llfuse openssh-client sshfs openssh-server)
# borg mount needs llfuse; SSH tests use the last three (openssh-server: OpenSSH's sshd in front
# of grid's SFTP server, docs/ssh.md; the tests run their own `sshd -D -f`, never the system's)
missing=()
for p in "${DEBS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Installing packages must not start services (openssh-server would start the system's
    # sshd): a policy-rc.d that refuses, for the length of the install, unless one exists.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
    fi
    rc=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    [ -z "$own_policy" ] || rm -f "$policy"
    ((rc == 0)) || exit "$rc"
fi

# Users mount their spawns themselves: /dev/fuse is 0666 on Debian (udev's default rule), but
# a machine without udev (containers, microVMs) may leave it 0600.
if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
    echo "setup: making /dev/fuse usable by every user (mode 0666, as udev does)" >&2
    chmod 0666 /dev/fuse
fi

# A user's `grid mount` admits root too (and the adapter refuses everyone else) only when
# users may mount with allow_other.
if [ -f /etc/fuse.conf ] && ! grep -q '^[[:space:]]*user_allow_other' /etc/fuse.conf; then
    echo "setup: enabling user_allow_other in /etc/fuse.conf" >&2
    sed -i '$a user_allow_other' /etc/fuse.conf  # a line of its own, newline or not
fi

# Debian's own interpreter, not whatever python3 a login shell finds first (pyenv and the like
# live in a home other users cannot enter, and grid's mount processes run as those users).
PY=${PYTHON:-/usr/bin/python3}
want_home=$(dirname "$(readlink -f "$PY")")
if [ -f .venv/pyvenv.cfg ] && ! grep -qx "home = $want_home" .venv/pyvenv.cfg \
        && ! grep -qx "home = $(dirname "$PY")" .venv/pyvenv.cfg; then
    echo "setup: .venv was made with another interpreter; remaking it with $PY" >&2
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)" >&2
    "$PY" -m venv .venv
fi
stamp=.venv/.grid-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing grid and its dependencies into .venv" >&2
    # pip's and setuptools' chatter (an editable install's notes) goes to a log, shown only
    # when the install fails
    if ! { .venv/bin/python -m pip install -q --disable-pip-version-check -U pip \
           && .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'; } \
           > .venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        echo "setup: installing into .venv failed (log above, also in .venv/pip.log)" >&2
        exit 1
    fi
    .venv/bin/python -c 'import grid.cli.main, store.local, blake3, lmdb, zstandard' 
    touch "$stamp"
fi
