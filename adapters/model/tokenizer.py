"""Text <-> token ids for the real executors: a byte-level BPE tokenizer rebuilt from a GGUF file's
``tokenizer.ggml.*`` metadata, or loaded from a local Hugging Face ``tokenizer.json``.

Nothing is downloaded.  Only the ``gpt2`` (byte-level BPE) GGUF tokenizer model is supported,
which covers SmolLM2, GPT-2, Llama 3 and most recent Llama-family models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from adapters.model.gguf_file import field_value, open_gguf, str_list_field
from sim.errors import UserError

# llama.cpp pre-tokenizer names (``tokenizer.ggml.pre``) that split every digit on its own before
# the GPT-2 regex (llama-vocab.cpp: STARCODER / REFACT / COMMAND_R / SMOLLM / CODESHELL / EXAONE).
_DIGIT_SPLIT_PRE = {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva"}
# llama-3 style pre-tokenizer regex (llama-vocab.cpp LLAMA3); used for pre = "llama-bpe"
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# gguf token types (gguf.TokenType) that are whole special tokens, never split by BPE
_SPECIAL_TYPES = {int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)}


@dataclass(frozen=True)
class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with the ids of its begin / end-of-sequence tokens, the file it
    came from (``source``, named in errors) and the vocabulary size of the model it feeds
    (``model_vocab``: an id the model has no embedding for is a ``UserError``, see ``encode``).

    ``encode`` adds no BOS/EOS itself: callers that want one prepend ``bos_id``.
    """

    tokenizer: Tokenizer
    bos_id: int | None
    eos_id: int | None
    source: str | None = None
    model_vocab: int | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        if self.model_vocab is not None and ids and max(ids) >= self.model_vocab:
            bad = max(ids)
            raise UserError(f"the tokenizer gives token {self.tokenizer.id_to_token(bad)!r} the "
                            f"id {bad}, outside the model's vocabulary of {self.model_vocab} "
                            "(a tokenizer for another model?)", file=self.source)
        return ids

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)


# -- from GGUF metadata ---------------------------------------------------------------------------
def _pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    """The split before BPE: byte-level with the GPT-2 regex, per llama.cpp's ``pre`` name."""
    if pre == "llama-bpe":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def gguf_has_tokenizer(reader: gguf.GGUFReader) -> bool:
    """Whether the file stores a tokenizer at all (``tokenizer.ggml.model``)."""
    return reader.get_field("tokenizer.ggml.model") is not None


def _merges(reader: gguf.GGUFReader) -> list[tuple[str, str]]:
    merges = str_list_field(reader, "tokenizer.ggml.merges") or []
    for i, merge in enumerate(merges):
        if " " not in merge:
            raise UserError(f"merge {i} ({merge!r}) is not two tokens separated by a space",
                            file=str(reader.data.filename), field="tokenizer.ggml.merges")
    return [tuple(m.split(" ", 1)) for m in merges]  # type: ignore[misc]


def _token_id(reader: gguf.GGUFReader, key: str, size: int) -> int | None:
    value = field_value(reader, key, required=False)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise UserError(f"expected a token id from 0 to {size - 1}, got {value!r}",
                        file=str(reader.data.filename), field=key)
    return value


def tokenizer_from_reader(reader: gguf.GGUFReader) -> TextTokenizer:
    """Rebuild the byte-level BPE tokenizer stored in an open GGUF file; a ``UserError`` naming
    the file and the key for metadata that is missing or malformed."""
    file = str(reader.data.filename)
    if not gguf_has_tokenizer(reader):
        raise UserError("the file holds no tokenizer (no tokenizer.ggml.* metadata): this model "
                        "takes token ids only", file=file, field="tokenizer.ggml.model")
    kind = field_value(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise UserError(f"tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')",
                        file=file, field="tokenizer.ggml.model")
    tokens = str_list_field(reader, "tokenizer.ggml.tokens") or []
    if not tokens:
        raise UserError("no tokens", file=file, field="tokenizer.ggml.tokens")
    merges = _merges(reader)
    types = field_value(reader, "tokenizer.ggml.token_type", required=False) or []
    if not isinstance(types, list) or not all(isinstance(t, int) for t in types):
        raise UserError("expected a list of integers", file=file,
                        field="tokenizer.ggml.token_type")
    pre = field_value(reader, "tokenizer.ggml.pre", required=False)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    try:
        tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    except Exception as err:  # tokenizers raises plain Exception for an inconsistent vocabulary
        raise UserError(f"cannot build the tokenizer ({err})", file=file,
                        field="tokenizer.ggml.merges") from None
    tok.pre_tokenizer = _pre_tokenizer(pre if isinstance(pre, str) else None)
    tok.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, t in enumerate(types[:len(tokens)]) if t in _SPECIAL_TYPES]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return TextTokenizer(tok, _token_id(reader, "tokenizer.ggml.bos_token_id", len(tokens)),
                         _token_id(reader, "tokenizer.ggml.eos_token_id", len(tokens)), file)


def tokenizer_from_gguf(path: str | Path) -> TextTokenizer:
    """The tokenizer stored in a GGUF file's ``tokenizer.ggml.*`` metadata."""
    return tokenizer_from_reader(open_gguf(path))


# -- from a Hugging Face directory ----------------------------------------------------------------
def _json_object(file: Path) -> dict[str, Any]:
    """A JSON file holding an object; a ``UserError`` naming it otherwise."""
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise UserError(f"cannot read JSON ({err})", file=str(file)) from None
    if not isinstance(data, dict):
        raise UserError(f"expected a JSON object, got {type(data).__name__}", file=str(file))
    return data


def _special_id(tok: Tokenizer, directory: Path, which: str) -> int | None:
    """Id of ``bos`` / ``eos`` from tokenizer_config.json (token text) or config.json (id)."""
    for name in ("tokenizer_config.json", "config.json"):
        file = directory / name
        if not file.is_file():
            continue
        data = _json_object(file)
        value = data.get(f"{which}_token")
        if isinstance(value, dict):  # {"content": "<s>", ...}
            value = value.get("content")
        if isinstance(value, str) and tok.token_to_id(value) is not None:
            return tok.token_to_id(value)
        number = data.get(f"{which}_token_id")
        if isinstance(number, int) and not isinstance(number, bool) and number >= 0:
            return number
    return None


def tokenizer_file(path: str | Path) -> Path:
    """The ``tokenizer.json`` of a model directory (or ``path`` itself when it is a file)."""
    path = Path(path)
    return path if path.is_file() else path / "tokenizer.json"


def tokenizer_from_dir(path: str | Path) -> TextTokenizer:
    """The ``tokenizer.json`` of a local Hugging Face model directory (or that file itself); a
    ``UserError`` naming the file when it is missing, not JSON, not UTF-8 or not a tokenizer."""
    file = tokenizer_file(path)
    if not file.is_file():
        raise UserError("no tokenizer.json (only the fast-tokenizer format is supported)",
                        file=str(file))
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises plain Exception for every parse error
        raise UserError(f"cannot read tokenizer ({err})", file=str(file)) from None
    if tok.get_vocab_size(with_added_tokens=True) == 0:
        raise UserError("the tokenizer has no tokens", file=str(file))
    return TextTokenizer(tok, _special_id(tok, file.parent, "bos"),
                         _special_id(tok, file.parent, "eos"), str(file))
