"""The checker: a candidate's outputs, through HTTP, against the reference's.

Held-out prompts (kept in the target, outside any candidate) and, when judging, fresh
prompts drawn from a secret seed with the same length mix (so a candidate that knows
the held-out ones gains nothing) are sent one at a time and then concurrently at the
target's concurrency with mixed lengths, because batching bugs only show under load.

Under an exact contract (`[accuracy] mode = "exact"`) greedy and seeded tokens must
equal the reference's; a divergence is forgiven only at a near-tie (the reference's
top-2 gap below the tolerance), after which that sequence is not compared further, as
vLLM's `check_logprobs_close` does, and logprobs must agree within their tolerance.
Under a tolerance contract the reference scores the candidate's own tokens instead, every
response of every phase pooled (`vibeserve_ray.accuracy`).
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import aiohttp
import numpy as np

from vibeserve_ray import progress
from vibeserve_ray.accuracy.score import Response
from vibeserve_ray.inner.judge.verdict import Accuracy, tolerance_check
from vibeserve_ray.candidate import CandidateSpec, load_tokenizer
from vibeserve_ray.errors import BadInput
from vibeserve_ray.reference import RefOutput, reference_outputs
from vibeserve_ray.runner import CandidateFailed, CandidateFailure, CandidateProcess, Limits, start_candidate
from vibeserve_ray.target import Target
from vibeserve_ray.tinymodel import cache_dir


@dataclass(frozen=True)
class Prompt:
    label: str  # "held-out #3", "fresh #1": what a mismatch names
    text: str
    token_ids: list[int]
    response_format: dict | None = None  # JSON mode: compared with the reference under the same grammar


@dataclass(frozen=True)
class Mismatch:
    phase: str
    prompt_index: int
    prompt: str
    step: int
    expected: list[int]
    got: list[int]
    reason: str
    label: str = ""

    def describe(self) -> str:
        return f"{self.phase}, {self.label or f'prompt #{self.prompt_index}'}, token {self.step}: {self.reason}"


@dataclass(frozen=True)
class CheckVerdict:
    passed: bool
    compared: int  # sequences compared
    forgiven: int  # sequences cut short at a near-tie (exact contract)
    mismatch: Mismatch | None = None  # exact contract: the first difference
    failure: CandidateFailure | None = None
    accuracy: Accuracy | None = None  # tolerance contract: the statistics of every response, pooled

    def to_dict(self) -> dict:
        out = asdict(self)
        return out | {"accuracy": self.accuracy.to_dict()} if self.accuracy else out

    def reason(self) -> str:
        """Why the outputs do not meet the contract ('' when they do, or the candidate failed)."""
        if self.mismatch:
            return self.mismatch.describe()
        return self.accuracy.failure if self.accuracy else ""

    def summary(self, decode: Callable[[list[int]], str] | None = None) -> str:
        if self.failure:
            return self.failure.describe()
        if self.accuracy is not None:
            return f"{'PASS' if self.passed else 'FAIL'}: {self.compared} sequences against the tolerance contract: {self.accuracy.summary()}"
        if self.passed:
            return f"PASS: {self.compared} sequences equal to the reference ({self.forgiven} cut short at a near-tie)"
        m = self.mismatch
        assert m is not None
        lines = [
            f"FAIL: {m.reason}",
            f"  phase:    {m.phase}",
            f"  {m.label or f'prompt #{m.prompt_index}'}: {m.prompt[:200]!r}",
            f"  first difference at generated token {m.step}",
            f"  expected: {m.expected}",
            f"  got:      {m.got}",
        ]
        if decode:
            lines += [f"  expected text: {decode(m.expected)!r}", f"  got text:      {decode(m.got)!r}"]
        return "\n".join(lines)


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float | None]


def compare(ref: RefOutput, got: Completion, tolerance: float, logprob_tolerance: float) -> tuple[str, int, str]:
    """('ok' | 'forgiven' | 'mismatch', step, reason) for one sequence; `got` may ask for
    fewer tokens than the reference produced, and is compared as a prefix."""
    n = len(got.token_ids)
    for step, token in enumerate(got.token_ids):
        if step >= len(ref.token_ids):
            return "mismatch", step, f"{n} tokens, more than the {len(ref.token_ids)} asked for"
        if token != ref.token_ids[step]:
            if ref.gaps[step] < tolerance:
                return "forgiven", step, f"near-tie (gap {ref.gaps[step]:.4f})"
            return "mismatch", step, f"token {token} where the reference has {ref.token_ids[step]} (top-2 gap {ref.gaps[step]:.3f})"
        lp = got.logprobs[step] if step < len(got.logprobs) else None
        if lp is not None and abs(lp - ref.logprobs[step]) > logprob_tolerance:
            return "mismatch", step, f"logprob {lp:.5f} where the reference has {ref.logprobs[step]:.5f}"
    return "ok", n, ""


def expected_length(ref: RefOutput, max_tokens: int) -> int:
    """Tokens a right answer has when asked for `max_tokens` (the reference ran at least as
    long): all of them, unless the reference's grammar ended the answer sooner."""
    return min(len(ref.token_ids), max_tokens)


