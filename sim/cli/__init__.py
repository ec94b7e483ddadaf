"""The ``infer-os`` command line."""

from sim.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
