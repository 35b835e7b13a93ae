"""A bounded loopback soak of a candidate's engine process behind the front.

Starts the seed engine (every component on, see loopback.py; or --candidate) on the
laptop model and keeps --concurrency clients busy for --duration seconds with a seeded
mix of requests: valid ones (completions and chat, streamed or not, prompt scoring with
echo + logprobs), invalid ones (malformed JSON, invalid UTF-8, unknown or unsupported
parameters, prompts too long, token ids out of the vocabulary), and clients that go away
mid-stream or before the answer. Meanwhile it samples the engine process's RSS.

Prints JSON: requests by kind and status, server errors (>= 500), requests that hung
past --request-timeout, the RSS of the first and last quartile of the run after
--warmup (medians, MiB, and their ratio), and the engine's in-flight count once the
clients stop (from its /stats: 0 means no request was left stuck). Exit 0 when there
was no server error, nothing hung, nothing was left in flight and the RSS grew by less
than --max-growth; 1 otherwise.

    python benchmarks/soak.py [--duration 180] [--concurrency 8] [--candidate PATH | --design K=V ...]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from loopback import add_arguments, engine_process

MODEL = "tiny-llama-cpu"
VOCAB = 4096  # the laptop model's
MIB = 2**20


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prompt(rng: random.Random, longest: int = 192) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(rng.randint(4, longest))]


def completion(rng: random.Random, **extra) -> dict:
    return {"model": MODEL, "prompt": prompt(rng), "max_tokens": rng.randint(1, 24), "temperature": rng.choice([0.0, 0.8]), "seed": 7,
            "ignore_eos": True, **extra}


def chat(rng: random.Random, **extra) -> dict:
    words = " ".join(rng.choice(["the", "a", "cat", "sat", "on", "mat", "and", "so", "it", "went"]) for _ in range(rng.randint(3, 60)))
    return {"model": MODEL, "messages": [{"role": "user", "content": words}], "max_tokens": rng.randint(1, 24), "ignore_eos": True, **extra}


# kind -> (route, body maker, what the client does: "read" the answer, "drop" it after a
# few stream chunks, or "abandon" the request before any answer), weight
KINDS = {
    "completion": ("/v1/completions", lambda r: completion(r), "read", 4),
    "completion_stream": ("/v1/completions", lambda r: completion(r, stream=True, stream_options={"include_usage": True}), "read", 4),
    "chat_stream": ("/v1/chat/completions", lambda r: chat(r, stream=True, logprobs=True, top_logprobs=2), "read", 3),
    "score_prompt": ("/v1/completions", lambda r: completion(r, max_tokens=0, echo=True, logprobs=1), "read", 2),
    "disconnect_mid_stream": ("/v1/completions", lambda r: completion(r, max_tokens=64, stream=True), "drop", 3),
    "abandoned_before_answer": ("/v1/chat/completions", lambda r: chat(r, max_tokens=64), "abandon", 2),
    "malformed_json": ("/v1/completions", lambda r: b'{"model": "tiny-llama-cpu", "prompt": [1, 2', "read", 1),
    "invalid_utf8": ("/v1/chat/completions", lambda r: b'{"model": "tiny-llama-cpu", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "read", 1),
    "unsupported_parameter": ("/v1/chat/completions", lambda r: chat(r, **r.choice([{"tools": [{"type": "function"}]}, {"logit_bias": {"1": 5}}])), "read", 1),
    "unknown_parameter": ("/v1/completions", lambda r: completion(r, top_k=5), "read", 1),
    "context_too_long": ("/v1/completions", lambda r: completion(r, max_tokens=4000), "read", 1),
    "token_out_of_vocabulary": ("/v1/completions", lambda r: completion(r) | {"prompt": [1, VOCAB + 7]}, "read", 1),
}


class Tally:
    def __init__(self) -> None:
        self.by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.hung: list[str] = []
        self.server_errors: list[str] = []

    def record(self, kind: str, outcome: str) -> None:
        self.by_kind[kind][outcome] += 1


async def one(session: aiohttp.ClientSession, url: str, kind: str, rng: random.Random, timeout_s: float, tally: Tally) -> None:
    route, make, behaviour, _ = KINDS[kind]
    body = make(rng)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        async with asyncio.timeout(timeout_s if behaviour != "abandon" else rng.uniform(0.01, 0.2)):
            async with session.post(url + route, data=data, headers={"Content-Type": "application/json"}) as resp:
                if resp.status >= 500:
                    tally.server_errors.append(f"{kind}: {resp.status} {(await resp.text())[:200]}")
                if behaviour == "drop" and resp.status == 200:
                    for _ in range(rng.randint(1, 3)):
                        await resp.content.readline()
                    resp.close()  # the client goes away mid-stream
                    tally.record(kind, "dropped")
                    return
                text = await resp.text()
                if resp.status == 200 and isinstance(body, dict) and body.get("stream") and "data: [DONE]" not in text:
                    tally.server_errors.append(f"{kind}: stream ended without [DONE]")
                tally.record(kind, str(resp.status))
    except TimeoutError:
        if behaviour == "abandon":
            tally.record(kind, "abandoned")
        else:
            tally.hung.append(kind)
            tally.record(kind, "hung")


async def clients(url: str, args: argparse.Namespace, tally: Tally) -> None:
    kinds, weights = list(KINDS), [KINDS[k][3] for k in KINDS]
    deadline = time.monotonic() + args.duration

    async def client(i: int) -> None:
        rng = random.Random(args.seed * 1000 + i)
        while time.monotonic() < deadline:
            await one(session, url, rng.choices(kinds, weights)[0], rng, args.request_timeout, tally)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(i) for i in range(args.concurrency)))


def rss_mib(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in (root, *root.children(recursive=True))) / MIB
    except psutil.Error:
        return 0.0


async def sample_rss(pid: int, samples: list[tuple[float, float]], period_s: float = 0.5) -> None:
    start = time.monotonic()
    while True:
        samples.append((time.monotonic() - start, rss_mib(pid)))
        await asyncio.sleep(period_s)


async def in_flight_after(url: str, wait_s: float) -> tuple[int, float]:
    """The engine's in-flight count once it settles (or after `wait_s`), and how long that took."""
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url + "/stats") as r:
                n = (await r.json())["in_flight"]
            if n == 0 or time.monotonic() - start > wait_s:
                return n, time.monotonic() - start
            await asyncio.sleep(0.2)


