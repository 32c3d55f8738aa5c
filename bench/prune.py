"""bench/prune: `grid forget` + `grid prune` beside restic and borg, in one run, on the same
30 snapshots (issue 16).

    .venv/bin/python bench/prune.py [--mib 1024] [--snapshots 30] [--keep-last 5]
                                    [--only grid,restic,borg] [--grid-segments 0,16]
                                    [--workdir /var/tmp/grid-bench-prune] [--keep]
                                    [--out bench/out/prune.json]

Data: the big tree of bench/gentree.py (``--mib`` MiB of 4 KiB-4 MiB files, half random and
half zeros, 30 % duplicates; seeded), then ``--snapshots`` versions of it: between two
versions ``change_files`` rewrites 1 % of the files (at least one), chosen with a seed per
version, each with new half-random content of the same size (in place, same inode). A
duplicate's other copies keep the old content. Every tool sees exactly the same versions:
before each tool the tree is put back to a pristine copy and the changes are replayed.

For each tool:
  1. a fresh repository; import version 1..N in order (grid: ``grid import TREE bench``, one
     name with N records; restic: ``restic backup``, parent found by host and path; borg:
     ``borg create REPO::sNN``). Ingest is timed and recorded, but is not part of the figure;
  2. store bytes before (apparent size of every file under the repository; grid: under
     ``$GRID_HOME/store``);
  3. the measured step, each command run with ``os.sync()`` before it:
       grid:   ``grid stop`` (not timed; import starts no daemon: prune runs in its own process,
               as it does whenever no daemon runs),
               ``grid forget bench --keep-last K --json``, ``grid prune --json``;
       restic: ``restic forget --keep-last K --prune``;
       borg:   ``borg prune --keep-last K REPO``, ``borg compact REPO``;
     wall time = the sum of the tool's commands; peak RSS = the largest ``ru_maxrss`` of them
     (``os.wait4`` on each command: the process and its waited-for children);
  4. store bytes after; reclaimed = before - after.
Each tool's default threshold is used: restic ``--max-unused 5%``, borg compact
``--threshold 10``, grid ``--max-unused 10``.

Grid's segments are 16 MiB by default (store.local.DEFAULT_SEGMENT_SIZE); prune seals the
segment being appended to when it starts, so even a store of one segment is compacted.
``--grid-segments`` runs grid once per listed segment size in MiB (0 = grid's default, written
to ``store/segment_size`` right after ``grid init`` otherwise), so the table shows the default
beside other sizes (the old default was 1 GiB).

Results: a table on stdout and ``bench/out/prune.json`` (``--out``). The work directory is
removed at the end unless ``--keep``. Page cache warm, as in bench/import.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gentree
from import_bench import (
    Borg,
    Grid,
    Measured,
    Restic,
    StepFailed,
    Tool,
    dir_bytes,
    machine_info,
    prepare_workdir,
    quick,
    run_measured,
    save_results,
    skipped,
)

HERE = Path(__file__).resolve().parent
MARKER = ".grid-bench-prune"
MIB = 1 << 20
TOOLS = ("grid", "restic", "borg")
CHANGE_SEED = 1600


def change_files(root: Path, fraction: float, seed: int) -> tuple[int, int]:
    """Rewrite ``fraction`` of the files under ``root`` (at least one) with new half-random
    content of the same size, in place; return (files changed, bytes rewritten)."""
    files = list(gentree.walk_files(root))
    k = max(1, round(fraction * len(files)))
    rng = random.Random(seed)
    nbytes = 0
    for idx in sorted(rng.sample(range(len(files)), k)):
        path = files[idx]
        size = path.stat().st_size
        data, _ = gentree.half_random(f"change:{seed}:{idx}", size)
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()
        nbytes += size
    return k, nbytes


class GridSeg(Grid):
    """Grid with an optional segment size (MiB; 0 = the default), set after ``grid init``."""

    def __init__(self, work: Path, exe: str, seg_mib: int) -> None:
        self.seg_mib = seg_mib
        self.name = "grid" if seg_mib == 0 else f"grid-seg{seg_mib}"
        super().__init__(work, exe)

    def init(self, repo: Path) -> Measured:
        m = super().init(repo)
        if m.rc == 0 and self.seg_mib:
            (repo / "store" / "segment_size").write_text(f"{self.seg_mib * MIB}\n")
        return m

    def settings(self, repo: Path) -> str:
        seg = "16 MiB (default)" if not self.seg_mib else f"{self.seg_mib} MiB (store/segment_size)"
        return super().settings(repo) + f"; segments {seg}; prune --max-unused 10 (default)"


def snapshot_name(tool: Tool, i: int) -> str:
    """grid: one name whose history holds every snapshot; restic tag / borg archive: sNN."""
    return "bench" if isinstance(tool, Grid) else f"s{i:02d}"


def forget_and_prune(tool: Tool, repo: Path, keep: int) -> list[Measured]:
    """The measured step (see module doc): the tool's commands, in order, each checked."""
    env = tool.env(repo)
    logs = tool.logs
    cmds: list[list[str]]
    if isinstance(tool, Grid):
        quick([tool.exe, "stop"], env)
        cmds = [[tool.exe, "forget", "bench", "--keep-last", str(keep), "--json"],
                [tool.exe, "prune", "--json"]]
    elif isinstance(tool, Restic):
        cmds = [["restic", "forget", "--keep-last", str(keep), "--prune"]]
    else:
        cmds = [["borg", "prune", "--keep-last", str(keep), str(repo)],
                ["borg", "compact", str(repo)]]
    out = []
    for n, cmd in enumerate(cmds):
        os.sync()
        out.append(run_measured(cmd, env, logs, f"prune-{n}-{cmd[1]}").check())
    return out


