"""POSIX permission conformance, pjdfstest-style: every case of tests/posix/cases.py runs as
real users (alice, bob, carol: tests/posix/README.md) on ext4, the reference, and on each
target; a case passes when every step answers the same (value or errno) and every path it names
ends with the same type, mode, owner, group, size and links.

Targets: ext4 against itself (a sanity check of the harness), kernel overlayfs (setup through
the mount, and setup in the lower layer so that every change is a copy-up), a grid spawn
mounted with FUSE (setup through the mount, and setup in the tree `grid import` reads), and the
same spawn through the kernel's 9P client. The grid targets are expected to fail until `grid
share ID USER|@GROUP` exists (issue 14): today a spawn refuses every uid but its owner's and
root's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.posix import harness, targets
from tests.posix.cases import CASES, GROUPS, MEMBERS

if os.geteuid() != 0:
    pytest.skip("runs as root (makes users, forks children that become them, mounts)",
                allow_module_level=True)

GRID_XFAIL = pytest.mark.xfail(not targets.share_available(), reason=targets.ISSUE, strict=False)

TARGETS = {
    "ext4": targets.run_ext4,
    "overlayfs": targets.run_overlay,
    "overlayfs-lower": targets.run_overlay_lower,
    "grid-fuse": targets.run_grid_fuse,
    "grid-fuse-base": targets.run_grid_fuse_base,
    "grid-9p": targets.run_grid_9p,
    "grid-9p-client": targets.run_grid_9p_client,
}


def _skip_reason(name: str) -> str | None:
    if name.startswith("overlayfs") and not targets.overlay_available():
        return "no overlay filesystem in this kernel"
    if name.startswith("grid-fuse") and (not os.path.exists("/dev/fuse") or not shutil.which("fusermount3")):
        return "needs /dev/fuse and fusermount3"
    if name == "grid-9p" and not targets.ninep_available():
        return "no 9p filesystem in this kernel (the kernel's 9P client cannot be mounted)"
    return None


@pytest.fixture(scope="module")
def users() -> harness.Users:
    return harness.make_users("gpx", GROUPS, MEMBERS)


@pytest.fixture(scope="module")
def reference(users: harness.Users) -> dict[str, harness.Outcome]:
    if targets.fs_type(Path(targets.LOCAL)) != "ext2/ext3":
        pytest.skip(f"{targets.LOCAL} is not on ext4 here: no reference")
    return targets.run_ext4(CASES, users)


@pytest.fixture(scope="module", params=[
    "ext4",
    "overlayfs",
    "overlayfs-lower",
    pytest.param("grid-fuse", marks=GRID_XFAIL),
    pytest.param("grid-fuse-base", marks=GRID_XFAIL),
    pytest.param("grid-9p", marks=GRID_XFAIL),
    pytest.param("grid-9p-client", marks=GRID_XFAIL),
])
def target(request: pytest.FixtureRequest,
           users: harness.Users) -> tuple[str, dict[str, harness.Outcome]]:
    name = request.param
    if reason := _skip_reason(name):
        pytest.skip(reason)
    return name, TARGETS[name](CASES, users)


def test_the_table_says_what_linux_answers(reference: dict[str, harness.Outcome]) -> None:
    """The answers the table's author wrote down (X(...)) are what ext4 gives, and every
    setup step succeeds there: a wrong expectation is a wrong case."""
    bad = [f"{c.id}: {b}" for c in CASES for b in harness.check_expectations(c, reference[c.id])]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.dirname)
def test_case(case: harness.Case, target: tuple[str, dict[str, harness.Outcome]],
              reference: dict[str, harness.Outcome], users: harness.Users) -> None:
    name, outcomes = target
    msg = harness.compare(case, reference[case.id], outcomes[case.id], users, name)
    if msg:
        pytest.fail(msg, pytrace=False)
