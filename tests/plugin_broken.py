"""A policy module that fails on import (the registry must say so in one line)."""

raise RuntimeError("this module is broken on purpose")
