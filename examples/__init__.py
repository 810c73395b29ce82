"""Runnable example apps (a package, so worker processes can import their tasks)."""
