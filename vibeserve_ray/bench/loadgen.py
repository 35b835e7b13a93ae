"""Async HTTP load generator: streams completions from an OpenAI-compatible server and times every token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np

from vibeserve_ray import progress as display
from vibeserve_ray.bench.workload import Request

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RequestResult:
    """What one request did; times are seconds, `start_s` counted from the start of the run."""

    success: bool
    error: str  # "" on success
    start_s: float
    ttft_s: float
    itl_s: tuple[float, ...]  # one gap per token-bearing chunk after the first, as vLLM counts them
    e2el_s: float  # request start to the last token
    prompt_len: int
    output_tokens: int
    output_token_ids: tuple[int, ...]


class _StreamError(Exception):
    """The server answered 200 but the stream broke the protocol; the request fails with this reason."""


@dataclass(frozen=True)
class Dialect:
    """How a server is asked for a streamed completion and where its chunks carry the token ids.

    `read(chunk)` gives the chunk's new token ids, the usage it reports (or None) and
    whether it is the last chunk (a stream may also end with `data: [DONE]`).
    """

    name: str
    route: str
    body: Callable[[str, Request, float, int | None], dict]
    read: Callable[[dict], tuple[list[int], dict | None, bool]]
    force_close: bool = False  # open a connection per request


def _openai_body(model: str, request: Request, temperature: float, seed: int | None) -> dict:
    body = {
        "model": model,
        "prompt": request.prompt_token_ids,
        "max_tokens": request.max_tokens,
        "temperature": temperature,
        "top_p": 1.0,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": request.response_format is None,  # a constrained answer ends where its grammar does
        "return_token_ids": True,
    }
    if request.prediction is not None:
        body["prediction"] = request.prediction
    if request.response_format is not None:
        body["response_format"] = request.response_format
    return body


def _openai_read(chunk: dict) -> tuple[list[int], dict | None, bool]:
    usage = chunk["usage"] if isinstance(chunk.get("usage"), dict) else None
    return [t for c in chunk.get("choices") or [] for t in c.get("token_ids") or []], usage, False


def _llama_cpp_body(model: str, request: Request, temperature: float, seed: int | None) -> dict:
    body = {"prompt": request.prompt_token_ids, "n_predict": request.max_tokens, "temperature": temperature, "top_p": 1.0,
            "stream": True, "return_tokens": True, "ignore_eos": request.response_format is None}
    if seed is not None:
        body["seed"] = seed
    if (fmt := request.response_format) is not None:  # its own grammar engine, from the same schema
        body["json_schema"] = fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else {"type": "object"}
    return body


def _llama_cpp_read(chunk: dict) -> tuple[list[int], dict | None, bool]:
    last = bool(chunk.get("stop"))
    return list(chunk.get("tokens") or []), {"completion_tokens": chunk.get("tokens_predicted")} if last else None, last


# Our front, vLLM, SGLang: `/v1/completions` with vLLM's `return_token_ids`.
OPENAI = Dialect("openai", "/v1/completions", _openai_body, _openai_read)
# llama.cpp's llama-server: its OpenAI route streams text only (ids only through `logprobs`, which
# makes it compute a softmax over the vocabulary at every token); its native route streams the
# ids (`return_tokens`), ends on a chunk with `stop: true` and no [DONE], and its HTTP library
# closes a keep-alive connection after 5 s idle, which a pooled client then reuses and fails on.
LLAMA_CPP = Dialect("llama.cpp", "/completion", _llama_cpp_body, _llama_cpp_read, force_close=True)


def arrival_times(num_requests: int, request_rate: float, seed: int) -> list[float]:
    """Send offsets (s) of a seeded Poisson process at `request_rate` req/s; all zero when it is inf."""
    if not request_rate > 0:
        raise ValueError(f"request_rate must be > 0, got {request_rate}")
    if num_requests == 0:
        return []
    if math.isinf(request_rate):
        return [0.0] * num_requests
    gaps = np.random.default_rng(seed).exponential(1.0 / request_rate, num_requests - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


async def run_load(
    base_url: str,
    model: str,
    requests: Sequence[Request],
    *,
    concurrency: int | None = None,
    request_rate: float = math.inf,
    seed: int = 0,
    timeout_s: float = 600.0,
    temperature: float = 0.0,
    progress: Progress | None = None,
    dialect: Dialect = OPENAI,
) -> list[RequestResult]:
    """Send `requests` at Poisson `request_rate` (inf: all at once), at most `concurrency` in flight.

    Results come back in request order. A request that errors or runs past `timeout_s` is
    recorded as failed; the run itself only raises on bad arguments.
    """
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 or None, got {concurrency}")
    url = base_url.rstrip("/") + dialect.route
    arrivals = arrival_times(len(requests), request_rate, seed)
    gate: contextlib.AbstractAsyncContextManager = (
        asyncio.Semaphore(concurrency) if concurrency else contextlib.nullcontext()
    )
    report = _ProgressReporter(len(requests), progress or _to_stderr)
    connector = aiohttp.TCPConnector(limit=concurrency or 0, force_close=dialect.force_close)  # 0 = unlimited: never the bottleneck
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        t0 = time.perf_counter()

        async def one(i: int, request: Request) -> RequestResult:
            await asyncio.sleep(max(0.0, t0 + arrivals[i] - time.perf_counter()))
            async with gate:
                body = dialect.body(model, request, temperature, seed + i if temperature > 0 else None)
                result = await _send(session, url, body, request, t0, timeout_s, dialect)
            report.done(result.success, result.output_tokens)
            return result

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))


async def served_models(base_url: str, timeout_s: float = 10.0) -> list[str]:
    """The model ids a server lists at `GET /v1/models`."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async with session.get(base_url.rstrip("/") + "/v1/models") as resp:
            resp.raise_for_status()
            return [m["id"] for m in (await resp.json())["data"]]


