"""The ``halo`` command: one module per command group; :func:`main` is the entry point."""

from halo.cli.app import main

__all__ = ["main"]
