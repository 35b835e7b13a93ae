"""The reference's judgement of a server's own tokens, per position (teacher-forced).

Nothing here trusts what a server says about its output beyond the tokens themselves:
the reference reads prompt + completion in one forward pass and scores every completion
position given the tokens the server actually chose before it, so a legitimate flip at a
near-tie does not poison the tokens after it, and nothing after a divergence goes
unchecked. Per position (`Scored`):

- greedy: the *deficit*, the reference's best logprob minus its logprob of the chosen
  token (0 where they agree; infinite for a token the response format's grammar
  forbids), and the reference's top-2 gap (a flip is "decisive" above DECISIVE_GAP);
- seeded sampling: the reference's tempered logprob of the sampled token (`score`), its
  mean and variance under the distribution the request asked for (the reference's
  logits / temperature, restricted to its top-p nucleus, under the grammar), and the
  nucleus mass before the token (`stats.sampled_stats` turns them into a score test);
- the reference's raw logprob of the token, to compare with one the server reported.

Scores are cached on disk per response, keyed by the weights, the reference and every
input (prompt, tokens, temperature, top_p, response format), as `reference_outputs` caches
generations: a judging that sees the same tokens again costs nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vibeserve_ray.reference import fingerprint, load_reference, write_cached

DECISIVE_GAP = 0.1  # reference top-2 logprob gap above which a disagreement is a real flip, not a near-tie
MAX_LOGIT_BYTES = 1 << 28  # one teacher-forced batch's float32 vocabulary rows (bounds memory on large vocabularies)


@dataclass(frozen=True)
class Response:
    """What a server returned for one request, and how it was asked."""

    label: str  # "held-out #3 (concurrent greedy)", "benchmark request 17": what a verdict names
    prompt: list[int]
    tokens: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    response_format: dict | None = None
    logprobs: list[float | None] | None = None  # what the server reported for its tokens, if anything


@dataclass(frozen=True)
class Scored:
    """The reference's view of one response, one entry per generated position."""

    deficit: list[float]
    gap: list[float]
    logprob: list[float]  # the reference's raw logprob of the token
    finished: bool = False  # the grammar accepted a stop token at the last position (constrained responses)
    score: list[float] = field(default_factory=list)  # sampled responses only (see the module's docstring)
    mean: list[float] = field(default_factory=list)
    var: list[float] = field(default_factory=list)
    mass_before: list[float] = field(default_factory=list)


