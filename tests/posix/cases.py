"""The case table: permission rules of Linux, one small scene each, in the spirit of pjdfstest.

Actors: root; alice (groups alice, g1, g2); bob (bob, g1); carol (carol only). g3 has no
members. A case's directory is root's, mode 0755; its setup makes what the scene needs, as
root (``F``: a file, ``D``: a directory, each chowned then chmodded, so the mode is exact).
Steps are ``(actor, op, *args)``; a trailing ``X("EPERM")`` (or ``OK``) is what Linux answers
according to this table's author, checked against ext4 (which is the reference either way).
See tests/posix/README.md for the operations.
"""

from __future__ import annotations

from typing import Any

from tests.posix.harness import OK, Case, X

GROUPS = ("g1", "g2", "g3")
MEMBERS = {"alice": ("g1", "g2"), "bob": ("g1",), "carol": ()}

EPERM, EACCES, EEXIST, ENOENT = X("EPERM"), X("EACCES"), X("EEXIST"), X("ENOENT")
ENOTEMPTY, ENOTDIR, EISDIR, EINVAL, ELOOP = (X("ENOTEMPTY"), X("ENOTDIR"), X("EISDIR"),
                                             X("EINVAL"), X("ELOOP"))
T1, T2 = 1_000_000_000, 1_200_000_000  # explicit times, long ago

CASES: list[Case] = []


def F(path: str, mode: int, owner: str = "root", group: str | None = None,
      size: int = 0) -> tuple[Any, ...]:
    return ("file", path, mode, owner, group or owner, size)


def D(path: str, mode: int, owner: str = "root", group: str | None = None) -> tuple[Any, ...]:
    return ("dir", path, mode, owner, group or owner)


def case(group: str, name: str, setup: list[tuple[Any, ...]], *steps: tuple[Any, ...],
         umask: int = 0) -> None:
    c = Case(group, name, tuple(setup), tuple(steps), umask)
    assert all(c.id != o.id for o in CASES), c.id
    c.all_steps()  # unknown operations fail at import
    CASES.append(c)


# -- chmod ------------------------------------------------------------------------------------

case("chmod", "owner_may", [F("f", 0o644, "alice")],
     ("alice", "chmod", "f", 0o600, OK), ("alice", "stat", "f"),
     ("alice", "chmod", "f", 0o000, OK), ("alice", "chmod", "f", 0o640, OK))
case("chmod", "non_owner_eperm_even_with_write", [F("f", 0o666, "alice")],
     ("bob", "chmod", "f", 0o777, EPERM), ("carol", "chmod", "f", 0o600, EPERM),
     ("bob", "stat", "f"))
case("chmod", "root_may_anything", [F("f", 0o644, "alice")],
     ("root", "chmod", "f", 0o4755, OK), ("root", "chmod", "f", 0o7777, OK), ("root", "stat", "f"))
case("chmod", "owner_sets_setuid", [F("f", 0o755, "alice")],
     ("alice", "chmod", "f", 0o4755, OK), ("alice", "stat", "f"))
case("chmod", "setgid_dropped_for_nonmember_group", [F("f", 0o755, "alice", "g3")],
     ("alice", "chmod", "f", 0o2755, OK), ("alice", "stat", "f"),
     ("alice", "chmod", "f", 0o6755, OK), ("alice", "stat", "f"))
case("chmod", "setgid_kept_for_member_group", [F("f", 0o755, "alice", "g2")],
     ("alice", "chmod", "f", 0o2755, OK), ("alice", "stat", "f"))
case("chmod", "setgid_dir_dropped_for_nonmember", [D("d", 0o775, "alice", "g3")],
     ("alice", "chmod", "d", 0o2775, OK), ("alice", "stat", "d"),
     ("root", "chmod", "d", 0o2775, OK), ("root", "stat", "d"))
case("chmod", "sticky_on_file_and_dir_by_owner", [F("f", 0o644, "bob"), D("d", 0o777, "bob")],
     ("bob", "chmod", "f", 0o1644, OK), ("bob", "chmod", "d", 0o1777, OK),
     ("bob", "stat", "f"), ("bob", "stat", "d"))
case("chmod", "needs_search_on_parent", [D("d", 0o700, "alice"), F("d/f", 0o644, "bob")],
     ("bob", "chmod", "d/f", 0o600, EACCES), ("root", "chmod", "d", 0o711, OK),
     ("bob", "chmod", "d/f", 0o600, OK))
case("chmod", "follows_symlink", [F("f", 0o644, "alice"), ("symlink", "l", "f")],
     ("bob", "chmod", "l", 0o666, EPERM), ("alice", "chmod", "l", 0o600, OK),
     ("alice", "stat", "l"), ("alice", "stat", "f"))
case("chmod", "missing_enoent", [D("d", 0o755, "alice")],
     ("alice", "chmod", "d/none", 0o644, ENOENT), ("alice", "chmod", "d/none/x", 0o644, ENOENT),
     ("alice", "chmod", "d/", 0o700, OK))
case("chmod", "file_as_directory_enotdir", [F("f", 0o644, "alice")],
     ("alice", "chmod", "f/x", 0o644, ENOTDIR))
