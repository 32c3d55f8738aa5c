#!/usr/bin/env bash
# Set up, then run grid's main job on the embedded default (a local single-node grid in the
# default grid home, or $GRID_HOME): make a sample tree, import it, spawn it, mount the spawn,
# change it, save it as a new snapshot, diff, export the snapshot and compare.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

grid init
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "demo: making a sample tree in $work/sample" >&2
python3 - "$work/sample" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(7)
for d in range(4):
    os.makedirs(f"{root}/dir{d}", exist_ok=True)
    for f in range(8):
        n = rng.randrange(1, 3 << 20)
        with open(f"{root}/dir{d}/file{f}.bin", "wb") as fh:
            fh.write(rng.randbytes(n // 2) + bytes(n - n // 2))
PY
name=demo-$(date +%Y%m%d-%H%M%S)
echo "demo: importing the sample tree as '$name'" >&2
grid import "$work/sample" "$name"
grid ls -l "$name"

echo "demo: spawning '$name' (the node daemon starts if it is not running) and mounting it" >&2
mkdir "$work/mnt"
id=$(grid spawn -q "$name" --mount "$work/mnt")
trap 'grid unmount --lazy "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
ls -l "$work/mnt"
echo "demo: changing the spawn: one file appended to, one added, one removed" >&2
echo "a change" >> "$work/mnt/dir0/file0.bin"
echo "new file" > "$work/mnt/NEW"
rm "$work/mnt/dir3/file7.bin"
grid spawns
echo "demo: saving spawn $id as the next snapshot of '$name' (only changed blocks are written)" >&2
grid save "$id"
grid history "$name"
first=$(grid history "$name" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["score"])')
grid diff "$name@$first" "$name"

echo "demo: exporting the saved snapshot and comparing it with the mounted spawn" >&2
grid export "$name" "$work/restored"
diff -r "$work/mnt" "$work/restored" && echo "demo: the saved snapshot is identical to the spawn" >&2
grid unmount "$work/mnt"
grid kill --force "$id"
grid store stat
echo "demo: done; the node daemon keeps running (grid stop ends it)" >&2
