"""What each engine component buys, alone and together, on the tiny targets, in one run.

1. targets/tiny-llama-cpu (output tokens/s at 16 concurrent requests): the seed; each
   component switched on alone (the smallest valid design holding it, e.g. static
   batching = static + slab); the best combination; and transformers' own batched
   `generate` on the same prompts and output lengths (in this process).
2. targets/tiny-llama-prefix: prefix caching off vs on (mean TTFT).
3. targets/tiny-llama-code-edit: speculation off vs prompt lookup (mean e2e latency).

Every candidate is a point of search_spaces/llama.toml, materialised and measured as
`vibeserve bench` measures it (vibeserve_ray.inner.evaluate: a sandboxed subprocess behind the
HTTP front, warm-up, then the target's load). The best combination and the prefix and
speculation designs are also checked for exactness: the checker of `vibeserve check`
(held-out prompts: sequential, concurrent, seeded sampling) and every benchmark
response against the reference's greedy tokens. Measurements of one comparison are
interleaved, `--repeats` times, and medians reported, because the 2-core machine is
shared. Progress on stderr; one JSON on stdout.

    python benchmarks/engine_components.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.engine_vs_transformers import hf_batched  # noqa: E402
from vibeserve_ray.candidate import load_candidate  # noqa: E402
from vibeserve_ray.design_space import default_space_path, load_space, materialise  # noqa: E402
from vibeserve_ray.inner.judge.checker import check_candidate  # noqa: E402
from vibeserve_ray.inner.evaluate import Measurement, bench_candidate  # noqa: E402
from vibeserve_ray.inner.workload import target_workload  # noqa: E402
from vibeserve_ray.target import Target, load_target  # noqa: E402

TARGETS = ROOT / "targets"
# Two engine worker processes of one torch thread each on packed weights: 780-790 output
# tok/s here against 510-530 for continuous + slab alone (2-core VM, interleaved). The
# engine's own decode attention kernel: 1.27x end to end in bfloat16 (below).
BEST = {"scheduler": "continuous", "kv_cache": "slab", "linear": "onednn", "step_loop": "process", "attention": "decode_kernel"}
BEST_KNOBS: dict = {"num_threads": 1, "engine_workers": 2}
# The fastest bfloat16 design measured against vLLM (tiny-llama-cpu, 2026-12-06, 3 interleaved
# rounds: 2,240 output tok/s with two threads, 1,982 with one, vLLM 1,510): one engine process
# batching every request, the decode kernel, the compiled graph (max-autotune over inductor's
# C++ GEMMs; it packs the linears itself, so `linear = torch`), and the knobs an Optuna study
# on that target found. A second torch thread is fragile where other work shares the cores
# (OpenMP barriers under oversubscription: skills/hardware/cpu-threads).
BEST_BF16 = {**BEST, "dtype": "bfloat16", "linear": "torch", "compile": "graph"}
BEST_BF16_KNOBS: dict = {"num_threads": 2, "engine_workers": 1, "max_num_seqs": 37, "max_num_batched_tokens": 319}
# name -> (design, knobs); each component alone, in the smallest valid design that holds it
ALONE = {
    "seed": ({}, {}),
    "slab KV cache": ({"kv_cache": "slab"}, {}),
    "paged KV cache": ({"kv_cache": "paged"}, {}),
    "prefix caching": ({"kv_cache": "paged", "prefix_cache": "on"}, {}),
    "eager attention": ({"attention": "eager"}, {}),
    "compile": ({"compile": "on"}, {}),
    "prompt-lookup speculation": ({"speculation": "prompt_lookup"}, {}),
    "packed linear (oneDNN)": ({"linear": "onednn"}, {}),
    "static batching": ({"scheduler": "static", "kv_cache": "slab"}, {}),
    "continuous batching (slab)": ({"scheduler": "continuous", "kv_cache": "slab"}, {}),
    "continuous batching (paged)": ({"scheduler": "continuous", "kv_cache": "paged"}, {}),
    "best combination": (BEST, BEST_KNOBS),
}
PREFIX = {"prefix caching off": ({**BEST, "kv_cache": "paged"}, BEST_KNOBS),
          "prefix caching on": ({**BEST, "kv_cache": "paged", "prefix_cache": "on"}, BEST_KNOBS)}
SPEC = {"speculation off": (BEST, BEST_KNOBS),
        "prompt-lookup speculation": ({**BEST, "speculation": "prompt_lookup"}, {**BEST_KNOBS, "spec_k": 8, "spec_ngram": 2})}
WANT = {"best_vs_seed": 3.0, "best_vs_transformers_batched": 1.0, "prefix_ttft_cut": 2.0, "speculation_e2el_cut": 2.0}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """Materialises and measures candidates of one target, keeping every run's headline."""

    def __init__(self, target: Target, num_requests: int, work: Path):
        self.target, self.num_requests, self.work = target, num_requests, work
        self.space = load_space(default_space_path())
        self.dirs: dict[str, Path] = {}
        self.runs: dict[str, list[float]] = {}
        self.measurements: dict[str, Measurement] = {}

    def candidate(self, name: str, design: dict, knobs: dict) -> Path:
        if name not in self.dirs:
            dest = self.work / self.target.name / f"c{len(self.dirs)}"
            self.dirs[name] = materialise(self.space, dest, design, knobs, source=name)
        return self.dirs[name]

    def measure(self, name: str, design: dict, knobs: dict) -> float:
        spec = load_candidate(self.candidate(name, design, knobs))
        t0 = time.perf_counter()
        result = bench_candidate(self.target, spec, self.work / "runs" / name.replace(" ", "_"), num_requests=self.num_requests)
        if not isinstance(result, Measurement):
            raise SystemExit(f"{self.target.name}: {name} failed: {result.describe()}")
        self.runs.setdefault(name, []).append(result.report.headline_value)
        self.measurements[name] = result
        say(f"  {self.target.name}: {name}: {result.report.headline_name} = {result.report.headline_value:.1f} "
            f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}, {result.accuracy.summary()})")
        return result.report.headline_value

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def exactness(self, name: str) -> dict:
        """The checker on the held-out prompts, and the last run's responses against the reference."""
        verdict = check_candidate(self.target, load_candidate(self.dirs[name]), self.work / "check" / name.replace(" ", "_"))
        exact = self.measurements[name].accuracy
        say(f"  exactness of {name}: checker {'PASS' if verdict.passed else 'FAIL'}, {exact.summary()}")
        return {"passed": verdict.passed and exact.ok, "checker": verdict.summary().splitlines()[0],
                "exact_responses": f"{exact.exact}/{exact.checked}", "first_difference": exact.failure}