case("chmod", "group_member_not_owner", [F("f", 0o664, "alice", "g1")],
     ("bob", "chmod", "f", 0o666, EPERM))

# -- chown and chgrp --------------------------------------------------------------------------

case("chown", "root_gives_away", [F("f", 0o644, "alice")],
     ("root", "chown", "f", "bob", "g3", OK), ("root", "stat", "f"))
case("chown", "owner_cannot_give_away", [F("f", 0o644, "alice")],
     ("alice", "chown", "f", "bob", None, EPERM), ("alice", "chown", "f", "bob", "alice", EPERM),
     ("alice", "chown", "f", "alice", None, OK))
case("chown", "owner_chgrp_to_own_groups", [F("f", 0o644, "alice")],
     ("alice", "chown", "f", None, "g2", OK), ("alice", "stat", "f"),
     ("alice", "chown", "f", None, "g1", OK), ("alice", "chown", "f", "alice", "alice", OK),
     ("alice", "stat", "f"))
case("chown", "owner_chgrp_to_other_group_eperm", [F("f", 0o644, "alice")],
     ("alice", "chown", "f", None, "g3", EPERM), ("alice", "chown", "f", None, "bob", EPERM),
     ("alice", "chown", "f", None, "root", EPERM))
case("chown", "member_not_owner_eperm", [F("f", 0o666, "alice", "g1")],
     ("bob", "chown", "f", None, "g1", EPERM), ("bob", "chown", "f", "bob", None, EPERM),
     ("carol", "chown", "f", None, "carol", EPERM))
case("chown", "noop_by_stranger", [F("f", 0o4755, "alice")],
     ("bob", "chown", "f", None, None), ("bob", "stat", "f"))
case("chown", "chgrp_by_owner_clears_setuid_setgid", [F("f", 0o6755, "alice")],
     ("alice", "chown", "f", None, "g1", OK), ("alice", "stat", "f"))
case("chown", "chgrp_keeps_setgid_without_group_exec", [F("f", 0o6745, "alice")],
     ("alice", "chown", "f", None, "g1", OK), ("alice", "stat", "f"))
case("chown", "root_chown_of_setuid_file", [F("f", 0o6755, "alice"), F("g", 0o6755, "alice")],
     ("root", "chown", "f", "bob", None, OK), ("root", "stat", "f"),
     ("root", "chown", "g", None, None, OK), ("root", "stat", "g"))
case("chown", "setgid_directory_kept", [D("d", 0o2775, "alice", "g1")],
     ("alice", "chown", "d", None, "g2", OK), ("alice", "stat", "d"),
     ("root", "chown", "d", "bob", None, OK), ("root", "stat", "d"))
case("chown", "lchown_symlink_itself", [F("f", 0o644, "alice"), ("symlink", "l", "f")],
     ("alice", "lchown", "l", None, "g1", EPERM), ("root", "lchown", "l", "alice", "alice", OK),
     ("alice", "lchown", "l", None, "g1", OK), ("root", "stat", "l"), ("root", "stat", "f"))
case("chown", "chown_follows_symlink", [F("f", 0o644, "alice"), ("symlink", "l", "f")],
     ("alice", "chown", "l", None, "g2", OK), ("root", "chown", "l", "carol", None, OK),
     ("root", "stat", "f"), ("root", "stat", "l"))
case("chown", "needs_search_on_parent", [D("d", 0o600, "alice"), F("d/f", 0o644, "alice")],
     ("alice", "chown", "d/f", None, "g1", EACCES), ("root", "chown", "d/f", None, "g3", OK))
case("chown", "directory_by_owner_and_root", [D("d", 0o755, "bob")],
     ("bob", "chown", "d", None, "g1", OK), ("bob", "chown", "d", "alice", None, EPERM),
     ("root", "chown", "d", "alice", "g2", OK), ("root", "stat", "d"))

# -- open: the permission classes, search, truncation -----------------------------------------

case("open", "owner_class_wins", [F("f", 0o077, "alice", "g1")],
     ("alice", "open", "f", "r", EACCES), ("alice", "open", "f", "w", EACCES),
     ("bob", "open", "f", "rw", OK), ("carol", "open", "f", "rw", OK))
case("open", "group_class_wins", [F("f", 0o707, "alice", "g1")],
     ("bob", "open", "f", "r", EACCES), ("carol", "open", "f", "rw", OK),
     ("alice", "open", "f", "rw", OK))
case("open", "supplementary_group_grants", [F("f", 0o640, "root", "g2")],
     ("alice", "open", "f", "r", OK), ("alice", "open", "f", "w", EACCES),
     ("bob", "open", "f", "r", EACCES), ("carol", "open", "f", "r", EACCES))
case("open", "other_class", [F("f", 0o604, "alice", "g1")],
     ("carol", "open", "f", "r", OK), ("carol", "open", "f", "w", EACCES),
     ("bob", "open", "f", "r", EACCES))
case("open", "root_overrides_modes", [F("f", 0o000, "alice")],
     ("root", "open", "f", "rw", OK), ("alice", "open", "f", "r", EACCES))
