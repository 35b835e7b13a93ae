"""Benchmark harness: exact metrics, seeded workloads, and a load generator run against a real local server."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import pytest
from aiohttp import web

from vibeserve_ray.bench import (
    LLAMA_CPP,
    METRIC_NAMES,
    BenchMetrics,
    Request,
    RequestResult,
    arrival_times,
    bound_kind,
    compute_metrics,
    format_table,
    from_jsonl,
    headline,
    run_benchmark,
    run_load,
    slo_verdict,
    synthetic,
)
from vibeserve_ray.errors import BadInput

# ---------------------------------------------------------------- a tiny streaming server


def echo_tokens(prompt: list[int], n: int) -> list[int]:
    """What the fake server generates: a function of the prompt, so the client's ids can be checked."""
    return [(prompt[i % len(prompt)] + i) % 1000 for i in range(n)]


def chunked(ids: list[int]) -> list[list[int]]:
    """One token first, then two per chunk: exercises the one-gap-per-chunk rule."""
    return [ids[:1]] + [ids[i:i + 2] for i in range(1, len(ids), 2)]


class FakeServer:
    """An OpenAI-style streaming completions server on 127.0.0.1, run in its own thread and loop.

    The base URL's first path segment picks a behaviour: ok, hang, bad, short.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.in_flight = self.peak = 0
        self.bodies: list[dict] = []

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}"

    def reset(self) -> None:
        self.in_flight = self.peak = 0
        self.bodies.clear()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{mode}/v1/completions", self._completions)
        app.router.add_post("/{mode}/completion", self._llama_cpp)
        app.router.add_get("/{mode}/v1/models", self._models)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        mode, body = request.match_info["mode"], await request.json()
        self.bodies.append(body)
        if mode == "bad":
            error = {"message": "prompt is too long", "type": "BadRequestError", "code": 400}
            return web.json_response({"error": error}, status=400)
        n = body["max_tokens"] - (mode == "short")
        ids = echo_tokens(body["prompt"], n)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for part in chunked(ids):
                await asyncio.sleep(0.005)
                choice = {"index": 0, "text": "x" * len(part), "token_ids": part, "finish_reason": None}
                await self._event(resp, {"id": "c", "object": "text_completion", "choices": [choice], "usage": None})
                if mode == "hang":
                    await asyncio.sleep(3600)
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n, "total_tokens": n + len(body["prompt"])}
            await self._event(resp, {"id": "c", "object": "text_completion", "choices": [], "usage": usage})
            await resp.write(b"data: [DONE]\n\n")
            return resp
        finally:
            self.in_flight -= 1

    async def _llama_cpp(self, request: web.Request) -> web.StreamResponse:
        """llama-server's native route as it streams (checked against its build here): ids in
        `tokens`, a last chunk with `stop` and `tokens_predicted`, no [DONE]."""
        body = await request.json()
        self.bodies.append(body)
        ids = echo_tokens(body["prompt"], body["n_predict"])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, t in enumerate(ids):
            await self._event(resp, {"index": 0, "content": "x", "tokens": [t], "stop": False, "tokens_predicted": i + 1})
        await self._event(resp, {"index": 0, "content": "", "tokens": [], "stop": True, "tokens_predicted": len(ids),
                                 "tokens_evaluated": len(body["prompt"]), "stop_type": "limit"})
        return resp

    @staticmethod
    async def _event(resp: web.StreamResponse, obj: dict) -> None:
        await resp.write(f"data: {json.dumps(obj)}\n\n".encode())


@pytest.fixture(scope="module")
def server():
    srv = FakeServer()
    srv.start()
    yield srv
    srv.stop()


def load(base_url: str, requests: list[Request], **kwargs) -> list[RequestResult]:
    kwargs.setdefault("progress", lambda line: None)
    return asyncio.run(run_load(base_url, "tiny", requests, **kwargs))


# ---------------------------------------------------------------- metrics and SLOs


def result(success=True, ttft=0.0, itl=(), e2el=0.0, prompt_len=0, out=0) -> RequestResult:
    return RequestResult(success, "" if success else "boom", 0.0, ttft, tuple(itl), e2el, prompt_len, out, tuple(range(out)))


HAND_BUILT = [
    result(ttft=0.1, itl=(0.02, 0.03), e2el=0.15, prompt_len=10, out=3),  # tpot 25 ms
    result(ttft=0.2, e2el=0.2, prompt_len=5, out=1),  # one token: no tpot
    result(success=False, ttft=0.9, e2el=5.0, prompt_len=7, out=0),  # failed: counted, not measured
    result(ttft=0.3, itl=(0.05,), e2el=0.35, prompt_len=20, out=2),  # tpot 50 ms
]


def test_metrics_match_hand_computed_values():
    m = compute_metrics(HAND_BUILT, duration_s=2.0)
    assert (m.completed, m.failed, m.total_input_tokens, m.total_output_tokens) == (3, 1, 35, 6)
    assert m.duration_s == 2.0
    assert (m.request_throughput, m.output_throughput, m.total_token_throughput) == pytest.approx((1.5, 3.0, 20.5))
    expected = {
        "ttft": (200.0, 200.0, 298.0),  # p99 interpolates between the two largest: 200 + 0.98 * 100
        "tpot": (37.5, 37.5, 49.75),
        "itl": (100.0 / 3, 30.0, 49.6),
        "e2el": (700.0 / 3, 200.0, 347.0),
    }
    for name, values in expected.items():
        got = (getattr(m, f"mean_{name}_ms"), getattr(m, f"median_{name}_ms"), getattr(m, f"p99_{name}_ms"))
        assert got == pytest.approx(values), name


def test_metrics_use_vllm_names_and_zero_when_nothing_completed():
    m = compute_metrics([result(success=False, prompt_len=3)], duration_s=1.0)
    assert (m.completed, m.failed, m.output_throughput, m.p99_ttft_ms, m.mean_itl_ms) == (0, 1, 0.0, 0.0, 0.0)
    assert list(m.to_dict()) == list(METRIC_NAMES)
    assert {"request_throughput", "p99_tpot_ms", "median_e2el_ms", "mean_itl_ms"} <= set(METRIC_NAMES)


def test_slo_ms_keys_are_upper_bounds_and_throughput_keys_lower_bounds():
    m = compute_metrics([r for r in HAND_BUILT if r.success], duration_s=2.0)  # p99 ttft 298, output 3 tok/s
    assert slo_verdict(m, {"p99_ttft_ms": 300, "output_throughput": 3.0}) == (True, [])
    passed, violations = slo_verdict(m, {"p99_ttft_ms": 250, "output_throughput": 5.0})
    assert not passed
    assert [(v.name, v.kind) for v in violations] == [("p99_ttft_ms", "max"), ("output_throughput", "min")]
    assert "p99_ttft_ms = 298 > max 250" == str(violations[0])


def test_slo_rejects_unknown_or_directionless_keys():
    m = compute_metrics(HAND_BUILT, duration_s=2.0)
    with pytest.raises(ValueError, match="unknown SLO metric"):
        slo_verdict(m, {"p99_latency": 1.0})
    with pytest.raises(ValueError, match="no bound direction"):
        slo_verdict(m, {"completed": 1.0})


def test_failed_requests_violate_the_slo_even_when_latencies_pass():
    passed, violations = slo_verdict(compute_metrics(HAND_BUILT, duration_s=2.0), {"p99_ttft_ms": 1e9})
    assert not passed and [v.name for v in violations] == ["failed"]


@pytest.mark.parametrize("bounds, good", [
    ({}, 3),  # no bound: every completed request is good, goodput is request throughput
    ({"ttft_ms": 150}, 1),
    ({"tpot_ms": 40}, 2),  # the one-token answer has no gaps: its TPOT counts as 0, as in vLLM
    ({"ttft_ms": 250, "e2el_ms": 160}, 1),
    ({"ttft_ms": 300, "tpot_ms": 50}, 3),  # bounds are inclusive; the failed request never counts
])
def test_goodput_counts_completed_requests_within_every_per_request_bound(bounds, good):
    m = compute_metrics(HAND_BUILT, duration_s=2.0, goodput=bounds)
    assert m.request_goodput == pytest.approx(good / 2.0)
    assert m.request_throughput == pytest.approx(1.5)  # the other metrics do not change


def test_goodput_is_a_lower_bound_slo_and_rejects_unknown_bounds():
    m = compute_metrics(HAND_BUILT, duration_s=2.0, goodput={"ttft_ms": 150})
    assert bound_kind("request_goodput") == "min" and headline(m, "request_goodput") == 0.5
    passed, violations = slo_verdict(m, {"request_goodput": 1.0})
    assert not passed and [(v.name, v.kind) for v in violations] == [("failed", "max"), ("request_goodput", "min")]
    with pytest.raises(ValueError, match="unknown goodput bound 'itl_ms'"):
        compute_metrics(HAND_BUILT, duration_s=2.0, goodput={"itl_ms": 10})


def test_headline_reads_a_metric_by_name():
    m = compute_metrics(HAND_BUILT, duration_s=2.0)
    assert headline(m, "output_throughput") == 3.0
    with pytest.raises(ValueError, match="unknown headline metric"):
        headline(m, "goodput")


# ---------------------------------------------------------------- workloads


def test_synthetic_workload_is_seeded_in_range_and_avoids_reserved_ids():
    reserved = (0, 1, 2, 7)
    make = lambda seed: synthetic(40, seed, vocab_size=10, input_len=(3, 9), output_len=(2, 5), reserved_ids=reserved)
    a = make(seed=5)
    assert a == make(seed=5) and a != make(seed=6)
    assert all(3 <= r.prompt_len <= 9 and 2 <= r.max_tokens <= 5 for r in a)
    assert {t for r in a for t in r.prompt_token_ids} == set(range(10)) - set(reserved)
    assert {r.prompt_len for r in a} == set(range(3, 10))  # both ends of the range are reachable
    assert all(r.expected_output_len == r.max_tokens and r.prediction is None for r in a)


def test_synthetic_shared_prefix_is_common_to_all_prompts():
    reqs = synthetic(10, 0, vocab_size=4096, input_len=(4, 4), output_len=(1, 1), shared_prefix_len=16)
    prefixes = {tuple(r.prompt_token_ids[:16]) for r in reqs}
    assert len(prefixes) == 1 and all(r.prompt_len == 20 for r in reqs)
    assert len({tuple(r.prompt_token_ids[16:]) for r in reqs}) == 10


def write_jsonl(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_from_jsonl_reads_requests_and_samples_with_a_seed(tmp_path):
    rows = [{"prompt_token_ids": [i, i + 1], "max_tokens": i + 1} for i in range(5)]
    rows[2]["prediction"] = [9, 9]
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    reqs = from_jsonl(path, 5, seed=0)
    assert reqs[0] == Request([0, 1], 1) and reqs[2] == Request([2, 3], 3, [9, 9])
    fewer, more = from_jsonl(path, 3, seed=1), from_jsonl(path, 12, seed=1)
    assert fewer == from_jsonl(path, 3, seed=1) and len(set(map(str, fewer))) == 3
    assert len(more) == 12 and {r.max_tokens for r in more} == {1, 2, 3, 4, 5}


def test_from_jsonl_names_the_bad_line(tmp_path):
    good = json.dumps({"prompt_token_ids": [1], "max_tokens": 2})
    for bad, reason in [("{not json", "not valid JSON"), ('{"prompt_token_ids": [], "max_tokens": 2}', "non-empty"),
                        ('{"prompt_token_ids": [1], "max_tokens": 0}', "max_tokens"),
                        ('{"prompt_token_ids": [1], "max_tokens": 2, "response_format": {"type": "yaml"}}', "response_format")]:
        path = write_jsonl(tmp_path / "d.jsonl", [good, bad])
        with pytest.raises(BadInput, match=reason) as exc:
            from_jsonl(path, 2, seed=0)
        assert exc.value.field == "line 2" and exc.value.file == str(path)


# ---------------------------------------------------------------- load generator against a real server


def test_poisson_arrivals_are_seeded_with_mean_gap_one_over_rate():
    times = arrival_times(20_000, request_rate=50.0, seed=3)
    assert times == arrival_times(20_000, request_rate=50.0, seed=3)
    assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:]))
    assert times[-1] / (len(times) - 1) == pytest.approx(1 / 50.0, rel=0.03)
    assert arrival_times(4, math.inf, seed=0) == [0.0] * 4


def test_closed_loop_completes_every_request_with_exact_tokens_and_bounded_concurrency(server):
    server.reset()
    reqs = synthetic(12, 0, vocab_size=1000, input_len=(2, 8), output_len=(4, 9))
    reqs[0] = Request(reqs[0].prompt_token_ids, reqs[0].max_tokens, prediction=[1, 2, 3])
    lines: list[str] = []
    results = load(server.url("ok"), reqs, concurrency=4, progress=lines.append)
    assert [r.error for r in results] == [""] * 12
    for req, res in zip(reqs, results):
        assert res.output_tokens == req.max_tokens and res.prompt_len == req.prompt_len
        assert list(res.output_token_ids) == echo_tokens(req.prompt_token_ids, req.max_tokens)
        assert len(res.itl_s) == len(chunked(list(range(req.max_tokens)))) - 1  # one gap per chunk
        assert 0 < res.ttft_s <= res.e2el_s
    assert 2 <= server.peak <= 4
    assert server.bodies[0]["ignore_eos"] and server.bodies[0]["stream"]
    assert [b.get("prediction") for b in server.bodies].count([1, 2, 3]) == 1
    assert lines[-1] == "bench: 12/12 done, 0 failed" and len(lines) == 6  # every 2 = ceil(10%)
    m = compute_metrics(results, duration_s=1.0)
    assert m.total_output_tokens == sum(r.max_tokens for r in reqs) and m.failed == 0


def test_poisson_load_sends_every_request_no_earlier_than_its_arrival(server):
    reqs = synthetic(20, 1, vocab_size=1000, input_len=(2, 4), output_len=(2, 3))
    t0 = time.perf_counter()
    results = load(server.url("ok"), reqs, request_rate=40.0, seed=7)
    elapsed = time.perf_counter() - t0
    arrivals = arrival_times(20, 40.0, seed=7)
    assert len(results) == 20 and all(r.success for r in results)
    assert all(r.start_s >= a - 1e-3 for r, a in zip(results, arrivals))
    assert arrivals[-1] <= elapsed < arrivals[-1] + 2.0


def test_hung_server_fails_requests_by_timeout_without_hanging_the_run(server):
    reqs = synthetic(4, 0, vocab_size=1000, input_len=(2, 2), output_len=(4, 4))
    t0 = time.perf_counter()
    results = load(server.url("hang"), reqs, concurrency=4, timeout_s=1.0)
    assert time.perf_counter() - t0 < 3.0
    assert all(not r.success and r.error == "timed out after 1 s" for r in results)
    assert compute_metrics(results, 1.0).failed == 4


def test_http_error_counts_as_failed_with_the_server_message(server):
    lines: list[str] = []
    results = load(server.url("bad"), synthetic(3, 0, vocab_size=100, input_len=(2, 2), output_len=(2, 2)),
                   progress=lines.append)
    assert [r.error for r in results] == ["HTTP 400: prompt is too long"] * 3
    assert lines[-1] == "bench: 3/3 done, 3 failed"


def test_short_output_despite_ignore_eos_counts_as_failed(server):
    results = load(server.url("short"), synthetic(2, 0, vocab_size=100, input_len=(2, 2), output_len=(3, 3)))
    assert all(not r.success and "expected 3 output tokens" in r.error for r in results)


def test_constrained_request_sends_its_format_and_may_end_before_max_tokens(server):
    server.reset()
    fmt = {"type": "json_object"}
    results = load(server.url("short"), [Request([5, 6], 4, response_format=fmt)])
    assert results[0].success and results[0].output_tokens == 3  # its grammar ended it: fine
    assert server.bodies[0]["response_format"] == fmt and not server.bodies[0]["ignore_eos"]


def test_llama_cpp_dialect_reads_its_native_stream_and_sends_its_own_fields(server):
    server.reset()
    reqs = synthetic(6, 0, vocab_size=1000, input_len=(2, 8), output_len=(3, 7))
    reqs.append(Request([5, 6], 4, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}))
    results = load(server.url("ok"), reqs, concurrency=3, dialect=LLAMA_CPP)
    assert [r.error for r in results] == [""] * 7
    assert all(list(res.output_token_ids) == echo_tokens(req.prompt_token_ids, req.max_tokens) for req, res in zip(reqs, results))
    body = server.bodies[0]
    assert body["return_tokens"] and body["ignore_eos"] and body["n_predict"] == reqs[0].max_tokens and "max_tokens" not in body
    assert server.bodies[-1]["json_schema"] == {"type": "object"} and not server.bodies[-1]["ignore_eos"]


def test_run_benchmark_reports_headline_slo_json_and_table(server):
    reqs = synthetic(8, 0, vocab_size=1000, input_len=(2, 6), output_len=(3, 6))
    report = run_benchmark(server.url("ok"), None, reqs, 4, math.inf, 0, 10.0, "output_throughput",
                           {"p99_ttft_ms": 60_000, "request_throughput": 1e9}, progress=lambda line: None)
    out = report.to_json()
    assert set(METRIC_NAMES) <= set(out) and out["completed"] == 8
    assert out["headline"] == {"name": "output_throughput", "value": report.metrics.output_throughput}
    assert out["slo"]["passed"] is False and [v["name"] for v in out["slo"]["violations"]] == ["request_throughput"]
    json.dumps(out)
    table = format_table(report)
    assert "Serving Benchmark Result" in table and "P99 TTFT (ms):" in table and "violated: request_throughput" in table
    assert isinstance(report.metrics, BenchMetrics) and len(report.results) == 8
