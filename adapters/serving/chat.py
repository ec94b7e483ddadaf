"""Chat messages -> prompt text, by the model's own chat template.

The template comes from the tokenizer's metadata: a GGUF file's ``tokenizer.chat_template``, or
a Hugging Face folder's ``tokenizer_config.json`` ``chat_template``.  It is a Jinja template,
rendered in Jinja's sandbox as transformers does (``messages``, ``add_generation_prompt=True``,
``bos_token``, ``eos_token``, ``raise_exception``).  A model without one gets a plain format,
one ``role: content`` line per message and ``assistant:`` last; the server says at start which
one it uses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sim.errors import UserError


def _gguf_template(path: Path) -> str | None:
    from adapters.model.gguf_file import open_gguf

    field = open_gguf(path).fields.get("tokenizer.chat_template")
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def _hf_template(folder: Path) -> str | None:
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None


def find_template(tokenizer) -> str | None:
    source = Path(tokenizer.source) if tokenizer is not None and tokenizer.source else None
    if source is None:
        return None
    if source.suffix == ".gguf":
        return _gguf_template(source)
    return _hf_template(source.parent)


def plain(messages: list[dict]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def chat_renderer(tokenizer) -> tuple[Callable[[list[dict]], str], str]:
    """(messages -> prompt text, a description of the template used)."""
    source = find_template(tokenizer)
    if source is None:
        return plain, "plain 'role: content' lines (the model has no chat template)"
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        template = env.from_string(source)
    except TemplateError as err:
        raise UserError(f"the model's chat template does not parse ({err})",
                        file=tokenizer.source) from None
    tok = tokenizer.tokenizer

    def special(token_id):
        return tok.id_to_token(token_id) if token_id is not None else ""

    def render(messages: list[dict]) -> str:
        from adapters.serving.protocol import ApiError

        try:
            return template.render(messages=messages, add_generation_prompt=True,
                                   bos_token=special(tokenizer.bos_id),
                                   eos_token=special(tokenizer.eos_id))
        except TemplateError as err:
            raise ApiError(400, f"the model's chat template refused the messages: {err}",
                           "messages") from None

    return render, "the model's chat template"