case("open", "read_and_write_bits", [F("f", 0o200, "alice", size=3), F("g", 0o400, "alice", size=3)],
     ("alice", "write", "f", "y", X("1")), ("alice", "read", "f", EACCES),
     ("alice", "read", "g", X('"xxx"')), ("alice", "write", "g", "y", EACCES))
case("open", "search_needed_on_every_dir",
     [D("d", 0o755, "alice"), D("d/e", 0o700, "alice"), F("d/e/f", 0o666, "alice")],
     ("bob", "open", "d/e/f", "r", EACCES), ("alice", "open", "d/e/f", "r", OK),
     ("root", "chmod", "d/e", 0o711, OK), ("bob", "open", "d/e/f", "rw", OK),
     ("bob", "listdir", "d/e", EACCES), ("root", "chmod", "d", 0o754, OK),
     ("bob", "open", "d/e/f", "r", EACCES), ("alice", "open", "d/e/f", "r", OK))
case("open", "read_without_search", [D("d", 0o644, "alice"), F("d/f", 0o644, "alice")],
     ("bob", "listdir", "d", X('["f"]')), ("bob", "stat", "d/f", EACCES),
     ("alice", "open", "d/f", "r", EACCES))
case("open", "create_needs_write_on_dir", [D("d", 0o755, "alice")],
     ("bob", "open", "d/new", "w|creat", EACCES), ("alice", "open", "d/new", "w|creat", OK),
     ("bob", "open", "d/new", "r", OK))
case("open", "creat_of_existing_needs_no_dir_write", [D("d", 0o755, "alice"), F("d/f", 0o666, "alice")],
     ("bob", "open", "d/f", "w|creat", OK), ("bob", "open", "d/f", "w|creat|excl", EEXIST),
     ("bob", "open", "d/g", "w|creat|excl", EACCES))
case("open", "trunc_needs_write", [F("f", 0o644, "alice", size=5)],
     ("bob", "open", "f", "r|trunc", EACCES), ("bob", "stat", "f"),
     ("alice", "open", "f", "r|trunc", OK), ("alice", "stat", "f"))
case("open", "directory_for_write_eisdir", [D("d", 0o777, "alice")],
     ("alice", "open", "d", "w", EISDIR), ("root", "open", "d", "rw", EISDIR),
     ("bob", "open", "d", "r", OK), ("bob", "open", "d", "r|dir", OK))
case("open", "nofollow_on_symlink_eloop", [F("f", 0o644, "alice"), ("symlink", "l", "f")],
     ("alice", "open", "l", "r|nofollow", ELOOP), ("alice", "open", "l", "r", OK))
case("open", "creat_mode_and_owner", [D("d", 0o777)],
     ("bob", "open", "d/f", "w|creat", 0o640, OK), ("carol", "create", "d/g", 0o4755, OK),
     ("root", "stat", "d/f"), ("root", "stat", "d/g"))
case("open", "creat_mode_with_umask", [D("d", 0o777)],
     ("bob", "create", "d/f", 0o666, OK), ("bob", "mkdir", "d/e", 0o777, OK),
     ("bob", "stat", "d/f"), umask=0o027)
case("open", "sticky_world_writable_creat_existing",
     [D("t", 0o1777), F("t/f", 0o666, "alice"), ("mkfifo", "t/p", 0o666), ("chown", "t/p", "alice", None)],
     ("bob", "open", "t/f", "w|creat"), ("bob", "open", "t/f", "w"))

# -- create: ownership, setgid directories ----------------------------------------------------

case("create", "owner_is_the_caller", [D("d", 0o777)],
     ("bob", "create", "d/f", 0o644, OK), ("alice", "mkdir", "d/e", 0o755, OK),
     ("carol", "symlink", "d/l", "f", OK), ("carol", "mkfifo", "d/p", 0o600, OK))
case("create", "setgid_dir_gives_its_group_to_files", [D("d", 0o2777, "root", "g2")],
     ("bob", "create", "d/f", 0o644, OK), ("bob", "stat", "d/f"),
     ("alice", "create", "d/g", 0o644, OK), ("carol", "mkfifo", "d/p", 0o644, OK),
     ("carol", "symlink", "d/l", "f", OK))
case("create", "setgid_dir_strips_setgid_of_nonmember", [D("d", 0o2777, "root", "g2")],
     ("bob", "create", "d/f", 0o2755, OK), ("alice", "create", "d/g", 0o2755, OK),
     ("root", "create", "d/h", 0o2755, OK), ("bob", "stat", "d/f"), ("alice", "stat", "d/g"))
case("create", "setgid_dir_propagates_to_subdirs", [D("d", 0o2777, "root", "g2")],
     ("bob", "mkdir", "d/e", 0o755, OK), ("bob", "stat", "d/e"),
     ("bob", "mkdir", "d/e/sub", 0o700, OK), ("bob", "create", "d/e/sub/f", 0o600, OK),
     ("root", "stat", "d/e/sub"))
case("create", "plain_dir_gives_primary_group", [D("d", 0o777, "root", "g2")],
     ("alice", "create", "d/f", 0o644, OK), ("alice", "mkdir", "d/e", 0o2755, OK),
     ("alice", "stat", "d/f"))
case("create", "setuid_bit_kept_on_create", [D("d", 0o777)],
     ("bob", "create", "d/f", 0o4755, OK), ("bob", "stat", "d/f"))
