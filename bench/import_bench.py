"""bench/import: `grid import` side by side with restic and borg, in one run, on the same trees.

    .venv/bin/python bench/import_bench.py [--only grid,restic,borg] [--gib 1]
                                           [--workdir /var/tmp/grid-bench-import] [--keep]

Data (bench/gentree.py, seeded, so every tool and every run sees the same bytes):
  * big tree: ``--gib`` GiB of 4 KiB-4 MiB files (log-uniform), each half random and half zeros,
    30 % of the files exact duplicates of others, in a few hundred directories;
  * small tree: 20,000 x 4 KiB random files in 100 directories.

For each tool, in order:
  1. a fresh repository (grid home, restic repo, borg repo) and a fresh cache for it;
  2. import the big tree: wall time, MB/s = the tree's logical bytes (duplicates included) /
     wall time (MB = 10^6 bytes), peak RSS, store bytes;
  3. change 1 % of the tree's bytes in place (``mutate_inplace``: one run of up to 64 KiB, or the
     whole file if smaller, in each of about 12 % of the files) and import again: time, store bytes added, added / changed;
  4. put the changed files back as they were (from a pristine copy, rewritten in place so the
     inodes stay) and import that ("bench2r": recorded in the JSON as ``restored``, not in the
     table), so that the next snapshot's parent differs from it only by the insertions; then
     insert 100 random bytes into 1 % of the files (``insert_bytes``) and import again: time,
     store bytes added, added / changed (changed = 100 bytes per file);
  5. put the tree back, then import the small tree into another fresh repository: time,
     files/s, MB/s, peak RSS, store bytes.
Each change is made with the same seed, so every tool sees exactly the same changes.

How things are measured:
  * time: wall clock around the one command (``grid import``, ``restic backup``,
    ``borg create``); repository creation is not counted. ``os.sync()`` runs before each
    measured command so that dirty pages from generating or changing the tree are not flushed
    on the tool's time.
  * peak RSS: ``ru_maxrss`` from ``os.wait4`` on the tool's process (the largest of it and its
    waited-for children). Every tool here is one process (threads / goroutines).
  * store bytes: the apparent size (sum of ``st_size``) of every file under the repository
    (restic, borg) or ``$GRID_HOME/store`` (grid); disk usage (``st_blocks``) is kept in the
    JSON too. Tool-side caches live outside the store (``RESTIC_CACHE_DIR``, ``BORG_BASE_DIR``,
    the rest of the grid home) and are not counted; their sizes are in the JSON.
    "Added" is the growth of store bytes over one import: new data, plus each tool's metadata
    (restic: tree blobs, index, snapshot; borg: archive metadata, rewritten index and hints;
    grid: directory and inode blocks, root block).
  * Each tool's own count is kept as well: restic's ``data_added`` (from ``backup --json``),
    borg's archive ``deduplicated_size`` (from ``create --json``), grid's ``store stat --json``.
  * Page cache: warm. The trees were just written, and the machine has far more memory than the
    data; the cache is not dropped between steps (that needs root and is not reliable in a
    container), so every tool reads from memory: the figures are the tools' CPU and write costs.

Tool settings (defaults, noted in the JSON): restic repository v2 with compression ``auto``
(zstd) and encryption (which restic cannot turn off); borg ``--encryption=none`` and its default
``lz4`` compression and buzhash chunker; grid as configured by ``grid init``. ``grid import``
is used when ``grid import --help`` succeeds; otherwise grid gets a "not available" row and the
run goes on with the others.

Results: a table on stdout and ``bench/out/import.json`` (``--out``). The work directory is
removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gentree

HERE = Path(__file__).resolve().parent
MARKER = ".grid-bench-import"
MIB = 1 << 20
TOOLS = ("grid", "restic", "borg")
MUTATE_SEED = 101
INSERT_SEED = 202


class StepFailed(Exception):
    """A tool command exited non-zero (message: the command and the tail of its stderr)."""


@dataclass
class Measured:
    """One command's run: wall seconds, peak RSS (KiB), exit code and output."""

    cmd: list[str]
    seconds: float
    maxrss_kib: int
    rc: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)

    def check(self) -> Measured:
        if self.rc != 0:
            tail = "\n".join((self.stderr or self.stdout).strip().splitlines()[-8:])
            raise StepFailed(f"{' '.join(self.cmd)} exited {self.rc}: {tail}")
        return self


