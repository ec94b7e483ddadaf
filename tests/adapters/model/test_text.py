"""Texts for perplexity and prompts: the bundled ones by name, the user's own as a UTF-8 file; a
file that cannot be text is one clear error naming it and ``--text``."""

from __future__ import annotations

import pytest

from adapters.decoding.quality_check import text_windows
from adapters.model.text import PYTHON_DOCS, text_source
from sim.errors import UserError


def test_a_utf8_file_is_read_whole(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("\ufeffLine one: caf\u00e9.\nLine two.\n".encode())
    assert text_source(str(path)) == "Line one: caf\u00e9.\nLine two.\n"  # the BOM dropped
    assert text_source(PYTHON_DOCS).count("\n") > 1000  # the bundled names still resolve


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, "no such file"),
    ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8 text"),
    ("blank.txt", b" \n\t\n", "holds no text"),
    ("binary.bin", b"ab\x00cd", "NUL"),
    ("folder.d", "dir", "not a file"),
])
def test_a_file_that_is_not_text_is_one_error_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        text_source(str(path))
    assert err.value.file == str(path) and err.value.field == "--text"
    assert message in str(err.value) and len(err.value.lines) == 1


def test_an_unknown_name_lists_what_is_accepted():
    with pytest.raises(UserError, match="path of a UTF-8 text file") as err:
        text_source("shakespeare")
    assert err.value.field == "--text"


def test_a_text_too_short_for_its_windows_is_refused():
    ids = list(range(5000))
    assert [w[0] for w in text_windows(ids, 2, 2048)] == [0, 1476]
    assert [len(w) for w in text_windows(ids, 1, 5000)] == [5000]
    # two windows of 2,048 tokens need their starts 1,024 apart: 4,096 tokens
    with pytest.raises(UserError, match="notes.txt holds 4000 tokens; 2 windows of 2048 tokens "
                                        "need 4096") as err:
        text_windows(ids[:4000], 2, 2048, "notes.txt")
    assert err.value.field == "--text"
    with pytest.raises(UserError, match="1 window of 5001 tokens need 5001"):
        text_windows(ids, 1, 5001)