async def complete(session: aiohttp.ClientSession, base_url: str, model: str, prompt_ids: list[int], max_tokens: int,
                   temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, response_format: dict | None = None) -> Completion:
    """One non-streamed completion with token ids and logprobs; raises on HTTP errors."""
    body = {"model": model, "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
            "seed": seed, "logprobs": 0, "ignore_eos": response_format is None, "return_token_ids": True}
    if response_format is not None:
        body["response_format"] = response_format
    async with session.post(base_url + "/v1/completions", json=body) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {json.dumps(data)[:300]}")
    choice = data["choices"][0]
    logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or [None] * len(choice["token_ids"])
    return Completion(list(choice["token_ids"]), list(logprobs))


def load_prompts(target: Target) -> list[str]:
    return [prompt for prompt, _ in load_checks(target)]


def load_checks(target: Target) -> list[tuple[str, dict | None]]:
    """The held-out prompts, each with its optional `response_format` (a JSON-mode target's)."""
    file = target.path(target.spec.checker.prompts)
    checks = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, fmt = str(row["prompt"]), row.get("response_format")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise BadInput(str(file), f"line {n}", 'expected a JSON object with a "prompt" string') from None
        if fmt is not None and not isinstance(fmt, dict):
            raise BadInput(str(file), f"line {n}", "response_format must be an object")
        checks.append((prompt, fmt))
    if not checks:
        raise BadInput(str(file), "checker.prompts", "no prompts")
    return checks


@functools.cache
def _tokenizer(tokenizer_dir: Path):
    return load_tokenizer(tokenizer_dir)  # transformers loads torch: comparing outputs (exact.py, the judge) needs neither


def tokenize_prompts(target: Target, prompts: list[str]) -> list[list[int]]:
    tok = _tokenizer(target.tokenizer_dir())
    return [tok.encode(p) for p in prompts]


def held_out_prompts(target: Target) -> list[Prompt]:
    texts, formats = zip(*load_checks(target))
    ids = tokenize_prompts(target, list(texts))
    return [Prompt(f"held-out #{i}", t, p, f) for i, (t, p, f) in enumerate(zip(texts, ids, formats))]


def fresh_prompts(target: Target, like: list[Prompt], count: int, seed: int) -> list[Prompt]:
    """`count` prompts of random token ids (no special ones), their lengths (and response
    formats) drawn from `like`'s: the held-out prompts' mix, contents nobody has seen."""
    tok = _tokenizer(target.tokenizer_dir())
    vocab = int(json.loads((target.model_dir() / "config.json").read_text())["vocab_size"])
    allowed = np.setdiff1d(np.arange(min(vocab, len(tok))), np.asarray(tok.all_special_ids, dtype=np.int64))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(like), count)  # the same draws as choosing among their lengths
    out = []
    for i, j in enumerate(picks):
        ids = allowed[rng.integers(0, allowed.size, len(like[j].token_ids))].tolist()
        out.append(Prompt(f"fresh #{i}", tok.decode(ids), ids, like[j].response_format))
    return out


ALL_PHASES = ("sequential", "concurrent", "sampled")


def references(target: Target, model_dir: Path, prompts: list[Prompt], kinds: tuple[str, ...], cache: bool = True) -> dict[str, list[RefOutput]]:
    """The reference's outputs the phases `kinds` compare with under an exact contract:
    greedy, and sampled per seed (cached on disk unless `cache` is False: fresh prompts are
    never asked twice). A tolerance contract needs none of them (`check_phases` scores the
    candidate's own tokens)."""
    c, r = target.spec.checker, target.spec.reference
    ids, root = [p.token_ids for p in prompts], cache_dir() if cache else None
    formats = [p.response_format for p in prompts]
    refs = {}
    if {"sequential", "concurrent"} & set(kinds):
        refs["greedy"] = reference_outputs(r.kind, model_dir, r.dtype, ids, c.max_tokens, cache_root=root, response_formats=formats)
    for seed in c.sampling.seeds if "sampled" in kinds else []:
        refs[f"seed{seed}"] = reference_outputs(r.kind, model_dir, r.dtype, ids, c.max_tokens, c.sampling.temperature, c.sampling.top_p, seed,
                                                cache_root=root, response_formats=formats)
    return refs


