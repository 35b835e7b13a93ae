"""The model's shape and math, read once from an HF `config.json` (Llama family)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .defaults import DEFAULT_DESIGN, DEFAULT_KNOBS, DESIGN_OPTIONS


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama-3.1 frequency scaling; field names as in HF's `rope_parameters`."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Llama3RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    dtype: str
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads((Path(model_dir) / "config.json").read_text()))

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        """Raises ValueError for anything that would change the math we implement."""
        _check_supported(raw)
        heads = raw["num_attention_heads"]
        eos = raw.get("eos_token_id")
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(_rope(raw).get("rope_theta", raw.get("rope_theta", 10000.0))),
            rope_scaling=_rope_scaling(raw),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            dtype=str(raw.get("dtype") or raw.get("torch_dtype") or "float32"),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
        )


def _rope(raw: dict) -> dict:
    # transformers >= 5 writes `rope_parameters` (holding rope_theta too); older
    # checkpoints have top-level `rope_theta` plus an optional `rope_scaling`.
    return raw.get("rope_parameters") or raw.get("rope_scaling") or {}


def _rope_scaling(raw: dict) -> Llama3RopeScaling | None:
    rope = _rope(raw)
    if rope.get("rope_type", rope.get("type", "default")) == "default":
        return None
    return Llama3RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(
            raw.get("original_max_position_embeddings")
            or rope.get("original_max_position_embeddings")
            or raw.get("max_position_embeddings", 2048)
        ),
    )


def _check_supported(raw: dict) -> None:
    def unsupported(field: str, value: object) -> ValueError:
        return ValueError(f"config.json: {field}={value!r} is not supported by this engine (Llama decoder only)")

    if raw.get("model_type", "llama") != "llama":
        raise unsupported("model_type", raw["model_type"])
    for field in ("attention_bias", "mlp_bias"):
        if raw.get(field):
            raise unsupported(field, raw[field])
    if raw.get("hidden_act", "silu") != "silu":
        raise unsupported("hidden_act", raw["hidden_act"])
    rope = _rope(raw)
    if rope and all(isinstance(v, dict) for v in rope.values()):
        raise unsupported("rope_parameters", "per-layer-type")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise unsupported("rope_type", rope_type)
    partial = rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise unsupported("partial_rotary_factor", partial)


@dataclass(frozen=True)
class EngineConfig:
    """What this engine was asked to be: the candidate's `[design]` plus its `[knobs]`.

    The design is read from the `candidate.toml` beside this package (the candidate's
    own directory), so one template serves every point of the design space; code that
    builds an engine directly may pass `knobs["design"]` instead.
    """

    scheduler: str
    kv_cache: str
    prefix_cache: bool
    attention: str
    compile: bool
    dtype: str
    speculation: str  # "off", or where drafts come from: "prompt_lookup", "jump_forward"
    step_loop: str
    linear: str
    # knobs (defaults: defaults.DEFAULT_KNOBS)
    num_threads: int
    max_num_seqs: int
    max_num_batched_tokens: int
    batch_wait_ms: float
    max_model_len: int
    block_size: int
    num_kv_blocks: int
    spec_k: int
    spec_ngram: int
    engine_workers: int

    @classmethod
    def resolve(cls, knobs: dict | None) -> EngineConfig:
        knobs = dict(knobs or {})
        design = {**DEFAULT_DESIGN, **_candidate_design(), **knobs.pop("design", {})}
        for name, options in DESIGN_OPTIONS.items():
            if design[name] not in options:
                raise ValueError(f"design.{name} = {design[name]!r}: expected one of {', '.join(options)}")
        values = {**DEFAULT_KNOBS, **knobs}
        config = cls(
            scheduler=design["scheduler"], kv_cache=design["kv_cache"], prefix_cache=design["prefix_cache"] == "on",
            attention=design["attention"], compile=design["compile"] == "on", dtype=design["dtype"],
            speculation=design["speculation"], step_loop=design["step_loop"], linear=design["linear"],
            **{name: type(default)(values[name]) for name, default in DEFAULT_KNOBS.items()},
        )
        config.check()
        return config

    def check(self) -> None:
        """Rejects combinations this engine does not implement, naming the choice."""
        if self.scheduler != "serial" and self.kv_cache == "dynamic":
            raise ValueError(f"design.scheduler = {self.scheduler!r} batches requests and needs kv_cache = slab or paged")
        if self.prefix_cache and self.kv_cache != "paged":
            raise ValueError("design.prefix_cache = 'on' needs kv_cache = 'paged'")
        if self.linear == "onednn" and self.compile:  # inductor lowers the packed op only on frozen constants
            raise ValueError("design.linear = 'onednn' needs compile = 'off' (torch.compile cannot lower the packed matmul)")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.block_size < 1 or self.num_kv_blocks < 1 or self.spec_k < 1 or self.spec_ngram < 1:
            raise ValueError("knobs max_num_seqs, max_num_batched_tokens, block_size, num_kv_blocks, spec_k and spec_ngram must be positive")
        if self.engine_workers < 1:
            raise ValueError("knob engine_workers must be positive")


def _candidate_design() -> dict[str, str]:
    import tomllib

    path = Path(__file__).resolve().parent.parent / "candidate.toml"
    if not path.is_file():
        return {}
    return dict(tomllib.loads(path.read_text()).get("design", {}))
