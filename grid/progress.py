"""Progress for long work: a bar on a terminal, nothing until the one-line summary otherwise."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Counts bytes (or items); shows a tqdm bar only when stderr is a terminal."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "B") -> None:
        self.n = 0
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False, dynamic_ncols=True,
            )

    def update(self, n: int) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def note(self, **fields: object) -> None:
        """Extra figures beside the bar (files, dedup, ...), shown only on a terminal."""
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
