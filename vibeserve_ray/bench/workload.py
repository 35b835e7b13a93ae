"""What a benchmark sends: a list of token-id requests, synthetic or read from a JSONL dataset."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vibeserve_ray.errors import BadInput


@dataclass(frozen=True)
class Request:
    """One completion request: prompt token ids, how many tokens to generate, an optional
    predicted output, and an optional `response_format` (OpenAI's JSON mode)."""

    prompt_token_ids: list[int]
    max_tokens: int
    prediction: list[int] | None = None
    response_format: dict | None = None

    @property
    def expected_output_len(self) -> int:
        """The load generator sends `ignore_eos`, so a correct server returns exactly `max_tokens` tokens
        (at most that many for a constrained request, which ends where its grammar does)."""
        return self.max_tokens

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def synthetic(
    num_requests: int,
    seed: int,
    vocab_size: int,
    input_len: tuple[int, int] = (128, 128),
    output_len: tuple[int, int] = (128, 128),
    shared_prefix_len: int = 0,
    reserved_ids: Sequence[int] = (),
) -> list[Request]:
    """Seeded random prompts: lengths uniform in the inclusive ranges, ids never in `reserved_ids`.

    Like vLLM's random dataset, each prompt is `shared_prefix_len` common tokens (the same for
    every request, for prefix-caching workloads) followed by `input_len` random tokens.
    """
    _check_range("input_len", input_len, low=0 if shared_prefix_len else 1)
    _check_range("output_len", output_len, low=1)
    if num_requests < 0 or shared_prefix_len < 0:
        raise ValueError("num_requests and shared_prefix_len must be >= 0")
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(reserved_ids, dtype=np.int64))
    if allowed.size == 0:
        raise ValueError(f"no token ids left in a vocabulary of {vocab_size} after removing reserved ids")

    rng = np.random.default_rng(seed)
    prefix = allowed[rng.integers(0, allowed.size, shared_prefix_len)].tolist()
    in_lens = rng.integers(input_len[0], input_len[1] + 1, num_requests)
    out_lens = rng.integers(output_len[0], output_len[1] + 1, num_requests)
    return [
        Request(prefix + allowed[rng.integers(0, allowed.size, int(n_in))].tolist(), int(n_out))
        for n_in, n_out in zip(in_lens, out_lens)
    ]


def from_jsonl(path: str | Path, num_requests: int, seed: int) -> list[Request]:
    """Requests from lines `{"prompt_token_ids": [...], "max_tokens": N, "prediction": [...]?, "response_format": {...}?}`.

    The file's order is kept when `num_requests` equals its line count; otherwise requests are
    drawn from seeded shuffles of the file, cycling through it again when more are asked for.
    """
    if num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BadInput(str(path), "file", f"cannot read: {exc.strerror or exc}") from None
    pool = [_parse_line(str(path), n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not pool:
        raise BadInput(str(path), "file", "no requests (the file is empty)")
    if num_requests == len(pool):
        return pool
    rng = np.random.default_rng(seed)
    rounds = -(-num_requests // len(pool))
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(rounds)]) if rounds else []
    return [pool[i] for i in order[:num_requests]]


def _parse_line(file: str, n: int, line: str) -> Request:
    def bad(reason: str) -> BadInput:
        return BadInput(file, f"line {n}", reason)

    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise bad("expected a JSON object")
    prompt = obj.get("prompt_token_ids")
    if not _is_token_list(prompt) or not prompt:
        raise bad("prompt_token_ids must be a non-empty list of non-negative integers")
    max_tokens = obj.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad("max_tokens must be a positive integer")
    prediction = obj.get("prediction")
    if prediction is not None and not _is_token_list(prediction):
        raise bad("prediction must be a list of non-negative integers")
    response_format = obj.get("response_format")
    if response_format is not None and not (isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")):
        raise bad("response_format must be an object with type 'json_object' or 'json_schema'")
    return Request(prompt, max_tokens, prediction, response_format)


def _is_token_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value
    )


def _check_range(name: str, bounds: tuple[int, int], low: int) -> None:
    lo, hi = bounds
    if not low <= lo <= hi:
        raise ValueError(f"{name}={bounds} must satisfy {low} <= lo <= hi")
