"""The candidate contract: what every serving-system candidate implements.

A candidate is a directory holding `candidate.toml` and its engine source:

    [engine]
    entrypoint = "engine:create_engine"   # module path relative to the candidate dir
    [design]                              # named design choices (strings)
    [knobs]                               # numeric / categorical values

The entrypoint is `create_engine(model_dir: str, device: str, knobs: dict) -> Engine`
where `Engine` has `async def generate(request: GenerationRequest) -> AsyncIterator
[TokenOut]` and `async def close()`, and optionally `capabilities` (below). Candidates
may import this module (it is the one piece of vibeserve_ray they run), so it stays
free of heavy imports at module level.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Protocol

from vibeserve_ray.errors import BadInput

CANDIDATE_FILE = "candidate.toml"


@dataclass(frozen=True)
class GenerationRequest:
    """One request as the engine sees it: token ids in, token ids out.

    temperature == 0 means greedy. With temperature > 0 the token at step t is chosen
    by `sample_token` (below) from the noise of (seed, t), so a seeded request gives
    the same tokens whatever else is batched with it. `stop_token_ids` end the stream
    after the stop token is emitted. `prediction` is a guess of the output (token ids),
    usable for speculation; it never changes which tokens are produced.

    Two optional features, asked for only of engines that list them in `capabilities`:
    `top_logprobs` > 0 (with `want_logprobs`) fills each TokenOut's `top_logprobs` with
    that many most likely tokens; `prompt_logprobs` makes the stream begin with one
    TokenOut per prompt token (its id, and its logprob given the tokens before it: None
    for the first), before the generated tokens.
    """

    prompt_token_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    response_format: dict[str, Any] | None = None
    prediction: list[int] | None = None
    want_logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False


@dataclass(frozen=True)
class TokenOut:
    """One token; `logprob` is log_softmax of the raw (untempered) logits at it, and
    `top_logprobs` the most likely (token id, logprob) pairs at its position, best first."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None


# What an engine may list in its `capabilities` (a set of names). The front asks an
# engine for a feature only when it lists it, and answers a request that needs a
# missing one with a 400 naming the parameter: an engine that does not know a flag would
# otherwise ignore it and the client would get wrong numbers.
TOP_LOGPROBS = "top_logprobs"
PROMPT_LOGPROBS = "prompt_logprobs"
RESPONSE_FORMAT = "response_format"  # decoding constrained to `response_format` (JSON mode)


class RequestRefused(ValueError):
    """Raised by `generate` before its first token when this engine cannot serve the
    request (longer than its cache holds, ...): the front answers 400 with the message.
    Any other exception is the engine's failure (a 500)."""


class Engine(Protocol):
    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenOut]: ...

    async def close(self) -> None: ...


def capabilities(engine: object) -> frozenset[str]:
    """The optional features `engine` declares (none for an engine written without them)."""
    return frozenset(getattr(engine, "capabilities", ()))


# --- the sampling rule -------------------------------------------------------------
# Exact comparison of sampled outputs needs every engine and the reference to draw the
# same token from the same distribution. We fix the rule as an exponential race
# (argmax of log p - log E, E ~ Exp(1)), equivalent to sampling from p but robust to
# tiny float differences in the logits, with E drawn from a CPU generator keyed on
# (seed, step) so batch composition cannot change it.


def sampling_noise(seed: int, step: int, vocab_size: int):
    """Exp(1) noise for one request's step `step`, identical on every machine."""
    # torch, xgrammar and transformers load where used: every light path imports the contract
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    return torch.empty(vocab_size, dtype=torch.float32).exponential_(generator=gen)


def sampling_scores(logits, temperature: float, top_p: float, seed: int, step: int):
    """Scores whose argmax is the sampled token (1-D logits, float32 on any device)."""
    # torch loads where used (see sampling_noise)
    import torch

    logits = logits.float()
    if temperature <= 0.0:
        return logits
    logp = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = torch.sort(logp, descending=True)
        cum = torch.cumsum(sorted_logp.exp(), dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always)
        drop_sorted = (cum - sorted_logp.exp()) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logp = logp.masked_fill(drop, float("-inf"))
    noise = sampling_noise(seed, step, logits.shape[-1]).to(logits.device)
    return logp - noise.log()


def sample_token(logits, temperature: float, top_p: float, seed: int, step: int) -> int:
    return int(sampling_scores(logits, temperature, top_p, seed, step).argmax())


# --- constrained decoding (response_format) ------------------------------------------
# A request with a `response_format` is decoded under xgrammar's token mask for it: at
# each step every token the grammar forbids gets logit -inf before the sampling rule
# runs (logprobs stay those of the raw logits), and the output ends with the stop token
# the grammar accepts once the document is complete, whatever `ignore_eos` says. At
# `max_tokens` the output is cut where it is (finish_reason "length"), as in OpenAI's
# API. Engines and the reference build grammars only through these two functions, so
# constrained outputs compare exactly.


