"""The ``infer-os`` command line."""

from sim.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