def transformers_batched(target: Target, num_requests: int, threads: int) -> float:
    """Output tokens/s of `generate` over the workload in batches of the target's concurrency
    (left-padded, each batch run to its longest output); only requested tokens count."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    requests = target_workload(target, num_requests)
    model_dir = target.model_dir()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    pad = json.loads((model_dir / "config.json").read_text())["pad_token_id"]
    size = target.spec.benchmark.concurrency

    def run(batch) -> None:
        hf_batched(model, [r.prompt_token_ids for r in batch], max(r.max_tokens for r in batch), pad)

    with torch.inference_mode():
        run(requests[:2])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(requests), size):
            run(requests[i:i + size])
        elapsed = time.perf_counter() - t0
    return sum(r.max_tokens for r in requests) / elapsed


def compare_pair(bench: Bench, configs: dict, repeats: int) -> None:
    for rep in range(repeats):
        say(f"{bench.target.name}: round {rep + 1}/{repeats}")
        for name, (design, knobs) in configs.items():
            bench.measure(name, design, knobs)


def summary(bench: Bench, names: list[str], baseline: str) -> list[dict]:
    """Each config's median headline and its ratio to the baseline's (> 1 is better, whichever the target's direction)."""
    out, objective = [], bench.target.spec.benchmark.objective
    for name in names:
        value, base = bench.median(name), bench.median(baseline)
        design, knobs = {**ALONE, **PREFIX, **SPEC}[name]
        out.append({"name": name, "design": design, "knobs": knobs, bench.target.spec.benchmark.headline: round(value, 2),
                    "runs": [round(v, 2) for v in bench.runs[name]], f"ratio_to_{baseline.replace(' ', '_')}": round(objective.speedup(value, base), 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests and one round (a smoke run; noisier)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the seed / best / transformers and of each pair")
    ap.add_argument("--skip-check", action="store_true", help="leave out the exactness checks")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    load_start = os.getloadavg()[0]
    cpu, prefix, edit = (load_target(TARGETS / n) for n in ("tiny-llama-cpu", "tiny-llama-prefix", "tiny-llama-code-edit"))
    n_cpu, n_prefix, n_edit = (16, 32, 8) if args.quick else (None, None, None)
    work = Path(tempfile.mkdtemp(prefix="engine-components-"))
    say(f"engine_components: work dir {work}; {os.cpu_count()} cpus; load {load_start:.1f}")

    throughput = Bench(cpu, n_cpu or cpu.spec.benchmark.num_requests, work)
    say("tiny-llama-cpu: each component alone")
    for name, (design, knobs) in ALONE.items():
        if name not in ("seed", "best combination"):
            throughput.measure(name, design, knobs)
    hf: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(repeats):
        say(f"tiny-llama-cpu: seed / best / transformers, round {rep + 1}/{repeats}")
        for name in ("seed", "best combination"):
            throughput.measure(name, *ALONE[name])
        for threads in hf:
            hf[threads].append(transformers_batched(cpu, throughput.num_requests, threads))
            say(f"  transformers batched generate, {threads} thread(s): {hf[threads][-1]:.1f} tok/s (load {os.getloadavg()[0]:.1f})")
    hf_best = max(statistics.median(v) for v in hf.values())

    prefix_bench = Bench(prefix, n_prefix or prefix.spec.benchmark.num_requests, work)
    compare_pair(prefix_bench, PREFIX, repeats)
    spec_bench = Bench(edit, n_edit or edit.spec.benchmark.num_requests, work)
    compare_pair(spec_bench, SPEC, repeats)

    best, seed = throughput.median("best combination"), throughput.median("seed")
    results = {
        "best_vs_seed": best / seed,
        "best_vs_transformers_batched": best / hf_best,
        "prefix_ttft_cut": prefix_bench.median("prefix caching off") / prefix_bench.median("prefix caching on"),
        "speculation_e2el_cut": spec_bench.median("speculation off") / spec_bench.median("prompt-lookup speculation"),
    }
    exact = {}
    if not args.skip_check:
        say("exactness: checker and benchmark responses against the reference")
        exact = {"best combination": throughput.exactness("best combination"), "prefix caching on": prefix_bench.exactness("prefix caching on"),
                 "prompt-lookup speculation": spec_bench.exactness("prompt-lookup speculation")}
    checks = {k: {"value": round(v, 3), "want_at_least": WANT[k], "passed": v >= WANT[k]} for k, v in results.items()}
    print(json.dumps({
        "benchmark": "engine_components",
        "quick": args.quick,
        "repeats": repeats,
        "cpus": os.cpu_count(),
        "load_average": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "throughput": {
            "target": cpu.name, "num_requests": throughput.num_requests, "concurrency": cpu.spec.benchmark.concurrency,
            "configs": summary(throughput, list(ALONE), "seed"),
            "transformers_batched": {"output_throughput": round(hf_best, 2),
                                     "runs_by_threads": {str(t): [round(x, 2) for x in v] for t, v in hf.items()},
                                     "note": "batches of `concurrency` requests, left-padded, each run to its longest output; "
                                             "only requested tokens count; the better thread count is the baseline"},
        },
        "prefix": {"target": prefix.name, "num_requests": prefix_bench.num_requests,
                   "configs": summary(prefix_bench, list(PREFIX), "prefix caching off")},
        "speculation": {"target": edit.name, "num_requests": spec_bench.num_requests,
                        "configs": summary(spec_bench, list(SPEC), "speculation off")},
        "targets": checks,
        "exactness": exact,
        "passed": all(c["passed"] for c in checks.values()) and all(e["passed"] for e in exact.values()),
    }, indent=2))


if __name__ == "__main__":
    main()
