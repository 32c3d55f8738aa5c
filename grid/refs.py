"""What users type to name a snapshot, resolved to a root score.

    NAME                the latest record of NAME in the score-name database
    NAME@blake3:HEX     that exact root (which must be a root NAME has had)
    blake3:HEX          a raw root score, wherever a name is accepted
    ...:PATH            a path inside the snapshot (ls, cat): ``myproject:src/main.c``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from grid.errors import UserError
from grid.home import GridHome

if TYPE_CHECKING:
    from ndb.nameaccess import Caller

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


def resolve(home: GridHome, text: str, caller: Caller | None = None) -> Ref:
    """The root *text* names. For a *caller* (the daemon resolving for a user), only names
    the caller may read exist, and a raw score must be a root of one of them (unless the
    caller is privileged): ndb.nameaccess decides."""
    import errno

    from ndb.errors import NdbNotFound, NdbPermission
    from ndb.names import NameDB
    from store.errors import BadScore
    from store.score import parse_score

    try:
        names = NameDB(home.names_db)
        if text.startswith(PREFIX):
            score = parse_score(text)
            if caller is not None and not names.may_use_score(text[:SCORE_TEXT_LEN], caller):
                raise NdbPermission(errno.EACCES, f"permission denied: {text} is not a root of a "
                                    "name you may read (only root spawns any score)")
            return Ref(text, None, score)
        name, _, at = text.partition("@")
        if at:
            score = parse_score(at)
            try:
                history = names.history(name) if caller is None else names.history_for(name, caller)
            except NdbNotFound:
                raise UserError(name, "no such name (see `grid names`)") from None
            if not any(r.score == at for r in history):
                raise UserError(text, f"{at} was never a root of {name!r} (see `grid history {name}`)")
            return Ref(text, name, score)
        rec = names.resolve(name) if caller is None else names.resolve_for(name, caller)
        if rec is None:
            raise UserError(name, "no such name (see `grid names`)")
        return Ref(text, name, parse_score(rec.score))
    except BadScore as e:
        raise UserError(text, str(e)) from None
