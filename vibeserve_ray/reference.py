"""The reference implementation every candidate is gated against.

`transformers` on the same weights, decoding step by step so that each step's
logprobs and top-2 gap are known: the checker forgives a divergence only at a near-tie,
and it needs the gap to tell. Sampling uses the contract's rule
(`vibeserve_ray.candidate.sampling_scores`), so seeded outputs are comparable too, and a
`response_format` masks each step by the contract's grammar (`response_grammar`) before
it, ending where the grammar accepts a stop token.

A tolerance contract asks the reference instead to judge a server's own tokens
(`logprob_rows`: teacher-forced, one forward over prompt + completion, many at once).

A target may name its own reference as `module:function`: a factory called as
`factory(model_dir: str, dtype: str)` returning an object with this class's `generate`
(and `logprob_rows`, for a tolerance contract).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from vibeserve_ray.candidate import sampling_scores


SMALL_MODEL_PARAMS = 200_000_000


@dataclass(frozen=True)
class RefOutput:
    token_ids: list[int]
    logprobs: list[float]  # log_softmax of the raw logits at the chosen token
    gaps: list[float]  # top-2 gap of the scores that chose each token


class TransformersReference:
    def __init__(self, model_dir: str | Path, dtype: str = "float32"):
        # torch and transformers load with the reference model, not with this module
        import torch
        from transformers import AutoModelForCausalLM

        self._torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
        self.model.eval()
        self.model_dir = model_dir
        self._grammars = None
        # A small model's batch-1 decode on CPU is per-op overhead, and threads only contend:
        # the 22M-param tiny Llama's 96 greedy tokens took 1.2-1.5 s on one thread, 6-7.5 s on
        # two, on a busy 2-core VM (a judge decodes beside the candidate it judges).
        small = sum(p.numel() for p in self.model.parameters()) < SMALL_MODEL_PARAMS
        self._threads = 1 if small and next(self.model.parameters()).device.type == "cpu" else None

    def generate(
        self, prompt_token_ids: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
        response_format: dict | None = None,
    ) -> RefOutput:
        torch = self._torch
        if temperature > 0 and seed is None:
            raise ValueError("the reference samples only with a seed")
        matcher = self._matcher(response_format) if response_format is not None else None
        tokens, logprobs, gaps = [], [], []
        with torch.inference_mode(), _threads(torch, self._threads):
            out = self.model(input_ids=torch.tensor([prompt_token_ids]), use_cache=True)
            for step in range(max_tokens):
                logits = out.logits[0, -1].float()
                scores = sampling_scores(_masked(logits, matcher), temperature, top_p, seed or 0, step)
                top2 = torch.topk(scores, 2).values
                token = int(scores.argmax())
                tokens.append(token)
                logprobs.append(float(torch.log_softmax(logits, -1)[token]))
                gaps.append(float(top2[0] - top2[1]))
                if matcher is not None and (not matcher.accept_token(token) or matcher.is_terminated()):
                    break
                if step + 1 < max_tokens:
                    out = self.model(input_ids=torch.tensor([[token]]), use_cache=True, **_cache_kwargs(out))
        return RefOutput(tokens, logprobs, gaps)

    def logprob_rows(self, prompts: list[list[int]], completions: list[list[int]]):
        """The reference's float32 log_softmax at every completion position, teacher-forced:
        for each pair a tensor [len(completion), vocab] whose row t scores completion[t]
        given the prompt and completion[:t]. One forward for the batch: right-padded (a
        causal model's real tokens never see the padding after them), and the vocabulary
        projection only for the rows asked for."""
        torch = self._torch
        seqs = [p + c[:-1] for p, c in zip(prompts, completions)]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        with torch.inference_mode(), _threads(torch, self._threads):
            hidden = self.model.get_decoder()(input_ids=ids).last_hidden_state
            picks = [(b, len(p) - 1 + t) for b, (p, c) in enumerate(zip(prompts, completions)) for t in range(len(c))]
            rows = hidden[torch.tensor([b for b, _ in picks]), torch.tensor([i for _, i in picks])]
            logprobs = torch.log_softmax(self.model.get_output_embeddings()(rows).float(), -1)
        return list(logprobs.split([len(c) for c in completions]))

    def score(self, prompt_token_ids: list[int]) -> list[float | None]:
        """Each prompt token's logprob given the tokens before it (None for the first):
        what a completions server returns for `echo` with `logprobs`."""
        torch = self._torch
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([prompt_token_ids])).logits[0, :-1].float()
        picked = torch.log_softmax(logits, -1).gather(-1, torch.tensor(prompt_token_ids[1:])[:, None])[:, 0]
        return [None, *picked.tolist()]

    def _matcher(self, response_format: dict):
        # xgrammar loads only for JSON mode
        import xgrammar as xgr

        from vibeserve_ray.candidate import grammar_compiler, response_grammar

        if self._grammars is None:
            self._grammars = grammar_compiler(self.model_dir)
        return xgr.GrammarMatcher(self._grammars.compile_grammar(response_grammar(response_format)))


def _masked(logits, matcher):
    """`logits` (1-D) with every token the grammar forbids at -inf (a copy)."""
    if matcher is None:
        return logits
    # xgrammar loads only for JSON mode
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(1, logits.shape[-1])
    matcher.fill_next_token_bitmask(bitmask)
    masked = logits.clone().unsqueeze(0)
    xgr.apply_token_bitmask_inplace(masked, bitmask)
    return masked[0]


@contextlib.contextmanager
def _threads(torch, n: int | None):
    """torch's intra-op threads set to `n` for the block (None: left as they are)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cache_kwargs(out) -> dict:
    # transformers >= 5.2x renamed past_key_values to cache; accept either.
    return {"cache": out["cache"]} if "cache" in out else {"past_key_values": out.past_key_values}


@functools.lru_cache(maxsize=2)  # the judge asks for both checkpoints several times per judging
def load_reference(kind: str, model_dir: str | Path, dtype: str = "float32"):
    if kind == "transformers":
        return TransformersReference(model_dir, dtype)
    module, func = kind.split(":")
    return getattr(importlib.import_module(module), func)(str(model_dir), dtype)


@functools.lru_cache(maxsize=16)
def _fingerprint_of(model_dir: Path, stamp: tuple) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in model_dir.iterdir() if p.suffix in (".json", ".safetensors")):
        with open(model_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def fingerprint(model_dir: Path) -> str:
    """Content hash of the weights and config: a cached answer is only reused for them
    (hashed once per process while the files' sizes and times stay as they were)."""
    model_dir = Path(model_dir)
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(model_dir.iterdir()) if p.suffix in (".json", ".safetensors"))
    return _fingerprint_of(model_dir, stamp)


