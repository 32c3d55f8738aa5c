"""Replication: certificates and TLS contexts, tunnels, incremental block and name
replication between nodes. Imports store and ndb, never grid or spawn."""