case("create", "rename_into_setgid_dir_keeps_group",
     [D("d", 0o2777, "root", "g2"), D("s", 0o777), F("s/f", 0o644, "bob")],
     ("bob", "rename", "s/f", "d/f", OK), ("bob", "stat", "d/f"))

# -- mkdir ------------------------------------------------------------------------------------

case("mkdir", "needs_write_and_search", [D("a", 0o555, "alice"), D("b", 0o333, "alice"),
                                          D("c", 0o666, "alice")],
     ("alice", "mkdir", "a/x", 0o755, EACCES), ("alice", "mkdir", "b/x", 0o755, OK),
     ("alice", "mkdir", "c/x", 0o755, EACCES), ("root", "mkdir", "a/y", 0o755, OK))
case("mkdir", "group_write_grants", [D("d", 0o770, "root", "g1")],
     ("bob", "mkdir", "d/x", 0o777, OK), ("carol", "mkdir", "d/y", 0o777, EACCES))
case("mkdir", "existing_eexist_before_eacces", [D("d", 0o555, "alice"), D("d/x", 0o755)],
     ("bob", "mkdir", "d/x", 0o755, EEXIST), ("bob", "mkdir", "d/y", 0o755, EACCES),
     ("bob", "mkdir", "d/none/y", 0o755, ENOENT))
case("mkdir", "mode_bits_kept", [D("d", 0o777)],
     ("bob", "mkdir", "d/a", 0o1777, OK), ("bob", "mkdir", "d/b", 0o2755, OK),
     ("bob", "mkdir", "d/c", 0o4755, OK), ("bob", "mkdir", "d/e", 0o000, OK))
case("mkdir", "umask_applies", [D("d", 0o777)],
     ("bob", "mkdir", "d/a", 0o777, OK), ("bob", "mkdir", "d/b", 0o1777, OK), umask=0o022)

# -- mknod: device nodes by root only, fifos and the rest by anyone ---------------------------

case("mknod", "fifo_by_anyone", [D("d", 0o777)],
     ("bob", "mknod", "d/p", "fifo", 0o644, OK), ("carol", "mkfifo", "d/q", 0o600, OK),
     ("bob", "stat", "d/p"))
case("mknod", "char_device_by_user_eperm", [D("d", 0o777)],
     ("bob", "mknod", "d/c", "chr", 0o644, 1, 3, EPERM),
     ("bob", "mknod", "d/b", "blk", 0o644, 7, 0, EPERM), ("bob", "listdir", "d", X("[]")))
case("mknod", "device_by_root", [D("d", 0o755)],
     ("root", "mknod", "d/c", "chr", 0o644, 1, 3, OK),
     ("root", "mknod", "d/b", "blk", 0o600, 7, 0, OK), ("root", "stat", "d/c"))
case("mknod", "eacces_before_eperm", [D("d", 0o755, "alice")],
     ("bob", "mknod", "d/c", "chr", 0o644, 1, 3, EACCES),
     ("bob", "mknod", "d/p", "fifo", 0o644, EACCES), ("alice", "mknod", "d/c", "chr", 0o644, 1, 3, EPERM))
case("mknod", "regular_and_socket_by_user", [D("d", 0o777)],
     ("bob", "mknod", "d/f", "reg", 0o640, OK), ("bob", "mknod", "d/s", "sock", 0o755, OK),
     ("bob", "stat", "d/s"))
case("mknod", "existing_eexist", [D("d", 0o777), F("d/f", 0o644)],
     ("bob", "mknod", "d/f", "fifo", 0o644, EEXIST),
     ("bob", "mknod", "d/f", "chr", 0o644, 1, 3, EEXIST))
case("mknod", "fifo_in_setgid_dir", [D("d", 0o2777, "root", "g3")],
     ("bob", "mkfifo", "d/p", 0o2666, OK), ("bob", "stat", "d/p"))

# -- link and fs.protected_hardlinks ----------------------------------------------------------

case("link", "own_file", [D("d", 0o777), F("d/f", 0o600, "alice")],
     ("alice", "link", "d/f", "d/g", OK), ("alice", "stat", "d/f"))
case("link", "others_file_protected", [D("d", 0o777), F("f", 0o644, "alice")],
     ("bob", "link", "f", "d/g", EPERM), ("carol", "link", "f", "d/g", EPERM))
case("link", "others_file_read_write_allowed", [D("d", 0o777), F("f", 0o666, "alice")],
     ("bob", "link", "f", "d/g", OK), ("bob", "stat", "d/g"))
case("link", "others_file_write_only_protected", [D("d", 0o777), F("f", 0o622, "alice")],
     ("bob", "link", "f", "d/g", EPERM))
case("link", "others_setuid_protected", [D("d", 0o777), F("f", 0o4777, "alice"),
                                           F("g", 0o2777, "alice"), F("h", 0o2767, "alice")],
     ("bob", "link", "f", "d/f", EPERM), ("bob", "link", "g", "d/g", EPERM),
     ("bob", "link", "h", "d/h"), ("alice", "link", "f", "d/f2", OK))
