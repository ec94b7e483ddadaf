"""Token-by-token generation on our ``Transformer`` with timings: prefill the prompt, then one
``decode_one_token`` per new token over a contiguous K/V cache; greedy or temperature / top-k
sampling; stop at the end-of-sequence token.

Times are wall-clock seconds (``time.perf_counter``) read after synchronizing the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from adapters.model.transformer import Transformer, decode_one_token, prefill


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the next token is chosen.  ``temperature`` 0 is greedy (argmax); above 0 the logits are
    divided by it and sampled, from the ``top_k`` most likely tokens only when ``top_k`` > 0,
    with a generator seeded by ``seed`` (None: torch's default generator)."""

    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class Generation:
    """What one prompt produced.  ``token_ids`` are the new tokens only (ending with the EOS token
    when ``finish_reason`` is ``"eos"``).  ``prefill_s``: prompt in, first new token chosen;
    ``decode_s``: the remaining ``len(token_ids) - 1`` tokens."""

    token_ids: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    finish_reason: str  # "eos" or "length"

    @property
    def decode_tok_s(self) -> float:
        """Decode tokens per second (tokens after the first over ``decode_s``; 0.0 if none)."""
        steps = len(self.token_ids) - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA and ROCm run asynchronously; CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Picker:
    """logits [1, V] -> next token [1, 1] on the logits' device, per ``Sampling``."""

    def __init__(self, sampling: Sampling, device: torch.device):
        self.s = sampling
        self.gen: torch.Generator | None = None
        if sampling.temperature > 0 and sampling.seed is not None:
            self.gen = torch.Generator(device=device).manual_seed(sampling.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.s.temperature <= 0:
            return logits.argmax(dim=-1, keepdim=True)
        scaled = logits.float() / self.s.temperature
        if 0 < self.s.top_k < scaled.shape[-1]:
            kth = torch.topk(scaled, self.s.top_k, dim=-1).values[..., -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        return torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=self.gen)


@torch.inference_mode()
def generate(model: Transformer, prompt_ids: list[int], max_new_tokens: int,
             sampling: Sampling = Sampling(), eos_id: int | None = None) -> Generation:
    """Generate up to ``max_new_tokens`` after ``prompt_ids`` (batch 1) on the model's device.
    Stops after ``eos_id`` unless ``sampling.ignore_eos``."""
    device = model.tok_embeddings.weight.device
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # [1, T]
    T = prompt.shape[1]
    if max_new_tokens <= 0:
        return Generation([], T, 0.0, 0.0, "length")
    cache = model.new_cache(1, T + max_new_tokens)
    pick = _Picker(sampling, device)
    stop_id = None if sampling.ignore_eos else eos_id
    synchronize(device)
    t0 = time.perf_counter()
    token = pick(prefill(model, prompt, cache))  # [1, 1]
    tokens = [token]
    finished = stop_id is not None and int(token) == stop_id
    synchronize(device)
    t1 = time.perf_counter()
    for i in range(1, 0 if finished else max_new_tokens):
        token = pick(decode_one_token(model, token, cache, T + i - 1))
        tokens.append(token)
        # reading the id waits for the device: only when it can stop the loop
        if stop_id is not None and int(token) == stop_id:
            finished = True
            break
    synchronize(device)
    t2 = time.perf_counter()
    ids = torch.cat(tokens, dim=1)[0].tolist()
    return Generation(ids, T, t1 - t0, t2 - t1, "eos" if finished else "length")
