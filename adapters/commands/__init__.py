"""Subcommands the adapters add to ``infer-os`` (``infer_os.commands`` entry points)."""