def response_grammar(response_format: dict[str, Any]):
    """The xgrammar `Grammar` that `response_format` asks for; ValueError naming the bad part.

    OpenAI's shapes: {"type": "json_object"} (any JSON object) or {"type": "json_schema",
    "json_schema": {"name": ..., "schema": {...}}}. Both are compact JSON (xgrammar's
    ", " and ": " separators and no other whitespace: a model allowed whitespace can emit
    it forever); a schema is read in strict mode (no properties beyond its own).
    """
    # xgrammar (~1.7 s) loads only for JSON mode
    import xgrammar as xgr

    kind = response_format.get("type")
    if kind == "json_object":
        return xgr.Grammar.from_json_schema('{"type": "object"}', any_whitespace=False, strict_mode=False)
    if kind != "json_schema":
        raise ValueError(f"type: expected 'json_object' or 'json_schema', got {kind!r}")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise ValueError("json_schema.schema: expected a JSON Schema object")
    try:
        return xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError/TypeError on schemas it rejects
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        # its C++ messages start "[19:19:55] /project/cpp/json_schema_converter.cc:5082: "
        raise ValueError("json_schema.schema: " + re.sub(r"^\[[^]]*\]\s*\S+:\d+:\s*", "", lines[-1])) from None


# tokenizer_config.json's classes that are tokenizer.json read by the `tokenizers` library and nothing more
PLAIN_TOKENIZER_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend"}


def load_tokenizer(tokenizer_dir: str | Path):
    """The HF tokenizer in `tokenizer_dir`. A plain tokenizer.json loads as
    PreTrainedTokenizerFast directly: AutoTokenizer resolves the class through the model
    registry, ~1.3 s more of every candidate start (import + load 1.9 s against 0.6) for
    the same object; any other class (sentencepiece, custom code) goes through AutoTokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # transformers loads torch: only where text is tokenized

    path = Path(tokenizer_dir)
    try:
        declared = json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        declared = None
    if (path / "tokenizer.json").is_file() and declared in PLAIN_TOKENIZER_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def grammar_compiler(model_dir: str | Path, max_threads: int = 1):
    """An xgrammar `GrammarCompiler` for the tokenizer in `model_dir`, over the model's
    whole vocabulary with its EOS ids as the grammar's stop tokens. It caches what it
    compiles; `compiler.compile_grammar(response_grammar(fmt))` gives a request's grammar."""
    # xgrammar and transformers load only for JSON mode
    import xgrammar as xgr

    config = json.loads((Path(model_dir) / "config.json").read_text())
    eos = config.get("eos_token_id")
    stop = eos if isinstance(eos, list) else None if eos is None else [eos]
    info = xgr.TokenizerInfo.from_huggingface(load_tokenizer(model_dir), vocab_size=int(config["vocab_size"]),
                                              stop_token_ids=stop)
    return xgr.GrammarCompiler(info, max_threads=max_threads)


# --- candidate.toml ----------------------------------------------------------------


@dataclass(frozen=True)
class CandidateSpec:
    """A candidate directory and what its `candidate.toml` says."""

    path: Path
    entrypoint: str
    design: dict[str, str]
    knobs: dict[str, Any]


def load_candidate(path: str | Path) -> CandidateSpec:
    """Reads and validates `candidate.toml`; bad input raises BadInput naming the field."""
    path = Path(path)
    file = path / CANDIDATE_FILE
    if not path.is_dir():
        raise BadInput(str(path), "candidate", "is not a directory")
    if not file.is_file():
        raise BadInput(str(file), "candidate.toml", "file not found")
    try:
        data = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(str(file), "candidate.toml", f"not valid TOML: {exc}") from None
    unknown = set(data) - {"engine", "design", "knobs"}
    if unknown:
        raise BadInput(str(file), sorted(unknown)[0], "unknown key")
    engine = data.get("engine")
    if not isinstance(engine, dict) or "entrypoint" not in engine:
        raise BadInput(str(file), "engine.entrypoint", "missing")
    entry = engine["entrypoint"]
    if not isinstance(entry, str) or entry.count(":") != 1 or not all(entry.split(":")):
        raise BadInput(str(file), "engine.entrypoint", "must be 'module:function'")
    if set(engine) - {"entrypoint"}:
        raise BadInput(str(file), f"engine.{sorted(set(engine) - {'entrypoint'})[0]}", "unknown key")
    design = data.get("design", {})
    knobs = data.get("knobs", {})
    if not isinstance(design, dict) or not all(isinstance(v, str) for v in design.values()):
        raise BadInput(str(file), "design", "must be a table of strings")
    if not isinstance(knobs, dict):
        raise BadInput(str(file), "knobs", "must be a table")
    for k, v in knobs.items():
        if not isinstance(v, (int, float, str, bool)):
            raise BadInput(str(file), f"knobs.{k}", "must be a number, string or boolean")
    module_file = path / (entry.split(":")[0].replace(".", "/"))
    if not (module_file.with_suffix(".py").is_file() or (module_file / "__init__.py").is_file()):
        raise BadInput(str(file), "engine.entrypoint", f"module {entry.split(':')[0]!r} not found in {path}")
    return CandidateSpec(path=path.resolve(), entrypoint=entry, design=dict(design), knobs=dict(knobs))


def write_candidate_toml(path: Path, entrypoint: str, design: dict[str, str], knobs: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    lines = ["[engine]", f"entrypoint = {fmt(entrypoint)}", "", "[design]"]
    lines += [f"{k} = {fmt(v)}" for k, v in sorted(design.items())]
    lines += ["", "[knobs]"]
    lines += [f"{k} = {fmt(v)}" for k, v in sorted(knobs.items())]
    (path / CANDIDATE_FILE).write_text("\n".join(lines) + "\n")


def import_entrypoint(spec: CandidateSpec):
    """Imports the candidate's create_engine with its directory first on sys.path."""
    sys.path.insert(0, str(spec.path))
    module_name, func = spec.entrypoint.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func)