def reference_scores(kind: str, model_dir: Path, dtype: str, responses: list[Response], cache_root: Path | None = None) -> list[Scored]:
    """Each response scored by the reference (`kind` at `dtype` on the weights in
    `model_dir`); cached on disk under `cache_root`, the missing ones in batches."""
    # transformers (its version keys the cache) loads only when scores are asked for
    import transformers

    def cache_file(r: Response) -> Path | None:
        if cache_root is None:
            return None
        key = [kind, fingerprint(model_dir), dtype, r.prompt, r.tokens, r.temperature, r.top_p, r.response_format, transformers.__version__]
        if r.response_format is not None:
            from importlib.metadata import version  # only for JSON mode

            key.append(version("xgrammar"))
        return cache_root / "scores" / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24] + ".json")

    files = [cache_file(r) for r in responses]
    out: list[Scored | None] = [Scored(**json.loads(f.read_text())) if f is not None and f.is_file() else None for f in files]
    missing = [i for i, s in enumerate(out) if s is None and responses[i].tokens]
    for i, s in enumerate(out):
        if s is None and not responses[i].tokens:
            out[i] = Scored([], [], [])
    if missing:
        ref = load_reference(kind, model_dir, dtype)
        if not hasattr(ref, "logprob_rows"):
            raise ValueError(f"[accuracy] mode = 'tolerance' needs a reference that scores tokens: {kind} has no logprob_rows")
        vocab = int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])
        for batch in _batches(missing, responses, MAX_LOGIT_BYTES // (4 * vocab)):
            rows = ref.logprob_rows([responses[i].prompt for i in batch], [responses[i].tokens for i in batch])
            for i, logprobs in zip(batch, rows):
                out[i] = scored = _positions(logprobs, responses[i], model_dir)
                if files[i] is not None:
                    write_cached(files[i], asdict(scored))
    return out  # type: ignore[return-value]


def _batches(indices: list[int], responses: list[Response], max_rows: int) -> list[list[int]]:
    """Groups of responses whose completion rows fit the budget (longest first, so padding stays small)."""
    order = sorted(indices, key=lambda i: len(responses[i].prompt) + len(responses[i].tokens), reverse=True)
    batches: list[list[int]] = []
    rows = 0
    for i in order:
        n = len(responses[i].tokens)
        if not batches or rows + n > max(max_rows, 1):
            batches.append([])
            rows = 0
        batches[-1].append(i)
        rows += n
    return batches


def _positions(logprobs, r: Response, model_dir: Path) -> Scored:
    """The per-position statistics of one response from the reference's rows [n, vocab]."""
    # torch loads with the reference (this runs only after it has)
    import torch

    tokens = torch.tensor(r.tokens)
    allowed, refused_from, finished = _grammar(r, logprobs.shape[-1], model_dir) if r.response_format is not None else (None, None, False)
    masked = logprobs if allowed is None else logprobs.masked_fill(~allowed, -math.inf)
    picked = logprobs.gather(1, tokens[:, None])[:, 0]
    top2 = masked.topk(2, dim=-1).values if masked.shape[-1] > 1 else torch.cat([masked, masked], -1)
    deficit = top2[:, 0] - picked
    if allowed is not None:
        deficit = torch.where(allowed.gather(1, tokens[:, None])[:, 0], deficit, torch.full_like(deficit, math.inf))
        if refused_from is not None:  # the grammar stopped following: nothing after it is a valid token
            deficit[refused_from:] = math.inf
    scored = Scored(deficit.tolist(), (top2[:, 0] - top2[:, 1]).tolist(), picked.tolist(), finished)
    if r.temperature <= 0:
        return scored
    tempered = torch.log_softmax(masked / r.temperature, -1)
    p = tempered.exp()
    sorted_p, order = p.sort(dim=-1, descending=True)
    before = torch.empty_like(sorted_p).scatter_(-1, order, sorted_p.cumsum(-1) - sorted_p)
    keep = before < r.top_p if r.top_p < 1.0 else torch.isfinite(tempered)
    keep &= torch.isfinite(tempered)
    q = torch.where(keep, p, torch.zeros_like(p))
    q = q / q.sum(-1, keepdim=True)
    safe = torch.where(keep, tempered, torch.zeros_like(tempered))  # q is 0 wherever this is replaced
    mean = (q * safe).sum(-1)
    var = (q * (safe - mean[:, None]) ** 2).sum(-1)
    score = tempered.gather(1, tokens[:, None])[:, 0].clamp_min(-1e4)  # a forbidden token: far below anything sampled
    mass = before.gather(1, tokens[:, None])[:, 0]
    return Scored(scored.deficit, scored.gap, scored.logprob, finished, score.tolist(), mean.tolist(), var.tolist(), mass.tolist())


def _grammar(r: Response, vocab: int, model_dir: Path):
    """(allowed [n, vocab] bool, the position the grammar refused a token at or None, whether
    it accepted a stop token at the last one) for a constrained response."""
    # torch and xgrammar load only for JSON mode (the reference has loaded torch already)
    import torch
    import xgrammar as xgr

    from vibeserve_ray.candidate import response_grammar

    matcher = xgr.GrammarMatcher(_compiler(str(model_dir)).compile_grammar(response_grammar(r.response_format)))
    n = len(r.tokens)
    bitmask = xgr.allocate_token_bitmask(n, vocab)
    refused = None
    for i, token in enumerate(r.tokens):
        if matcher.is_terminated():  # a token after the document ended
            refused = i
            break
        matcher.fill_next_token_bitmask(bitmask, i)
        if not matcher.accept_token(token):
            refused = i
            break
    ones = torch.zeros(n, vocab)
    xgr.apply_token_bitmask_inplace(ones, bitmask)  # forbidden entries become -inf
    allowed = torch.isfinite(ones)
    if refused is not None:
        allowed[refused:] = True  # past a refusal the mask is unknown; those positions are marked invalid instead
    return allowed, refused, refused is None and matcher.is_terminated()


@functools.lru_cache(maxsize=2)
def _compiler(model_dir: str):
    from vibeserve_ray.candidate import grammar_compiler  # xgrammar loads only for JSON mode

    return grammar_compiler(model_dir)
