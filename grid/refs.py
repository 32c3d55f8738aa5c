"""What users type to name a snapshot, resolved to a root score.

    NAME                the latest record of NAME in the score-name database
    NAME@blake3:HEX     that exact root (which must be a root NAME has had)
    blake3:HEX          a raw root score, wherever a name is accepted
    ...:PATH            a path inside the snapshot (ls, cat): ``myproject:src/main.c``
"""

from __future__ import annotations

from dataclasses import dataclass

from grid.errors import UserError
from grid.home import GridHome

PREFIX = "blake3:"
SCORE_TEXT_LEN = len(PREFIX) + 64


@dataclass(frozen=True, slots=True)
class Ref:
    text: str  # what the user typed, for messages
    name: str | None
    score: bytes


def split_path(text: str) -> tuple[str, str]:
    """Split ``REF:PATH`` into (REF, PATH); PATH is '' when absent."""
    if text.startswith(PREFIX):
        _after_score(text, SCORE_TEXT_LEN)
        return text[:SCORE_TEXT_LEN], text[SCORE_TEXT_LEN + 1 :]
    at = text.find("@")
    if at >= 0 and text[at + 1 :].startswith(PREFIX):
        end = at + 1 + SCORE_TEXT_LEN
        _after_score(text, end)
        return text[:end], text[end + 1 :]
    name, _, path = text.partition(":")
    return name, path


def _after_score(text: str, end: int) -> None:
    """After a score only ``:PATH`` may follow: ``blake3:<64 hex>x`` is not a score."""
    if len(text) > end and text[end] != ":":
        raise UserError(text, "is not a score (expected blake3:<64 hex digits>, then nothing or :PATH)")


def resolve(home: GridHome, text: str) -> Ref:
    from ndb.names import NameDB
    from store.errors import BadScore
    from store.score import parse_score

    try:
        if text.startswith(PREFIX):
            return Ref(text, None, parse_score(text))
        name, _, at = text.partition("@")
        names = NameDB(home.names_db)
        if at:
            score = parse_score(at)
            if not any(r.score == at for r in names.history(name)):
                raise UserError(text, f"{at} was never a root of {name!r} (see `grid history {name}`)")
            return Ref(text, name, score)
        rec = names.resolve(name)
        if rec is None:
            raise UserError(name, "no such name (see `grid names`)")
        return Ref(text, name, parse_score(rec.score))
    except BadScore as e:
        raise UserError(text, str(e)) from None