def bench_tool(tool: Tool, work: Path, tree: Path, orig: Path, snapshots: int,
               fraction: float, keep: int) -> dict[str, Any]:
    res: dict[str, Any] = {"tool": tool.name, "available": True, "version": tool.version()}
    repo = work / f"{tool.name}-repo"
    try:
        gentree.restore_from(tree, orig)
        tool.init(repo).check()
        res["settings"] = tool.settings(repo)
        store = tool.store_dir(repo)
        ingest = []
        changes = []
        for i in range(1, snapshots + 1):
            if i > 1:
                changes.append(change_files(tree, fraction, CHANGE_SEED + i))
            os.sync()
            m, _ = tool.backup(repo, tree, snapshot_name(tool, i))
            ingest.append({"seconds": round(m.seconds, 3), "peak_rss_kib": m.maxrss_kib,
                           "store_bytes": dir_bytes(store)[0]})
        res["ingest"] = ingest
        res["ingest_seconds"] = round(sum(x["seconds"] for x in ingest), 2)
        res["changes"] = [{"files": f, "bytes": b} for f, b in changes]
        print(f"  {tool.name}: ingested {snapshots} snapshots in {res['ingest_seconds']:.1f} s",
              flush=True)
        before = dir_bytes(store)
        runs = forget_and_prune(tool, repo, keep)
        after = dir_bytes(store)
        res["prune"] = {
            "seconds": round(sum(m.seconds for m in runs), 3),
            "peak_rss_kib": max(m.maxrss_kib for m in runs),
            "store_before": before[0], "store_after": after[0],
            "reclaimed": before[0] - after[0],
            "disk_before": before[1], "disk_after": after[1],
            "commands": [{"cmd": " ".join(m.cmd), "seconds": round(m.seconds, 3),
                          "peak_rss_kib": m.maxrss_kib, "stdout_tail": m.stdout[-4000:],
                          "stderr_tail": m.stderr[-2000:]} for m in runs],
        }
        p = res["prune"]
        print(f"  {tool.name}: forget+prune {p['seconds']:.1f} s, reclaimed "
              f"{p['reclaimed'] / MIB:.1f} MiB of {before[0] / MIB:.1f} MiB", flush=True)
        if isinstance(tool, Grid):
            try:
                p["grid_report"] = json.loads(runs[-1].stdout)
            except ValueError:
                pass
            r = quick([tool.exe, "store", "check"], tool.env(repo))
            res["store_check_rc"] = r.returncode
    except StepFailed as e:
        res["error"] = str(e)
        print(f"  {tool.name}: error: {e}", flush=True)
    return res


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.1f}"


