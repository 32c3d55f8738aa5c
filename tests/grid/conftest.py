"""Running `grid` as a user would: a real process, a real grid home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_grid(home: Path, *args: str, input: bytes | None = None, check: bool = True,
             prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, GRID_HOME=str(home), PYTHONPATH=str(ROOT))
    p = subprocess.run([*prefix, sys.executable, "-m", "grid.cli.main", *args], input=input,
                       capture_output=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"grid {args} failed ({p.returncode}): {p.stderr.decode()}")
    return p


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    out = run_grid(h, "init")
    assert b"created" in out.stdout
    return h
