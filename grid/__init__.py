"""grid: the CLI, the node daemon, configuration — the layer that wires store, ndb, spawn and
replication together. Nothing below imports this package."""

__version__ = "0.1.0"