case("link", "protection_before_dir_write", [D("d", 0o755, "alice"), F("f", 0o644, "alice"),
                                               F("g", 0o666, "alice")],
     ("bob", "link", "f", "d/x", EPERM), ("bob", "link", "g", "d/x", EACCES),
     ("alice", "link", "f", "d/x", OK))
case("link", "others_fifo_and_symlink", [D("d", 0o777), ("mkfifo", "p", 0o666),
                                           ("chown", "p", "alice", None), ("symlink", "l", "p")],
     ("bob", "link", "p", "d/p", EPERM), ("bob", "link", "l", "d/l", EPERM),
     ("root", "link", "l", "d/l2", OK), ("root", "stat", "d/l2"))
case("link", "root_links_anything", [D("d", 0o755, "bob"), F("f", 0o000, "alice")],
     ("root", "link", "f", "d/g", OK), ("root", "stat", "f"))
case("link", "directory_eperm", [D("d", 0o777), D("e", 0o777, "alice")],
     ("alice", "link", "e", "d/e", EPERM), ("root", "link", "e", "d/e", EPERM))
case("link", "existing_eexist", [D("d", 0o777), F("f", 0o666, "bob"), F("d/g", 0o644, "alice")],
     ("bob", "link", "f", "d/g", EEXIST), ("bob", "link", "none", "d/h", ENOENT))
case("link", "source_needs_search", [D("s", 0o700, "alice"), F("s/f", 0o666, "bob"), D("d", 0o777)],
     ("bob", "link", "s/f", "d/f", EACCES), ("alice", "link", "s/f", "d/f", OK))

# -- unlink -----------------------------------------------------------------------------------

case("unlink", "needs_write_on_dir", [D("d", 0o755, "alice"), F("d/f", 0o666, "bob")],
     ("bob", "unlink", "d/f", EACCES), ("alice", "unlink", "d/f", OK))
case("unlink", "dir_write_suffices", [D("d", 0o777), F("d/f", 0o000, "alice")],
     ("bob", "unlink", "d/f", OK))
case("unlink", "needs_search_on_dir", [D("d", 0o666, "alice"), F("d/f", 0o666, "alice")],
     ("alice", "unlink", "d/f", EACCES), ("bob", "unlink", "d/f", EACCES))
case("unlink", "group_write_on_dir", [D("d", 0o770, "root", "g1"), F("d/f", 0o644),
                                       F("d/g", 0o644)],
     ("bob", "unlink", "d/f", OK), ("carol", "unlink", "d/g", EACCES))
case("unlink", "sticky_others_file_eperm", [D("t", 0o1777), F("t/f", 0o666, "alice")],
     ("bob", "unlink", "t/f", EPERM), ("alice", "unlink", "t/f", OK))
case("unlink", "sticky_dir_owner_may", [D("t", 0o1777, "carol"), F("t/f", 0o644, "alice")],
     ("carol", "unlink", "t/f", OK))
case("unlink", "sticky_root_may", [D("t", 0o1777, "carol"), F("t/f", 0o644, "alice")],
     ("root", "unlink", "t/f", OK))
case("unlink", "sticky_without_write_eacces", [D("t", 0o1755), F("t/f", 0o644, "alice")],
     ("bob", "unlink", "t/f", EACCES), ("alice", "unlink", "t/f", EACCES))
case("unlink", "sticky_group_writable_member", [D("t", 0o1770, "root", "g1"), F("t/f", 0o666, "alice"),
                                                 F("t/g", 0o644, "bob")],
     ("bob", "unlink", "t/f", EPERM), ("bob", "unlink", "t/g", OK))
case("unlink", "directory_eisdir", [D("d", 0o777), D("d/e", 0o777)],
     ("root", "unlink", "d/e", EISDIR), ("bob", "unlink", "d/e", EISDIR))
case("unlink", "missing_enoent", [D("d", 0o777)],
     ("bob", "unlink", "d/none", ENOENT), ("bob", "unlink", "none/f", ENOENT))
case("unlink", "symlink_not_target", [D("d", 0o777), F("f", 0o644, "alice"), ("symlink", "d/l", "../f")],
     ("bob", "unlink", "d/l", OK), ("bob", "stat", "f"))
case("unlink", "last_link_of_shared_file", [D("d", 0o777), F("d/f", 0o644, "alice"),
                                             ("link", "d/f", "d/g")],
     ("bob", "unlink", "d/f", OK), ("bob", "stat", "d/g"))

# -- rmdir ------------------------------------------------------------------------------------

case("rmdir", "not_empty", [D("d", 0o777), D("d/e", 0o777), F("d/e/f", 0o644)],
     ("root", "rmdir", "d/e", ENOTEMPTY), ("bob", "rmdir", "d/e", ENOTEMPTY))
case("rmdir", "needs_write_on_parent", [D("d", 0o755, "alice"), D("d/e", 0o777, "bob")],
     ("bob", "rmdir", "d/e", EACCES), ("alice", "rmdir", "d/e", OK))
case("rmdir", "needs_search_on_parent", [D("d", 0o666, "alice"), D("d/e", 0o777, "alice")],
     ("alice", "rmdir", "d/e", EACCES))
case("rmdir", "own_mode_irrelevant", [D("d", 0o777), D("d/e", 0o000, "alice")],
     ("bob", "rmdir", "d/e", OK))
