"""Retention policies: which snapshots of a name's history to keep (restic's policy language).

A pure function over dates, so it is tested by tables (tests/ndb/test_retention.py) and used
by ``grid forget`` (ndb.names.NameDB.forget) without touching files. The rules are restic's
``forget`` rules, applied to one name's history (restic's "group"), newest first:

* ``last N``: the N newest snapshots.
* ``hourly/daily/weekly/monthly/yearly N``: walking from the newest, a snapshot is kept when
  its period (hour, day, ISO week, month, year, in UTC) differs from that of the last snapshot
  this rule kept; each keep uses one of the N. ``-1`` means unlimited (restic's
  ``unlimited``).
* When such a period rule still has keeps left after the whole history (fewer periods than
  N), the *oldest* snapshot is kept as well (restic 0.17's rule: the history's start is not
  lost because it was sparse).
* ``within D``: every snapshot newer than the newest snapshot's date minus D (``1y5m7d2h``,
  calendar arithmetic as Go's AddDate: years, months, days, then hours).

A snapshot is kept if any rule keeps it; the reasons say which. An empty policy keeps
everything (the caller refuses it; restic refuses it too). Callers add the rule restic leaves
to the user: a name's latest record is always kept (docs/ndb.md, "Forgetting").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

from ndb.errors import NdbValueError

UNLIMITED = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class Within:
    """A ``--keep-within`` duration: calendar years, months, days, then hours."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Within:
        """``1y5m7d2h`` (any subset, in this order); NdbValueError otherwise."""
        m = re.fullmatch(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?", text or "")
        if not text or not m:
            raise NdbValueError(f"bad duration {text!r}: expected e.g. 1y5m7d2h, 30d, 12h")
        y, mo, d, h = (int(g) if g else 0 for g in m.groups())
        return cls(years=y, months=mo, days=d, hours=h)

    def before(self, t: datetime) -> datetime:
        """*t* minus this duration, normalising overflowing days as Go's AddDate does
        (March 31 minus one month is "February 31", that is March 3)."""
        y, mo = t.year - self.years, t.month - self.months
        y += (mo - 1) // 12
        mo = (mo - 1) % 12 + 1
        base = datetime.combine(date(y, mo, 1), t.timetz())
        return base + timedelta(days=t.day - 1 - self.days, hours=-self.hours)

    def __str__(self) -> str:
        parts = zip((self.years, self.months, self.days, self.hours), "ymdh", strict=True)
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Counts per rule (0: the rule is off; UNLIMITED: no limit) and a within duration."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Within | None = None

    def __post_init__(self) -> None:
        for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            n = getattr(self, rule)
            if not isinstance(n, int) or n < UNLIMITED:
                raise NdbValueError(f"--keep-{rule} takes a count >= 0 or 'unlimited', not {n!r}")

    @property
    def empty(self) -> bool:
        return self.within is None and not any(
            (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly))


def _hour(t: datetime) -> int:
    return ((t.year * 100 + t.month) * 100 + t.day) * 100 + t.hour


def _day(t: datetime) -> int:
    return (t.year * 100 + t.month) * 100 + t.day


def _week(t: datetime) -> int:
    y, w, _ = t.isocalendar()
    return y * 100 + w


def _month(t: datetime) -> int:
    return t.year * 100 + t.month


def _year(t: datetime) -> int:
    return t.year


_PERIODS: tuple[tuple[str, Callable[[datetime], int]], ...] = (
    ("hourly", _hour), ("daily", _day), ("weekly", _week), ("monthly", _month), ("yearly", _year),
)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says of one snapshot: kept or not, and why."""

    keep: bool
    reasons: tuple[str, ...]


def apply(times: Sequence[datetime], policy: Policy) -> list[Decision]:
    """One Decision per entry of *times* (UTC datetimes, **newest first**), in that order.

    An empty policy keeps everything (reason "empty policy")."""
    for a, b in pairwise(times):
        if b > a:
            raise NdbValueError("retention: snapshots must be given newest first")
    if policy.empty:
        return [Decision(True, ("empty policy",)) for _ in times]
    reasons: list[list[str]] = [[] for _ in times]
    if policy.last:
        n = len(times) if policy.last == UNLIMITED else min(policy.last, len(times))
        for i in range(n):
            reasons[i].append("last snapshot")
    for rule, period in _PERIODS:
        left = getattr(policy, rule)
        if not left:
            continue
        previous: int | None = None
        for i, t in enumerate(times):
            if left == 0:
                break
            p = period(t)
            if p != previous:
                reasons[i].append(f"{rule} snapshot")
                previous = p
                if left != UNLIMITED:
                    left -= 1
        if left > 0 and times and f"{rule} snapshot" not in reasons[-1]:
            reasons[-1].append(f"oldest {rule} snapshot")
    if policy.within is not None and times:
        cut = policy.within.before(times[0])
        for i, t in enumerate(times):
            if t > cut:
                reasons[i].append(f"within {policy.within}")
    return [Decision(bool(r), tuple(r)) for r in reasons]


def to_datetime(key: tuple[int, int]) -> datetime:
    """A date key from ndb.values.parse_date (seconds, nanoseconds) as a UTC datetime."""
    secs, nanos = key
    return datetime.fromtimestamp(secs, UTC) + timedelta(microseconds=nanos // 1000)
