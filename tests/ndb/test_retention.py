"""Retention policy tables (restic's forget rules; fixtures of our own, modelled on the
examples in restic's documentation: daily snapshots thinned to days, weeks, months)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ndb.errors import NdbValueError
from ndb.retention import UNLIMITED, Policy, Within, apply


def T(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def kept(times: list[datetime], **policy) -> set[int]:
    return {i for i, d in enumerate(apply(times, Policy(**policy))) if d.keep}


# Fourteen snapshots, one a day at noon, 2026-03-14 (a Saturday) back to 2026-03-01 (Sunday).
DAILY = [T("2026-03-14T12:00:00") - timedelta(days=i) for i in range(14)]
# Snapshots across a few months and years, newest first.
SPARSE = [T(t) for t in ("2026-03-05T10:00", "2026-03-01T10:00", "2026-02-20T10:00",
                         "2026-02-01T10:00", "2025-07-01T10:00", "2024-12-31T23:00",
                         "2024-06-01T00:00")]

CASES = [
    ("last 3", DAILY, {"last": 3}, {0, 1, 2}),
    ("last more than there are", DAILY[:2], {"last": 5}, {0, 1}),
    ("last unlimited", DAILY[:4], {"last": UNLIMITED}, {0, 1, 2, 3}),
    ("daily 3", DAILY, {"daily": 3}, {0, 1, 2}),
    ("last 2 + daily 3 overlap", DAILY, {"last": 2, "daily": 3}, {0, 1, 2}),
    # ISO weeks: Mar 9-15 is W11, Mar 2-8 W10, Mar 1 (a Sunday) W09.
    ("weekly 2", DAILY, {"weekly": 2}, {0, 6}),
    ("weekly 5: fewer weeks than asked, the oldest kept too", DAILY, {"weekly": 5}, {0, 6, 13}),
    ("daily 3 + weekly 2", DAILY, {"daily": 3, "weekly": 2}, {0, 1, 2, 6}),
    ("monthly 2", SPARSE, {"monthly": 2}, {0, 2}),
    ("monthly 3", SPARSE, {"monthly": 3}, {0, 2, 4}),
    ("yearly 2", SPARSE, {"yearly": 2}, {0, 4}),
    ("yearly 5: history's start kept", SPARSE, {"yearly": 5}, {0, 4, 5, 6}),
    ("monthly unlimited", SPARSE, {"monthly": UNLIMITED}, {0, 2, 4, 5, 6}),
    ("within 1m (Go's AddDate: Mar 5 - 1m = Feb 5)", SPARSE, {"within": Within(months=1)}, {0, 1, 2}),
    ("within 2d", DAILY, {"within": Within(days=2)}, {0, 1}),
    ("within 2d1h", DAILY, {"within": Within(days=2, hours=1)}, {0, 1, 2}),
    ("within + last", DAILY, {"within": Within(days=1), "last": 3}, {0, 1, 2}),
    ("empty policy keeps all", DAILY[:3], {}, {0, 1, 2}),
]


@pytest.mark.parametrize(("label", "times", "policy", "want"), CASES, ids=[c[0] for c in CASES])
def test_policy_table(label, times, policy, want):
    assert kept(times, **policy) == want


def test_hourly_counts_hours_not_snapshots():
    times = [T("2026-03-14T12:50"), T("2026-03-14T12:10"), T("2026-03-14T11:59"),
             T("2026-03-14T11:00"), T("2026-03-14T09:30")]
    assert kept(times, hourly=2) == {0, 2}
    assert kept(times, hourly=3) == {0, 2, 4}
    assert kept(times, hourly=4) == {0, 2, 4}  # the oldest is kept anyway


def test_weekly_across_the_year_boundary():
    # 2025-12-30 is in ISO week 2026-W01, 2025-12-27 in 2025-W52.
    times = [T("2026-01-02T00:00"), T("2025-12-30T00:00"), T("2025-12-27T00:00")]
    assert kept(times, weekly=2) == {0, 2}


def test_within_boundary_is_exclusive():
    times = [T("2026-03-31T10:00"), T("2026-03-04T10:00"), T("2026-03-03T10:00"),
             T("2026-03-02T10:00")]
    # 2026-03-31 minus one month is "February 31", that is March 3 (Go's normalisation).
    assert Within(months=1).before(times[0]) == T("2026-03-03T10:00")
    assert kept(times, within=Within(months=1)) == {0, 1}


def test_reasons():
    ds = apply(DAILY[:8], Policy(last=1, weekly=2))
    assert ds[0].reasons == ("last snapshot", "weekly snapshot")
    assert ds[6].reasons == ("weekly snapshot",)
    assert not ds[3].keep and ds[3].reasons == ()


@pytest.mark.parametrize(("text", "want"), [
    ("1y5m7d2h", Within(years=1, months=5, days=7, hours=2)), ("30d", Within(days=30)),
    ("12h", Within(hours=12)), ("2m", Within(months=2)),
])
def test_within_parse(text, want):
    assert Within.parse(text) == want
    assert str(want) == text


@pytest.mark.parametrize("text", ["", "1w", "d", "2h1d", "-1d", "1.5d"])
def test_within_parse_bad(text):
    with pytest.raises(NdbValueError):
        Within.parse(text)


def test_bad_order_and_counts():
    with pytest.raises(NdbValueError):
        apply([DAILY[1], DAILY[0]], Policy(last=1))
    with pytest.raises(NdbValueError):
        Policy(daily=-2)