case("rmdir", "sticky_others_dir_eperm", [D("t", 0o1777), D("t/e", 0o777, "alice")],
     ("bob", "rmdir", "t/e", EPERM), ("alice", "rmdir", "t/e", OK))
case("rmdir", "sticky_dir_owner_may", [D("t", 0o1777, "bob"), D("t/e", 0o755, "alice")],
     ("bob", "rmdir", "t/e", OK))
case("rmdir", "file_enotdir", [D("d", 0o777), F("d/f", 0o644)],
     ("bob", "rmdir", "d/f", ENOTDIR))
case("rmdir", "dot_and_dotdot", [D("d", 0o777), D("d/e", 0o777)],
     ("bob", "rmdir", "d/e/.", EINVAL), ("bob", "rmdir", "d/e/..", ENOTEMPTY),
     ("bob", "rmdir", "d/none", ENOENT))

# -- rename -----------------------------------------------------------------------------------

case("rename", "needs_write_on_target_dir", [D("a", 0o777), D("b", 0o755, "alice"),
                                              F("a/f", 0o644, "bob")],
     ("bob", "rename", "a/f", "b/f", EACCES), ("alice", "rename", "a/f", "b/f", OK))
case("rename", "needs_write_on_source_dir", [D("a", 0o755, "alice"), D("b", 0o777),
                                              F("a/f", 0o666, "bob")],
     ("bob", "rename", "a/f", "b/f", EACCES), ("bob", "rename", "a/f", "a/g", EACCES))
case("rename", "file_within_dir", [D("d", 0o777), F("d/f", 0o000, "alice")],
     ("bob", "rename", "d/f", "d/g", OK), ("bob", "stat", "d/g"))
case("rename", "dir_to_new_parent_needs_write_on_it",
     [D("a", 0o777), D("b", 0o777), D("a/mine", 0o555, "bob"), D("a/hers", 0o755, "alice"),
      D("a/open", 0o777, "alice")],
     ("bob", "rename", "a/mine", "b/mine", EACCES), ("bob", "rename", "a/hers", "b/hers", EACCES),
     ("bob", "rename", "a/open", "b/open", OK), ("root", "rename", "a/hers", "b/hers", OK),
     ("bob", "chmod", "a/mine", 0o755, OK), ("bob", "rename", "a/mine", "b/mine", OK))
case("rename", "dir_within_parent_needs_no_write_on_it", [D("a", 0o777), D("a/hers", 0o555, "alice")],
     ("bob", "rename", "a/hers", "a/h2", OK), ("bob", "stat", "a/h2"))
case("rename", "sticky_source_eperm", [D("t", 0o1777), F("t/f", 0o644, "alice"), D("t/e", 0o777, "alice")],
     ("bob", "rename", "t/f", "t/g", EPERM), ("bob", "rename", "t/e", "t/e2", EPERM),
     ("alice", "rename", "t/f", "t/g", OK))
case("rename", "sticky_target_eperm", [D("t", 0o1777), F("t/mine", 0o644, "bob"),
                                        F("t/theirs", 0o666, "alice")],
     ("bob", "rename", "t/mine", "t/theirs", EPERM), ("alice", "rename", "t/theirs", "t/mine", EPERM),
     ("bob", "rename", "t/mine", "t/new", OK))
case("rename", "sticky_dir_owner_may", [D("t", 0o1777, "carol"), F("t/f", 0o644, "alice"),
                                         F("t/g", 0o644, "bob")],
     ("carol", "rename", "t/f", "t/g", OK), ("carol", "stat", "t/g"))
case("rename", "replace_others_file_in_writable_dir", [D("d", 0o777), F("d/a", 0o600, "alice"),
                                                        F("d/b", 0o600, "carol", size=4)],
     ("bob", "rename", "d/a", "d/b", OK), ("bob", "stat", "d/b"))
case("rename", "types", [D("d", 0o777), F("d/f", 0o644, "bob"), D("d/e", 0o777, "bob"),
                          D("d/full", 0o777, "bob"), F("d/full/x", 0o644, "bob"),
                          D("d/empty", 0o777, "bob")],
     ("bob", "rename", "d/f", "d/e", EISDIR), ("bob", "rename", "d/e", "d/f", ENOTDIR),
     ("bob", "rename", "d/e", "d/full", ENOTEMPTY), ("bob", "rename", "d/e", "d/e/sub", EINVAL),
     ("bob", "rename", "d/e", "d/empty", OK), ("bob", "rename", "d/none", "d/x", ENOENT))
case("rename", "hard_links_same_file_noop", [D("d", 0o755, "alice"), F("d/f", 0o644, "alice"),
                                              ("link", "d/f", "d/g")],
     ("bob", "rename", "d/f", "d/g", OK), ("bob", "rename", "d/f", "d/h", EACCES),
     ("alice", "stat", "d/f"))
case("rename", "replace_empty_dir_in_sticky", [D("t", 0o1777), D("t/a", 0o777, "bob"),
                                                D("t/b", 0o777, "alice")],
     ("bob", "rename", "t/a", "t/b", EPERM), ("root", "rename", "t/a", "t/b", OK))
