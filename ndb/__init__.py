"""Plan 9 ndb(6) databases for grid: the format, queries, the hash index, and the records
grid keeps in them (score names, users, peers).

ndb imports only the standard library and lmdb; nothing else of grid (an import-linter
contract checks it). The names below are the public interface; the modules hold them:

- ndb.syntax: the text format (parse, format), pure
- ndb.document: lossless edits of hand-written files, pure
- ndb.query: Plan 9 query semantics and ``ndb/query`` output, pure
- ndb.index: the LMDB hash index
- ndb.database: files on disk, ``database=`` chains, locked atomic updates
- ndb.values: the rules for names, scores, dates, addresses, keys
- ndb.names, ndb.users, ndb.peers: the records (ndb.retention: which snapshots to keep)
- ndb.nameaccess: who may read and write a name (owners, modes, ACLs), pure
- ndb.errors: the errors
"""

from ndb.database import Database, NdbFile, locked
from ndb.document import Document
from ndb.errors import (
    NdbConflict,
    NdbError,
    NdbNotFound,
    NdbPermission,
    NdbRecordError,
    NdbSyntaxError,
    NdbValueError,
)
from ndb.nameaccess import Caller
from ndb.names import NameDB, NameRecord, NameSet, latest_of, merge
from ndb.peers import Peer, PeerDB
from ndb.query import Match, getvalue, ndbquery, search
from ndb.syntax import (
    Entry,
    Pair,
    Parsed,
    format_entries,
    format_entry,
    format_entry_line,
    parse,
    parse_entry,
)
from ndb.users import User, UserDB
from ndb.values import format_date, format_score, now_date, parse_date, parse_score_text

__all__ = [
    "Caller",
    "Database",
    "Document",
    "Entry",
    "Match",
    "NameDB",
    "NameRecord",
    "NameSet",
    "NdbConflict",
    "NdbError",
    "NdbFile",
    "NdbNotFound",
    "NdbPermission",
    "NdbRecordError",
    "NdbSyntaxError",
    "NdbValueError",
    "Pair",
    "Parsed",
    "Peer",
    "PeerDB",
    "User",
    "UserDB",
    "format_date",
    "format_entries",
    "format_entry",
    "format_entry_line",
    "format_score",
    "getvalue",
    "latest_of",
    "locked",
    "merge",
    "ndbquery",
    "now_date",
    "parse",
    "parse_date",
    "parse_entry",
    "parse_score_text",
    "search",
]