async def soak(url: str, pid: int, args: argparse.Namespace) -> dict:
    tally, samples = Tally(), []
    sampler = asyncio.create_task(sample_rss(pid, samples))
    start = time.monotonic()
    await clients(url, args, tally)
    seconds = time.monotonic() - start
    sampler.cancel()
    in_flight, drain_s = await in_flight_after(url, args.drain_timeout)
    measured = [mib for t, mib in samples if t >= args.warmup]
    quarter = max(len(measured) // 4, 1)
    first, last = statistics.median(measured[:quarter]), statistics.median(measured[-quarter:])
    requests = sum(sum(c.values()) for c in tally.by_kind.values())
    return {
        "duration_s": round(seconds, 1), "concurrency": args.concurrency, "requests": requests, "requests_per_s": round(requests / seconds, 1),
        "by_kind": {k: dict(sorted(c.items())) for k, c in sorted(tally.by_kind.items())},
        "server_errors": len(tally.server_errors), "server_error_examples": tally.server_errors[:5], "hung": len(tally.hung),
        "rss_mib": {"first_quartile": round(first, 1), "last_quartile": round(last, 1), "peak": round(max(measured), 1),
                    "growth": round(last - first, 1), "ratio": round(last / first, 4), "samples": len(measured), "warmup_s": args.warmup},
        "in_flight_after": in_flight, "drain_s": round(drain_s, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, help="seconds left out of the RSS comparison (default: a sixth of --duration)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds after which a request counts as hung")
    parser.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to wait for the in-flight count to reach 0")
    parser.add_argument("--max-growth", type=float, default=0.05, help="largest accepted RSS growth, last quartile over first, minus 1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.warmup = args.duration / 6 if args.warmup is None else args.warmup
    with tempfile.TemporaryDirectory(prefix="vibeserve-soak-") as tmp, engine_process(args.candidate, args.design, Path(tmp)) as proc:
        say(f"soak: {args.concurrency} clients for {args.duration:g} s against {proc.base_url} (engine pid {proc.proc.pid}) ...")
        result = asyncio.run(soak(proc.base_url, proc.proc.pid, args))
        result["engine_alive"] = proc.failure() is None
    result["max_growth"] = args.max_growth
    result["passed"] = (not result["server_errors"] and not result["hung"] and result["in_flight_after"] == 0 and result["engine_alive"]
                        and result["rss_mib"]["ratio"] - 1 < args.max_growth)
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