case("rename", "target_dir_needs_search", [D("a", 0o777), D("b", 0o766, "alice"),
                                            F("a/f", 0o644, "bob")],
     ("bob", "rename", "a/f", "b/f", EACCES), ("alice", "rename", "a/f", "b/f", OK))
case("rename", "symlink_renamed_not_target", [D("d", 0o777), F("f", 0o644, "alice"),
                                               ("symlink", "d/l", "../f")],
     ("bob", "rename", "d/l", "d/m", OK), ("bob", "readlink", "d/m", X('"../f"')))

# -- symlink ----------------------------------------------------------------------------------

case("symlink", "in_writable_dir", [D("d", 0o777)],
     ("bob", "symlink", "d/l", "target", OK), ("carol", "readlink", "d/l", X('"target"')),
     ("bob", "stat", "d/l"))
case("symlink", "unwritable_dir_eacces", [D("d", 0o755, "alice")],
     ("bob", "symlink", "d/l", "x", EACCES), ("alice", "symlink", "d/l", "x", OK))
case("symlink", "existing_eexist", [D("d", 0o777), F("d/f", 0o644)],
     ("bob", "symlink", "d/f", "x", EEXIST), ("bob", "symlink", "d/l", "/nowhere", OK),
     ("bob", "symlink", "d/l", "x", EEXIST))
case("symlink", "readlink_needs_search_not_read", [D("d", 0o711, "alice"), ("symlink", "d/l", "abc")],
     ("bob", "readlink", "d/l", X('"abc"')), ("root", "chmod", "d", 0o700, OK),
     ("bob", "readlink", "d/l", EACCES))
case("symlink", "follow_obeys_target_modes", [F("f", 0o600, "alice", size=2),
                                               ("symlink", "l", "f")],
     ("bob", "read", "l", EACCES), ("alice", "read", "l", X('"xx"')))

# -- truncate and write: setuid and setgid cleared --------------------------------------------

case("truncate", "needs_write", [F("f", 0o644, "alice", size=10)],
     ("bob", "truncate", "f", 0, EACCES), ("alice", "truncate", "f", 3, OK),
     ("bob", "stat", "f"))
case("truncate", "group_write", [F("f", 0o464, "alice", "g1", size=10)],
     ("alice", "truncate", "f", 1, EACCES), ("bob", "truncate", "f", 20, OK),
     ("carol", "truncate", "f", 0, EACCES))
case("truncate", "root_ignores_modes", [F("f", 0o444, "alice", size=10)],
     ("root", "truncate", "f", 4, OK), ("root", "stat", "f"))
case("truncate", "directory_eisdir", [D("d", 0o777)],
     ("root", "truncate", "d", 0, EISDIR), ("bob", "truncate", "d", 0, EISDIR))
case("truncate", "needs_search", [D("d", 0o700, "alice"), F("d/f", 0o666, "alice")],
     ("bob", "truncate", "d/f", 0, EACCES))
case("truncate", "negative_einval", [F("f", 0o666, "alice")],
     ("bob", "truncate", "f", -1, EINVAL))
case("truncate", "clears_setuid_for_non_root", [F("f", 0o6777, "alice", size=10),
                                                 F("g", 0o6777, "alice", size=10)],
     ("bob", "truncate", "f", 5, OK), ("bob", "stat", "f"),
     ("alice", "truncate", "g", 5, OK), ("alice", "stat", "g"))
case("truncate", "root_keeps_setuid", [F("f", 0o6777, "alice", size=10)],
     ("root", "truncate", "f", 5, OK), ("root", "stat", "f"))
case("truncate", "setgid_without_group_exec_kept", [F("f", 0o2666, "alice", size=10)],
     ("bob", "truncate", "f", 5, OK), ("bob", "stat", "f"))
case("truncate", "ftruncate_clears_setuid", [F("f", 0o4666, "alice", size=10)],
     ("bob", "ftruncate", "f", 2, OK), ("bob", "stat", "f"))
case("truncate", "to_same_size", [F("f", 0o6777, "alice", size=10)],
     ("bob", "truncate", "f", 10, OK), ("bob", "stat", "f"))
case("write", "clears_setuid_for_non_root", [F("f", 0o4777, "alice"), F("g", 0o6775, "alice", "g1")],
     ("bob", "write", "f", "abc", X("3")), ("bob", "stat", "f"),
     ("bob", "write", "g", "abc", X("3")), ("bob", "stat", "g"))
case("write", "owner_write_clears_too", [F("f", 0o6755, "alice")],
     ("alice", "write", "f", "abc", X("3")), ("alice", "stat", "f"))
case("write", "root_keeps_setuid", [F("f", 0o6755, "alice")],
     ("root", "write", "f", "abc", X("3")), ("root", "stat", "f"))
case("write", "setgid_without_group_exec_kept", [F("f", 0o2666, "alice")],
     ("bob", "write", "f", "abc", X("3")), ("bob", "stat", "f"))
case("write", "read_only_eacces", [F("f", 0o444, "alice")],
     ("alice", "write", "f", "abc", EACCES), ("bob", "write", "f", "abc", EACCES))
case("write", "trunc_open_clears_setuid", [F("f", 0o4777, "alice", size=4)],
     ("bob", "open", "f", "w|trunc", OK), ("bob", "stat", "f"))

