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
    """A ``tokenizers.Tokenizer`` with the ids of its begin / end-of-sequence tokens.

    ``encode`` adds no BOS/EOS itself: callers that want one prepend ``bos_id``.
    """

    tokenizer: Tokenizer
    bos_id: int | None
    eos_id: int | None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)


# -- from GGUF metadata ---------------------------------------------------------------------------
def _metadata(reader: gguf.GGUFReader, key: str, required: bool = True) -> Any:
    field = reader.get_field(key)
    if field is None:
        if required:
            raise UserError("missing GGUF tokenizer metadata", file=str(reader.data.filename),
                            field=key)
        return None
    return field.contents()


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


def tokenizer_from_reader(reader: gguf.GGUFReader) -> TextTokenizer:
    """Rebuild the byte-level BPE tokenizer stored in an open GGUF file."""
    kind = _metadata(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise UserError(f"tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')",
                        file=str(reader.data.filename), field="tokenizer.ggml.model")
    tokens: list[str] = _metadata(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _metadata(reader, "tokenizer.ggml.merges")]
    types = _metadata(reader, "tokenizer.ggml.token_type", required=False) or []
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(_metadata(reader, "tokenizer.ggml.pre", required=False))
    tok.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, t in enumerate(types) if int(t) in _SPECIAL_TYPES]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = _metadata(reader, "tokenizer.ggml.bos_token_id", required=False)
    eos = _metadata(reader, "tokenizer.ggml.eos_token_id", required=False)
    return TextTokenizer(tok, None if bos is None else int(bos), None if eos is None else int(eos))


def tokenizer_from_gguf(path: str | Path) -> TextTokenizer:
    """The tokenizer stored in a GGUF file's ``tokenizer.ggml.*`` metadata."""
    path = Path(path)
    if not path.is_file():
        raise UserError("GGUF file not found", file=str(path))
    return tokenizer_from_reader(gguf.GGUFReader(path))


# -- from a Hugging Face directory ----------------------------------------------------------------
def _special_id(tok: Tokenizer, directory: Path, which: str) -> int | None:
    """Id of ``bos`` / ``eos`` from tokenizer_config.json (token text) or config.json (id)."""
    for name in ("tokenizer_config.json", "config.json"):
        file = directory / name
        if not file.is_file():
            continue
        data = json.loads(file.read_text())
        value = data.get(f"{which}_token")
        if isinstance(value, dict):  # {"content": "<s>", ...}
            value = value.get("content")
        if isinstance(value, str) and tok.token_to_id(value) is not None:
            return tok.token_to_id(value)
        if isinstance(data.get(f"{which}_token_id"), int):
            return data[f"{which}_token_id"]
    return None


def tokenizer_from_dir(path: str | Path) -> TextTokenizer:
    """The ``tokenizer.json`` of a local Hugging Face model directory (or that file itself)."""
    path = Path(path)
    file = path if path.is_file() else path / "tokenizer.json"
    if not file.is_file():
        raise UserError("no tokenizer.json (only the fast-tokenizer format is supported)",
                        file=str(file))
    tok = Tokenizer.from_file(str(file))
    return TextTokenizer(tok, _special_id(tok, file.parent, "bos"),
                         _special_id(tok, file.parent, "eos"))