async def check_phases(proc: CandidateProcess, target: Target, prompts: list[Prompt], refs: dict[str, list[RefOutput]],
                       say: Callable[[str], None], kinds: tuple[str, ...], model_dir: Path | None = None) -> CheckVerdict:
    """Sends the prompts in each phase of `kinds` to the running candidate and compares: with
    `refs` under an exact contract, by scoring its tokens on the weights in `model_dir`
    (default: the target's) under a tolerance one."""
    c = target.spec.checker
    tolerant = target.accuracy.tolerant
    responses: list[Response] = []
    n = len(prompts)
    # Mixed output lengths under load: requests finish at different steps of a batch.
    lengths = [max(1, c.max_tokens - (i % 4) * (c.max_tokens // 4)) for i in range(n)]
    order = list(range(n))[::2] + list(range(n))[1::2]
    phases: list[tuple[str, int | None, int, list[int], list[int]]] = []
    if "sequential" in kinds:
        phases.append(("sequential greedy", None, 1, [c.max_tokens] * n, list(range(n))))
    if "concurrent" in kinds:
        phases.append((f"concurrent greedy (concurrency {target.checker_concurrency})", None, target.checker_concurrency, lengths, order))
    for seed in c.sampling.seeds if "sampled" in kinds else []:
        phases.append((f"concurrent sampled (seed {seed})", seed, target.checker_concurrency, lengths, order))
    compared = forgiven = 0
    timeout = aiohttp.ClientTimeout(total=proc.limits.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for phase, seed, concurrency, max_tokens, indices in phases:
            say(f"check: {phase}: {n} prompts")
            progress.task(f"check: {phase}", len(indices))
            gate = asyncio.Semaphore(concurrency)
            key = "greedy" if seed is None else f"seed{seed}"
            temperature, top_p = (0.0, 1.0) if seed is None else (c.sampling.temperature, c.sampling.top_p)

            async def one(i: int) -> Completion:
                async with gate:
                    got = await complete(session, proc.base_url, proc.served_name, prompts[i].token_ids, max_tokens[i], temperature, top_p, seed,
                                         prompts[i].response_format)
                progress.advance(1, len(got.token_ids))
                return got

            try:
                outs = await asyncio.gather(*(one(i) for i in indices))
            except (asyncio.TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
                reason = f"request timed out after {proc.limits.request_timeout_s:g}s" if isinstance(exc, asyncio.TimeoutError) else str(exc)
                return CheckVerdict(False, compared, forgiven, failure=proc.explain("check", f"{phase}: {reason}"))
            if tolerant:
                responses += [Response(f"{prompts[i].label} ({phase})", prompts[i].token_ids, got.token_ids, max_tokens[i], temperature, top_p,
                                       seed, prompts[i].response_format, got.logprobs) for i, got in zip(indices, outs)]
                continue
            for i, got in zip(indices, outs):
                ref = refs[key][i]
                status, step, reason = compare(ref, got, c.tolerance, c.logprob_tolerance)
                compared += 1
                want = expected_length(ref, max_tokens[i])
                if status == "ok" and len(got.token_ids) != want:
                    status, step, reason = "mismatch", len(got.token_ids), f"{len(got.token_ids)} tokens where the reference has {want}"
                if status == "mismatch":
                    p = prompts[i]
                    mismatch = Mismatch(phase, i, p.text, step, ref.token_ids[:want], got.token_ids, reason, p.label)
                    return CheckVerdict(False, compared, forgiven, mismatch=mismatch)
                forgiven += status == "forgiven"
    if tolerant:
        say(f"check: scoring {len(responses)} responses with the reference")
        accuracy = tolerance_check(target, model_dir or target.model_dir(), responses)
        return CheckVerdict(accuracy.ok, len(responses), 0, accuracy=accuracy)
    return CheckVerdict(True, compared, forgiven)


def check_candidate(target: Target, spec: CandidateSpec, workdir: Path, *, swap: bool = False, limits: Limits | None = None,
                    phases: tuple[str, ...] = ALL_PHASES, say: Callable[[str], None] = lambda s: None) -> CheckVerdict:
    """Starts the candidate, runs the phases (sequential, concurrent, sampled) on the
    held-out prompts, stops it. `swap` checks on the second checkpoint (the weight-swap
    test): outputs must change exactly as the reference's do."""
    model_dir = target.model_dir(swap=swap)
    prompts = held_out_prompts(target)
    refs = {}
    if not target.accuracy.tolerant:
        say(f"check: reference outputs for {len(prompts)} prompts ({target.spec.reference.kind})")
        refs = references(target, model_dir, prompts, phases)
    limits = limits or Limits(**target.spec.limits.model_dump())
    say(f"check: starting candidate {spec.path}")
    try:
        with start_candidate(spec, model_dir, target.tokenizer_dir(), target.served_name, target.spec.hardware.device, limits, workdir) as proc:
            return asyncio.run(check_phases(proc, target, prompts, refs, say, phases, model_dir))
    except CandidateFailed as exc:
        return CheckVerdict(False, 0, 0, failure=exc.failure)