async def _send(
    session: aiohttp.ClientSession, url: str, body: dict, request: Request, t0: float, timeout_s: float, dialect: Dialect
) -> RequestResult:
    start = time.perf_counter()
    token_times: list[float] = []
    ids: list[int] = []
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body) as resp:
                if resp.status != 200:
                    raise _StreamError(f"HTTP {resp.status}: {_error_message(await resp.text())}")
                usage = await _read_stream(resp.content, token_times, ids, dialect)
        _check_output(request, ids, usage)
        error = ""
    except TimeoutError:
        error = f"timed out after {timeout_s:g} s"
    except _StreamError as exc:
        error = str(exc)
    except (aiohttp.ClientError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    end = token_times[-1] if token_times else time.perf_counter()
    return RequestResult(
        success=not error,
        error=error,
        start_s=start - t0,
        ttft_s=token_times[0] - start if token_times else 0.0,
        itl_s=tuple(np.diff(token_times).tolist()),
        e2el_s=end - start,
        prompt_len=request.prompt_len,
        output_tokens=len(ids),
        output_token_ids=tuple(ids),
    )


async def _read_stream(content: aiohttp.StreamReader, token_times: list[float], ids: list[int], dialect: Dialect) -> dict | None:
    """Consume SSE lines into `token_times` (one per token-bearing chunk) and `ids`; return the usage."""
    usage = None
    async for raw in content:
        now = time.perf_counter()
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, event/id fields
        data = line[5:].strip()
        if data == b"[DONE]":
            return usage
        try:
            chunk = json.loads(data)
            if "error" in chunk:
                raise _StreamError(f"error in stream: {_error_message(data.decode())}")
            new, reported, last = dialect.read(chunk)
        except (ValueError, AttributeError, TypeError) as exc:
            raise _StreamError(f"malformed stream chunk {data[:100]!r}: {exc}") from None
        usage = reported or usage
        if new:
            token_times.append(now)
            ids.extend(new)
        if last:
            return usage
    raise _StreamError("stream ended before 'data: [DONE]'")


def _check_output(request: Request, ids: list[int], usage: dict | None) -> None:
    if usage is not None and usage.get("completion_tokens") != len(ids):
        raise _StreamError(f"usage.completion_tokens={usage.get('completion_tokens')} but {len(ids)} token ids streamed")
    if request.response_format is not None:
        if not 0 < len(ids) <= request.max_tokens:
            raise _StreamError(f"expected 1 to {request.max_tokens} output tokens (max_tokens), got {len(ids)}")
    elif len(ids) != request.expected_output_len:
        raise _StreamError(f"expected {request.expected_output_len} output tokens (ignore_eos), got {len(ids)}")


def _error_message(body: str) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.strip()[:200] or "(empty body)"


class _ProgressReporter:
    """Reports after every tenth of the requests, so long runs show life without flooding the
    log; a live display shows every request (and tokens/s) instead."""

    def __init__(self, total: int, sink: Progress):
        self.total, self.sink = total, sink
        self.step = max(1, math.ceil(total / 10))
        self.finished = self.failed = 0
        display.task(f"bench: {total} requests", total)

    def done(self, success: bool, tokens: int) -> None:
        self.finished += 1
        self.failed += not success
        display.advance(1, tokens)
        if (self.finished % self.step == 0 or self.finished == self.total) and not display.live():
            self.sink(f"bench: {self.finished}/{self.total} done, {self.failed} failed")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