def print_table(doc: dict[str, Any]) -> None:
    t = doc["tree"]
    print()
    print(f"bench/prune  {doc['date']}  {doc['machine']['cpus']} CPUs, "
          f"{doc['machine']['mem_gib']:.0f} GiB; load before: {doc['machine']['loadavg_before']}")
    print(f"tree: {t['logical_bytes'] / MIB:.0f} MiB, {t['files']} files; {doc['snapshots']} "
          f"snapshots, {doc['change_fraction'] * 100:g} % of the files rewritten between two; "
          f"keep last {doc['keep_last']}.  MiB = 2^20 B; store = apparent bytes")
    head = ["tool", "ingest s", "forget+prune s", "peak RSS MiB", "store before MiB",
            "store after MiB", "reclaimed MiB", "reclaimed %"]
    body = []
    for r in doc["results"]:
        if not r.get("available"):
            body.append([r["tool"], "skipped: " + r["reason"]])
        elif "prune" not in r:
            body.append([r["tool"], "error: " + r.get("error", "?")])
        else:
            p = r["prune"]
            pct = 100 * p["reclaimed"] / p["store_before"] if p["store_before"] else 0
            body.append([r["tool"], f"{r['ingest_seconds']:.1f}", f"{p['seconds']:.2f}",
                         _mib(p["peak_rss_kib"] * 1024), _mib(p["store_before"]),
                         _mib(p["store_after"]), _mib(p["reclaimed"]), f"{pct:.1f}"])
    full = [b for b in body if len(b) == len(head)]
    widths = [max([len(h)] + [len(b[i]) for b in full]) for i, h in enumerate(head)]
    print("  " + "  ".join(h.rjust(w) if i else h.ljust(w)
                           for i, (h, w) in enumerate(zip(head, widths, strict=True))))
    for b in body:
        if len(b) != len(head):
            print(f"  {b[0].ljust(widths[0])}  {b[1]}")
            continue
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(b, widths, strict=True))))
    for k, v in doc.get("goal", {}).items():
        print(f"goal ({k}): reclaimed {v['reclaimed_ratio']} x restic's "
              f"({'met' if v['reclaimed_met'] else 'NOT met'}), time {v['time_ratio']} x restic's "
              f"({'met' if v['time_met'] else 'NOT met'})")
    print("\nsettings:")
    for r in doc["results"]:
        if r.get("available"):
            print(f"  {r['tool']:<12} {r['version'].splitlines()[0]}; {r.get('settings', '?')}")


def goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 16: reclaim at least what restic does, in at most its time; per grid variant."""
    by = {r["tool"]: r for r in rows if "prune" in r}
    if "restic" not in by:
        return {}
    rp = by["restic"]["prune"]
    out = {}
    for name, r in by.items():
        if not name.startswith("grid"):
            continue
        gp = r["prune"]
        rr = gp["reclaimed"] / rp["reclaimed"] if rp["reclaimed"] else None
        tr = gp["seconds"] / rp["seconds"]
        out[name] = {"reclaimed_ratio": None if rr is None else round(rr, 2),
                     "reclaimed_met": gp["reclaimed"] >= rp["reclaimed"],
                     "time_ratio": round(tr, 2), "time_met": tr <= 1}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=float, default=1024, help="tree size in MiB (issue: 1024)")
    ap.add_argument("--snapshots", type=int, default=30)
    ap.add_argument("--keep-last", type=int, default=5)
    ap.add_argument("--change", type=float, default=0.01,
                    help="fraction of the files rewritten between two snapshots")
    ap.add_argument("--only", default=",".join(TOOLS))
    ap.add_argument("--grid-segments", default="0,16",
                    help="grid runs, one per segment size in MiB (0 = the default, 16 MiB)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default="/var/tmp/grid-bench-prune")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=str(HERE / "out" / "prune.json"))
    ap.add_argument("--grid", default=str(HERE.parent / ".venv" / "bin" / "grid"))
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in TOOLS]
    if bad:
        ap.error(f"--only: unknown tool(s) {', '.join(bad)}")
    segs = [int(s) for s in args.grid_segments.split(",") if s.strip()]

    work = Path(args.workdir).resolve()
    prepare_workdir(work, MARKER, "bench/prune")
    tools: list[Tool] = []
    for n in names:
        if n == "grid":
            tools.extend(GridSeg(work, args.grid, s) for s in segs)
        else:
            tools.append(Restic(work) if n == "restic" else Borg(work))

    tree, orig = work / "tree", work / "orig"
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        print(f"bench/prune: generating a {args.mib:g} MiB tree in {work}", flush=True)
        info = gentree.make_big(tree, args.mib / 1024, args.seed)
        shutil.copytree(tree, orig)
        rows: list[dict[str, Any]] = []
        for tool in tools:
            if (row := skipped(tool)) is not None:
                rows.append(row)
                continue
            rows.append(bench_tool(tool, work, tree, orig, args.snapshots, args.change,
                                   args.keep_last))
            if not args.keep:
                for suffix in ("repo", "repo-cache"):
                    shutil.rmtree(work / f"{tool.name}-{suffix}", ignore_errors=True)
        doc: dict[str, Any] = {
            "benchmark": "bench/prune",
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(loadavg_before=load_before, uptime_after=subprocess.run(
                ["uptime"], capture_output=True, text=True).stdout.strip()),
            "tree": {**info.as_dict(), "mib": args.mib},
            "snapshots": args.snapshots, "keep_last": args.keep_last,
            "change_fraction": args.change, "change_seed": CHANGE_SEED,
            "page_cache": "warm (tree just written; cache not dropped)",
            "results": rows,
        }
        doc["goal"] = goal(rows)
        save_results(doc, args.out, print_table)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