# -- utimensat: NOW needs write or ownership, explicit times need ownership -------------------

case("utimes", "owner_explicit", [F("f", 0o444, "alice")],
     ("alice", "utimes", "f", T1, T2, OK), ("alice", "times", "f", X(f"[{T1}, {T2}]")))
case("utimes", "writer_explicit_eperm", [F("f", 0o666, "alice")],
     ("bob", "utimes", "f", T1, T2, EPERM), ("bob", "times", "f"))
case("utimes", "writer_now", [F("f", 0o666, "alice"), ("utimes", "f", T1, T1)],
     ("bob", "utimes", "f", OK), ("bob", "times", "f", X('["now", "now"]')))
case("utimes", "writer_now_now", [F("f", 0o666, "alice"), ("utimes", "f", T1, T1)],
     ("bob", "utimes", "f", "now", "now", OK), ("bob", "times", "f", X('["now", "now"]')))
case("utimes", "stranger_now_eacces", [F("f", 0o644, "alice"), ("utimes", "f", T1, T1)],
     ("bob", "utimes", "f", EACCES), ("bob", "utimes", "f", "now", "now", EACCES),
     ("bob", "times", "f", X(f"[{T1}, {T1}]")))
case("utimes", "stranger_explicit_eperm", [F("f", 0o644, "alice")],
     ("bob", "utimes", "f", T1, T2, EPERM))
case("utimes", "owner_now_without_write", [F("f", 0o444, "alice"), ("utimes", "f", T1, T1)],
     ("alice", "utimes", "f", OK), ("alice", "times", "f", X('["now", "now"]')))
case("utimes", "root_explicit", [F("f", 0o000, "alice")],
     ("root", "utimes", "f", T2, T1, OK), ("root", "times", "f", X(f"[{T2}, {T1}]")))
case("utimes", "omit_omit_by_stranger", [F("f", 0o644, "alice"), ("utimes", "f", T1, T1)],
     ("bob", "utimes", "f", "omit", "omit"), ("bob", "times", "f"))
case("utimes", "now_and_omit_by_writer", [F("f", 0o666, "alice"), ("utimes", "f", T1, T1)],
     ("bob", "utimes", "f", "now", "omit"), ("bob", "times", "f"),
     ("bob", "utimes", "f", "omit", "now"), ("bob", "times", "f"))
case("utimes", "now_and_explicit_by_writer", [F("f", 0o666, "alice")],
     ("bob", "utimes", "f", "now", T1), ("bob", "utimes", "f", T1, "omit"))
case("utimes", "group_writer_now", [F("f", 0o464, "alice", "g1"), ("utimes", "f", T1, T1)],
     ("bob", "utimes", "f", OK), ("alice", "utimes", "f", T1, T1, OK), ("carol", "utimes", "f", EACCES))
case("utimes", "follows_symlink", [F("f", 0o644, "alice"), ("symlink", "l", "f")],
     ("alice", "utimes", "l", T1, T2, OK), ("alice", "times", "f", X(f"[{T1}, {T2}]")),
     ("bob", "utimes", "l", EACCES))
case("utimes", "directory", [D("d", 0o777, "alice"), ("utimes", "d", T1, T1)],
     ("bob", "utimes", "d", T2, T2, EPERM), ("bob", "utimes", "d", OK),
     ("bob", "times", "d", X('["now", "now"]')))

# -- setxattr user.* --------------------------------------------------------------------------

case("xattr", "owner_sets_user", [F("f", 0o644, "alice")],
     ("alice", "setxattr", "f", "user.k", "v", OK), ("carol", "getxattr", "f", "user.k", X('"v"')))
case("xattr", "writer_sets_user", [F("f", 0o666, "alice")],
     ("bob", "setxattr", "f", "user.k", "w", OK), ("alice", "getxattr", "f", "user.k", X('"w"')))
case("xattr", "stranger_eacces", [F("f", 0o644, "alice"), ("setxattr", "f", "user.k", "v")],
     ("bob", "setxattr", "f", "user.k", "w", EACCES), ("alice", "getxattr", "f", "user.k", X('"v"')))
case("xattr", "get_needs_read", [F("f", 0o600, "alice"), ("setxattr", "f", "user.k", "v")],
     ("bob", "getxattr", "f", "user.k", EACCES), ("root", "getxattr", "f", "user.k", X('"v"')))
case("xattr", "sticky_dir_others_eperm", [D("t", 0o1777), D("u", 0o777)],
     ("bob", "setxattr", "t", "user.k", "v", EPERM), ("bob", "setxattr", "u", "user.k", "v", OK),
     ("root", "setxattr", "t", "user.k", "v", OK))
case("xattr", "trusted_root_only", [F("f", 0o666, "alice")],
     ("alice", "setxattr", "f", "trusted.k", "v", EPERM),
     ("root", "setxattr", "f", "trusted.k", "v", OK))
case("xattr", "user_on_fifo_eperm", [D("d", 0o777), ("mkfifo", "d/p", 0o666),
                                      ("chown", "d/p", "alice", None)],
     ("alice", "lsetxattr", "d/p", "user.k", "v", EPERM))
