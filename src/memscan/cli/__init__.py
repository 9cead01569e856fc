"""The command line: a thin Typer layer over the library."""

from memscan.cli.app import app, main

__all__ = ["app", "main"]