def run_measured(cmd: list[str], env: dict[str, str], logdir: Path, tag: str) -> Measured:
    """Run ``cmd``; time it and take its rusage from ``os.wait4`` (ru_maxrss, KiB on Linux).
    stdout and stderr go to files in ``logdir`` (no pipes to drain while timing)."""
    logdir.mkdir(parents=True, exist_ok=True)
    out_p, err_p = logdir / f"{tag}.out", logdir / f"{tag}.err"
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(cmd, secs, ru.ru_maxrss, proc.returncode,
                    out_p.read_text(errors="replace"), err_p.read_text(errors="replace"))


def quick(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a short helper command (versions, help, stats); never raises on exit status."""
    return subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def dir_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, disk bytes) of every file under ``path``, hard links counted once."""
    apparent = disk = 0
    seen: set[tuple[int, int]] = set()
    if not path.exists():
        return 0, 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            apparent += st.st_size
            disk += st.st_blocks * 512
    return apparent, disk


# --------------------------------------------------------------------------------------------
# Tools


class Tool:
    """One backup tool: how to make a repository, import a tree into it, and size it."""

    name = "?"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.logs = work / "logs" / self.name

    def unavailable(self) -> str | None:
        """None if the tool can run here, else why not."""
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def settings(self, repo: Path) -> str:
        """The settings in force (defaults unless said), for the record."""
        raise NotImplementedError

    def env(self, repo: Path) -> dict[str, str]:
        raise NotImplementedError

    def cache_dir(self, repo: Path) -> Path:
        return repo.with_name(repo.name + "-cache")

    def store_dir(self, repo: Path) -> Path:
        return repo

    def init(self, repo: Path) -> Measured:
        raise NotImplementedError

    def backup(self, repo: Path, src: Path, name: str) -> tuple[Measured, dict[str, Any]]:
        """Import ``src`` as snapshot ``name``; return the run and the tool's own report."""
        raise NotImplementedError

    def cache_bytes(self, repo: Path) -> int:
        return dir_bytes(self.cache_dir(repo))[0]


class Grid(Tool):
    """``GRID_HOME=<repo> grid init``; ``grid import SRC NAME``; ``grid store stat --json``."""

    name = "grid"

    def __init__(self, work: Path, exe: str) -> None:
        super().__init__(work)
        self.exe = exe

    def env(self, repo: Path) -> dict[str, str]:
        return {**os.environ, "GRID_HOME": str(repo)}

    def unavailable(self) -> str | None:
        if not (os.access(self.exe, os.X_OK) or shutil.which(self.exe)):
            return f"grid not found at {self.exe}"
        r = quick([self.exe, "import", "--help"])
        if r.returncode != 0:
            return "grid import not available"
        return None

    def version(self) -> str:
        r = quick([self.exe, "--version"])
        return (r.stdout or r.stderr).strip()

    def settings(self, repo: Path) -> str:
        return "grid defaults (grid init): CDC leaves, zstd when it pays, all-zero leaves not stored"

    def store_dir(self, repo: Path) -> Path:
        return repo / "store"

    def cache_bytes(self, repo: Path) -> int:
        return dir_bytes(repo)[0] - dir_bytes(repo / "store")[0]

    def init(self, repo: Path) -> Measured:
        return run_measured([self.exe, "init"], self.env(repo), self.logs, f"{repo.name}-init")

    def backup(self, repo: Path, src: Path, name: str) -> tuple[Measured, dict[str, Any]]:
        m = run_measured([self.exe, "import", str(src), name], self.env(repo), self.logs,
                         f"{repo.name}-{name}").check()
        r = quick([self.exe, "store", "stat", "--json"], self.env(repo))
        report: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            report = {"store_stat": json.loads(r.stdout)}
        # stdout: the root score; stderr: the one-line summary (files read vs unchanged, ...).
        report["root"] = (m.stdout.strip().splitlines() or [""])[-1]
        report["summary"] = (m.stderr.strip().splitlines() or [""])[-1]
        return m, report


class Restic(Tool):
    """``restic init``; ``restic backup --json --quiet SRC`` (later runs find their parent
    snapshot by host and path, and skip files whose mtime, ctime, size and inode match)."""

    name = "restic"
    PASSWORD = "grid-bench"

    def env(self, repo: Path) -> dict[str, str]:
        return {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": self.PASSWORD,
                "RESTIC_CACHE_DIR": str(self.cache_dir(repo))}

    def unavailable(self) -> str | None:
        return None if shutil.which("restic") else "restic not installed (apt-get install restic)"

    def version(self) -> str:
        return quick(["restic", "version"]).stdout.strip()

    def no_scan(self) -> bool:
        """``--no-scan`` (restic >= 0.15) skips the size pre-scan; use it where it exists."""
        return "--no-scan" in quick(["restic", "backup", "--help"]).stdout

    def settings(self, repo: Path) -> str:
        r = quick(["restic", "cat", "config"], self.env(repo))
        ver = "?"
        with contextlib.suppress(ValueError, KeyError):
            ver = str(json.loads(r.stdout)["version"])
        return (f"repository v{ver}, compression auto (zstd), AES-256-CTR + Poly1305 (always on), "
                f"CDC 512 KiB-8 MiB (avg 1 MiB){', --no-scan' if self.no_scan() else ''}")

    def init(self, repo: Path) -> Measured:
        return run_measured(["restic", "init"], self.env(repo), self.logs, f"{repo.name}-init")

    def backup(self, repo: Path, src: Path, name: str) -> tuple[Measured, dict[str, Any]]:
        cmd = ["restic", "backup", "--json", "--quiet", "--tag", name]
        if self.no_scan():
            cmd.append("--no-scan")
        m = run_measured([*cmd, str(src)], self.env(repo), self.logs,
                         f"{repo.name}-{name}").check()
        summary: dict[str, Any] = {}
        for line in m.stdout.splitlines():
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if isinstance(d, dict) and d.get("message_type") == "summary":
                    summary = d
        return m, {"summary": summary}


class Borg(Tool):
    """``borg init --encryption=none REPO``; ``borg create --json REPO::NAME SRC`` (borg 1.2:
    default lz4 compression, buzhash chunker, files cache keyed by path, ctime,size,inode)."""

    name = "borg"

    def env(self, repo: Path) -> dict[str, str]:
        return {**os.environ, "BORG_BASE_DIR": str(self.cache_dir(repo)),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def unavailable(self) -> str | None:
        return None if shutil.which("borg") else "borg not installed (apt-get install borgbackup)"

    def version(self) -> str:
        return quick(["borg", "--version"]).stdout.strip()

    def settings(self, repo: Path) -> str:
        return ("encryption none, compression lz4 (default), buzhash chunker 19,23,21,4095 "
                "(512 KiB-8 MiB, ~2 MiB; default), files cache ctime,size,inode (default)")

    def init(self, repo: Path) -> Measured:
        return run_measured(["borg", "init", "--encryption=none", str(repo)], self.env(repo),
                            self.logs, f"{repo.name}-init")

    def backup(self, repo: Path, src: Path, name: str) -> tuple[Measured, dict[str, Any]]:
        m = run_measured(["borg", "create", "--json", f"{repo}::{name}", str(src)],
                         self.env(repo), self.logs, f"{repo.name}-{name}").check()
        report: dict[str, Any] = {}
        with contextlib.suppress(ValueError, KeyError):
            d = json.loads(m.stdout)
            report = {"archive_stats": d["archive"]["stats"], "cache_stats": d["cache"]["stats"]}
        return m, report


# --------------------------------------------------------------------------------------------
# The benchmark


def own_added(tool: str, report: dict[str, Any], before: dict[str, Any] | None) -> int | None:
    """The tool's own count of bytes added by one import (see module doc), if it gives one."""
    try:
        if tool == "restic":
            return int(report["summary"]["data_added"])
        if tool == "borg":
            return int(report["archive_stats"]["deduplicated_size"])
        if tool == "grid" and before is not None:
            return int(report["store_stat"]["stored_bytes"]) - int(
                before["store_stat"]["stored_bytes"])
    except (KeyError, TypeError, ValueError):
        return None
    return None


def import_figures(m: Measured, files: int, logical: int, store: tuple[int, int],
                   report: dict[str, Any]) -> dict[str, Any]:
    return {"seconds": round(m.seconds, 3), "mb_s": round(logical / m.seconds / 1e6, 1),
            "files_s": round(files / m.seconds, 1), "peak_rss_kib": m.maxrss_kib,
            "store_bytes": store[0], "store_disk_bytes": store[1], "tool_report": report}


def reimport_figures(m: Measured, changed: int, before: tuple[int, int], after: tuple[int, int],
                     report: dict[str, Any], own: int | None) -> dict[str, Any]:
    added = after[0] - before[0]
    return {"seconds": round(m.seconds, 3), "peak_rss_kib": m.maxrss_kib,
            "bytes_changed": changed, "store_bytes": after[0], "store_added": added,
            "store_disk_added": after[1] - before[1],
            "added_per_changed": round(added / changed, 3) if changed else None,
            "tool_own_added": own, "tool_report": report}


def bench_tool(tool: Tool, work: Path, tree: Path, orig: Path, small: Path,
               big_info: tuple[int, int], small_info: tuple[int, int]) -> dict[str, Any]:
    """All the steps for one tool (see module doc); a failing step ends that tool's run and is
    recorded as its error."""
    res: dict[str, Any] = {"tool": tool.name, "available": True, "version": tool.version()}
    repo = work / f"{tool.name}-big"
    try:
        tool.init(repo).check()
        res["settings"] = tool.settings(repo)
        store = tool.store_dir(repo)
        s0 = dir_bytes(store)
        os.sync()
        m, rep1 = tool.backup(repo, tree, "bench1")
        s1 = dir_bytes(store)
        res["big_import"] = import_figures(m, *big_info, s1, rep1)
        res["big_import"]["store_empty_bytes"] = s0[0]
        print(f"  {tool.name}: import {m.seconds:.1f} s", flush=True)

        changed = gentree.mutate_inplace(tree, 0.01, MUTATE_SEED)
        os.sync()
        m, rep2 = tool.backup(repo, tree, "bench2")
        s2 = dir_bytes(store)
        res["inplace"] = reimport_figures(m, changed, s1, s2, rep2,
                                          own_added(tool.name, rep2, rep1))
        print(f"  {tool.name}: re-import after 1 % in place {m.seconds:.1f} s", flush=True)

        # Put the changed files back and import that (recorded, not in the table), so the
        # next import differs from its parent only by the insertions.
        gentree.restore_from(tree, orig)
        os.sync()
        m, repr_ = tool.backup(repo, tree, "bench2r")
        sr = dir_bytes(store)
        res["restored"] = reimport_figures(m, 0, s2, sr, repr_, own_added(tool.name, repr_, rep2))

        inserted = gentree.insert_bytes(tree, 0.01, 100, INSERT_SEED)
        os.sync()
        m, rep3 = tool.backup(repo, tree, "bench3")
        s3 = dir_bytes(store)
        res["insert"] = reimport_figures(m, inserted, sr, s3, rep3,
                                         own_added(tool.name, rep3, repr_))
        res["big_cache_bytes"] = tool.cache_bytes(repo)
        print(f"  {tool.name}: re-import after insertions {m.seconds:.1f} s", flush=True)
    except StepFailed as e:
        res["error"] = str(e)
    finally:
        gentree.restore_from(tree, orig)

    if "error" not in res:
        srepo = work / f"{tool.name}-small"
        try:
            tool.init(srepo).check()
            os.sync()
            m, rep = tool.backup(srepo, small, "small1")
            res["small_import"] = import_figures(m, *small_info,
                                                 dir_bytes(tool.store_dir(srepo)), rep)
            res["small_cache_bytes"] = tool.cache_bytes(srepo)
            print(f"  {tool.name}: small tree {m.seconds:.1f} s", flush=True)
        except StepFailed as e:
            res["error"] = f"small tree: {e}"
    return res


def prepare_workdir(work: Path, marker: str = MARKER, bench: str = "bench/import") -> None:
    """Make ``work`` ours and empty: refuse a non-empty directory we did not make (one
    without *marker*)."""
    if work.exists():
        if any(work.iterdir()) and not (work / marker).exists():
            sys.exit(f"{bench}: {work} exists, is not empty and is not a bench work "
                     "directory; choose another --workdir")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / marker).write_text(f"grid {bench} work directory; safe to delete\n")


def machine_info(**more: Any) -> dict[str, Any]:
    """The machine a result was measured on (the JSON document's ``machine``)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30),
            **more}


def skipped(tool: Tool) -> dict[str, Any] | None:
    """The result row of a tool that cannot run here (said on the terminal), or None."""
    why = tool.unavailable()
    if not why:
        return None
    print(f"  {tool.name}: skipped: {why}", flush=True)
    return {"tool": tool.name, "available": False, "reason": why}


def save_results(doc: dict[str, Any], out: str, show: Any) -> None:
    """Write the JSON document to *out*, then print it with *show*."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    show(doc)
    print(f"\nresults: {path}")


# --------------------------------------------------------------------------------------------
# Output


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.1f}"