def reference_outputs(
    kind: str,
    model_dir: Path,
    dtype: str,
    prompts: list[list[int]],
    max_tokens: int | list[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    cache_root: Path | None = None,
    response_formats: list[dict | None] | None = None,
) -> list[RefOutput]:
    """Reference outputs for many prompts, cached on disk one prompt at a time (keyed by the
    weights and the inputs), so any subset of prompts seen before costs nothing; the
    reference model is loaded once for all the missing ones. `max_tokens`: one for all,
    or one per prompt; `response_formats`: a JSON-mode prompt's format (None: unconstrained)."""
    # transformers (its version keys the cache) loads only when references are asked for
    import transformers

    lengths = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
    formats = list(response_formats or [None] * len(prompts))

    def cache_file(prompt: list[int], n: int, fmt: dict | None) -> Path | None:
        if cache_root is None:
            return None
        key = [kind, fingerprint(model_dir), dtype, prompt, n, temperature, top_p, seed, transformers.__version__]
        if fmt is not None:
            from importlib.metadata import version

            key += [fmt, version("xgrammar")]
        return cache_root / "reference" / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24] + ".json")

    files = [cache_file(p, n, f) for p, n, f in zip(prompts, lengths, formats)]
    outs: list[RefOutput | None] = [RefOutput(**json.loads(f.read_text())) if f is not None and f.is_file() else None for f in files]
    missing = [i for i, o in enumerate(outs) if o is None]
    if missing:
        ref = load_reference(kind, model_dir, dtype)
        for i in missing:
            constrained = {"response_format": formats[i]} if formats[i] is not None else {}  # a custom reference may not take it
            outs[i] = out = ref.generate(prompts[i], lengths[i], temperature, top_p, seed, **constrained)
            if files[i] is not None:
                write_cached(files[i], asdict(out))
    return outs  # type: ignore[return-value]


def write_cached(file: Path, data: dict) -> None:
    """`data` as JSON at `file`, whole or not at all (judgings in parallel share the cache)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(file)
