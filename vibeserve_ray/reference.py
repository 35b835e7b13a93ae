"""The reference implementation every candidate is gated against.

`transformers` on the same weights, decoding step by step so that each step's
logprobs and top-2 gap are known: the checker forgives a divergence only at a near-tie,
and it needs the gap to tell. Sampling uses the contract's rule
(`vibeserve_ray.candidate.sampling_scores`), so seeded outputs are comparable too.

A target may name its own reference as `module:function`: a factory called as
`factory(model_dir: str, dtype: str)` returning an object with this class's `generate`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vibeserve_ray.candidate import sampling_scores


@dataclass(frozen=True)
class RefOutput:
    token_ids: list[int]
    logprobs: list[float]  # log_softmax of the raw logits at the chosen token
    gaps: list[float]  # top-2 gap of the scores that chose each token


class TransformersReference:
    def __init__(self, model_dir: str | Path, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM

        self._torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
        self.model.eval()

    def generate(
        self, prompt_token_ids: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None
    ) -> RefOutput:
        torch = self._torch
        if temperature > 0 and seed is None:
            raise ValueError("the reference samples only with a seed")
        tokens, logprobs, gaps = [], [], []
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt_token_ids]), use_cache=True)
            for step in range(max_tokens):
                logits = out.logits[0, -1].float()
                scores = sampling_scores(logits, temperature, top_p, seed or 0, step)
                top2 = torch.topk(scores, 2).values
                token = int(scores.argmax())
                tokens.append(token)
                logprobs.append(float(torch.log_softmax(logits, -1)[token]))
                gaps.append(float(top2[0] - top2[1]))
                if step + 1 < max_tokens:
                    out = self.model(input_ids=torch.tensor([[token]]), use_cache=True, **_cache_kwargs(out))
        return RefOutput(tokens, logprobs, gaps)

    def score(self, prompt_token_ids: list[int]) -> list[float | None]:
        """Each prompt token's logprob given the tokens before it (None for the first):
        what a completions server returns for `echo` with `logprobs`."""
        torch = self._torch
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([prompt_token_ids])).logits[0, :-1].float()
        picked = torch.log_softmax(logits, -1).gather(-1, torch.tensor(prompt_token_ids[1:])[:, None])[:, 0]
        return [None, *picked.tolist()]


def _cache_kwargs(out) -> dict:
    # transformers >= 5.2x renamed past_key_values to cache; accept either.
    return {"cache": out["cache"]} if "cache" in out else {"past_key_values": out.past_key_values}


def load_reference(kind: str, model_dir: str | Path, dtype: str = "float32"):
    if kind == "transformers":
        return TransformersReference(model_dir, dtype)
    module, func = kind.split(":")
    return getattr(importlib.import_module(module), func)(str(model_dir), dtype)


def _fingerprint(model_dir: Path) -> str:
    """Content hash of the weights and config: a cached answer is only reused for them."""
    h = hashlib.sha256()
    for name in sorted(p.name for p in model_dir.iterdir() if p.suffix in (".json", ".safetensors")):
        with open(model_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def reference_outputs(
    kind: str,
    model_dir: Path,
    dtype: str,
    prompts: list[list[int]],
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    cache_root: Path | None = None,
) -> list[RefOutput]:
    """Reference outputs for many prompts, cached on disk keyed by weights and inputs."""
    import transformers

    key = json.dumps([kind, _fingerprint(model_dir), dtype, prompts, max_tokens, temperature, top_p, seed, transformers.__version__])
    cache_file = None
    if cache_root is not None:
        cache_file = cache_root / "reference" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
        if cache_file.is_file():
            return [RefOutput(**o) for o in json.loads(cache_file.read_text())]
    ref = load_reference(kind, model_dir, dtype)
    outs = [ref.generate(p, max_tokens, temperature, top_p, seed) for p in prompts]
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(o) for o in outs]))
        tmp.replace(cache_file)
    return outs