def _ratio(n: float | None) -> str:
    return "-" if n is None else f"{n:.2f}"


def print_tables(doc: dict[str, Any]) -> None:
    """The human-readable summary of ``doc`` (the JSON results)."""
    big, small = doc["big_tree"], doc["small_tree"]
    print()
    print(f"bench/import  {doc['date']}  {doc['machine']['cpus']} CPUs, "
          f"{doc['machine']['mem_gib']:.0f} GiB; page cache warm (not dropped)")
    print(f"big tree: {big['logical_bytes'] / (1 << 30):.2f} GiB, {big['files']} files "
          f"({big['duplicate_files']} duplicates), {big['dirs']} dirs, half random/half zeros; "
          f"small tree: {small['files']} x 4 KiB in {small['dirs']} dirs.  MB = 10^6 B, "
          "MiB = 2^20 B; store = apparent bytes of the repository")
    rows = doc["results"]
    ok = [r for r in rows if r.get("available") and "big_import" in r]

    def table(title: str, head: list[str], body: list[list[str]]) -> None:
        print(f"\n{title}")
        full = [b for b in body if len(b) == len(head)]
        widths = [max(len(h), *(len(b[i]) for b in full)) if full else len(h)
                  for i, h in enumerate(head)]
        print("  " + "  ".join(h.rjust(w) if i else h.ljust(w)
                               for i, (h, w) in enumerate(zip(head, widths, strict=True))))
        for b in body:
            if len(b) != len(head):  # [tool, message]: a skipped or failed tool
                print(f"  {b[0].ljust(widths[0])}  {b[1]}")
                continue
            print("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                                   for i, (c, w) in enumerate(zip(b, widths, strict=True))))

    body = []
    for r in rows:
        if not r.get("available"):
            body.append([r["tool"], "skipped: " + r["reason"]])
        elif "big_import" not in r:
            body.append([r["tool"], "error: " + r.get("error", "?")])
        else:
            b = r["big_import"]
            body.append([r["tool"], f"{b['seconds']:.2f}", f"{b['mb_s']:.0f}",
                         _mib(b["peak_rss_kib"] * 1024), _mib(b["store_bytes"]),
                         _ratio(b["store_bytes"] / big["logical_bytes"])])
    table("1. import of the big tree",
          ["tool", "seconds", "MB/s", "peak RSS MiB", "store MiB", "store/logical"], body)

    for key, title in (("inplace", "2. re-import after changing 1 % of the bytes in place"),
                       ("insert", "3. re-import after inserting 100 bytes into 1 % of the files")):
        body = []
        for r in ok:
            if key not in r:
                body.append([r["tool"], "error: " + r.get("error", "?")])
                continue
            x = r[key]
            body.append([r["tool"], f"{x['seconds']:.2f}", f"{x['bytes_changed']:,}",
                         f"{x['store_added']:,}", _ratio(x["added_per_changed"]),
                         "-" if x["tool_own_added"] is None else f"{x['tool_own_added']:,}",
                         _mib(x["peak_rss_kib"] * 1024)])
        table(title, ["tool", "seconds", "bytes changed", "store bytes added", "added/changed",
                      "tool's own count", "peak RSS MiB"], body)

    body = []
    for r in ok:
        if "small_import" not in r:
            body.append([r["tool"], "error: " + r.get("error", "?")])
            continue
        s = r["small_import"]
        body.append([r["tool"], f"{s['seconds']:.2f}", f"{s['files_s']:.0f}", f"{s['mb_s']:.1f}",
                     _mib(s["peak_rss_kib"] * 1024), _mib(s["store_bytes"])])
    table("4. import of the small-file tree",
          ["tool", "seconds", "files/s", "MB/s", "peak RSS MiB", "store MiB"], body)

    t = doc.get("targets")
    if t:
        print("\ntargets (DESIGN.md): " + "; ".join(
            f"{k} {v['value']} (target {v['target']}: {'met' if v['met'] else 'NOT met'})"
            for k, v in t.items()))
    print("\nsettings:")
    for r in rows:
        if r.get("available"):
            print(f"  {r['tool']:<7} {r['version'].splitlines()[0]}; {r.get('settings', '?')}")


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """grid against restic, as DESIGN.md states the targets, when both ran."""
    by = {r["tool"]: r for r in rows if r.get("available") and "big_import" in r}
    if "grid" not in by or "restic" not in by:
        return {}
    g, r = by["grid"], by["restic"]
    out: dict[str, Any] = {}
    v = g["big_import"]["mb_s"] / r["big_import"]["mb_s"]
    out["grid/restic MB/s"] = {"value": round(v, 2), "target": ">= 1.5", "met": v >= 1.5}
    v = g["big_import"]["peak_rss_kib"] / r["big_import"]["peak_rss_kib"]
    out["grid/restic peak RSS"] = {"value": round(v, 2), "target": "<= 1", "met": v <= 1}
    if "inplace" in g and g["inplace"]["added_per_changed"] is not None:
        v = g["inplace"]["added_per_changed"]
        out["grid added/changed (1 % in place)"] = {"value": v, "target": "<= 2", "met": v <= 2}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(TOOLS),
                    help="comma-separated tools to run (default: grid,restic,borg)")
    ap.add_argument("--gib", type=float, default=1.0, help="size of the big tree (default 1)")
    ap.add_argument("--small-files", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default="/var/tmp/grid-bench-import")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=str(HERE / "out" / "import.json"))
    ap.add_argument("--grid", default=str(HERE.parent / ".venv" / "bin" / "grid"),
                    help="the grid command (default: the project's venv)")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in TOOLS]
    if bad:
        ap.error(f"--only: unknown tool(s) {', '.join(bad)} (choose from {', '.join(TOOLS)})")

    work = Path(args.workdir).resolve()
    prepare_workdir(work)
    tools: list[Tool] = []
    for n in names:
        tools.append(Grid(work, args.grid) if n == "grid" else Restic(work) if n == "restic"
                     else Borg(work))

    tree, orig, small = work / "tree", work / "orig", work / "small"
    try:
        print(f"bench/import: generating {args.gib} GiB tree and {args.small_files} small files "
              f"in {work}", flush=True)
        t0 = time.perf_counter()
        big_info = gentree.make_big(tree, args.gib, args.seed)
        shutil.copytree(tree, orig)
        small_info = gentree.make_small(small, args.small_files, args.seed)
        print(f"  generated in {time.perf_counter() - t0:.1f} s: {big_info.files} files, "
              f"{big_info.logical_bytes:,} bytes", flush=True)

        rows: list[dict[str, Any]] = []
        for tool in tools:
            if (row := skipped(tool)) is not None:
                rows.append(row)
                continue
            rows.append(bench_tool(tool, work, tree, orig, small,
                                   (big_info.files, big_info.logical_bytes),
                                   (small_info.files, small_info.logical_bytes)))
            if not args.keep:
                for suffix in ("big", "big-cache", "small", "small-cache"):
                    shutil.rmtree(work / f"{tool.name}-{suffix}", ignore_errors=True)

        doc: dict[str, Any] = {
            "benchmark": "bench/import",
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "page_cache": "warm (trees just written; cache not dropped between steps)",
            "big_tree": {**big_info.as_dict(), "gib": args.gib},
            "small_tree": small_info.as_dict(),
            "changes": {"inplace": {"fraction_of_bytes": 0.01, "run_bytes": gentree.MUTATE_RUN,
                                    "seed": MUTATE_SEED},
                        "insert": {"fraction_of_files": 0.01, "bytes_per_file": 100,
                                   "seed": INSERT_SEED}},
            "results": rows,
        }
        doc["targets"] = targets(rows)
        save_results(doc, args.out, print_tables)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
