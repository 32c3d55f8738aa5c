"""The node daemon (`grid serve`) and the CLI's way of reaching it. See docs/daemon.md."""
