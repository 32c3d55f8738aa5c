"""Spawns: the filesystem archive format, the copy-on-write engine, and the exporters
(9P, FUSE, SFTP) over one vfs. Imports store and ndb, never grid or replication."""
