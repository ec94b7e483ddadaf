"""Runs: build one scenario variant's run (``RunSetup``), run it, its metrics and output files, and
prediction against measurement."""
