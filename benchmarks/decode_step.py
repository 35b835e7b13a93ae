"""One batched decode step of the engine in process, per design: where the bfloat16 step's
time goes once the HTTP front, the scheduler and the load are taken away.

For each design (a point of the Llama family's space, with the knobs below), an engine is
built on the model (`LLMEngine(step_thread=False)`), `--batch` sequences of 60.. prompt
tokens are prefilled, and `--steps` decode steps of the whole batch are timed one by one
(greedy; each step's token is fed to the next). Designs alternate over `--rounds` rounds;
the figure is the median step over every round's steps, with the fastest round's median
beside it (the machine is shared). `--profile` adds torch.profiler's top ops of 10 more
steps per design (the decode kernel's ctypes call shows as the time no op holds).

    python benchmarks/decode_step.py [--model DIR] [--batch 16] [--steps 60] [--rounds 2] [--threads 1] [--profile]
                                     [--design NAME=choice:option,choice:option ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibeserve_ray.candidate import GenerationRequest  # noqa: E402
from vibeserve_ray.engine.core.llm_engine import LLMEngine  # noqa: E402
from vibeserve_ray.engine.core.sequence import Chunk, Sequence  # noqa: E402
from vibeserve_ray.generators import make_checkpoint  # noqa: E402

BASE = {"scheduler": "continuous", "kv_cache": "slab", "dtype": "bfloat16", "step_loop": "thread"}
DESIGNS = {
    "sdpa + oneDNN": {**BASE, "linear": "onednn"},
    "decode kernel + oneDNN": {**BASE, "linear": "onednn", "attention": "decode_kernel"},
    "decode kernel + compiled graph": {**BASE, "linear": "torch", "attention": "decode_kernel", "compile": "graph"},
}


def build(model: str, design: dict, batch: int, threads: int) -> tuple[LLMEngine, list[Sequence]]:
    knobs = {"design": design, "num_threads": threads, "max_num_seqs": batch, "max_model_len": 1024}
    engine = LLMEngine(model, knobs=knobs, step_thread=False)
    seqs = []
    for i in range(batch):
        seq = Sequence(GenerationRequest(prompt_token_ids=list(range(5, 65 + 4 * i)), max_tokens=1000), 0)
        engine.scheduler.cache.allocate(seq, 0)
        engine.runner.run([Chunk(seq, 0, list(seq.token_ids))])
        seq.num_cached = len(seq.token_ids)
        seq.append(7)
        seqs.append(seq)
    return engine, seqs


def step(engine: LLMEngine, seqs: list[Sequence]) -> None:
    _, outs = engine.runner.run([Chunk(s, s.num_cached, [s.token_ids[-1]]) for s in seqs])
    for seq, out in zip(seqs, outs):
        seq.num_cached += 1
        seq.append(out[0].token_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF checkpoint directory (default: the tiny Llama, generated)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--design", action="append", default=[], help="NAME=choice:option,... (default: the three above)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or str(make_checkpoint("tiny-llama", 0))
    designs = {n: {**BASE, **dict(kv.split(":") for kv in spec.split(","))} for n, _, spec in (d.partition("=") for d in args.design)} or DESIGNS
    times: dict[str, list[list[float]]] = {name: [] for name in designs}
    profiles: dict[str, list] = {}
    for r in range(args.rounds):
        for name, design in designs.items():
            print(f"round {r + 1}: {name}", file=sys.stderr)
            engine, seqs = build(model, design, args.batch, args.threads)
            for _ in range(5):  # warm-up (a compiled graph compiles here)
                step(engine, seqs)
            ts = []
            with torch.inference_mode():
                for _ in range(args.steps):
                    t = time.perf_counter()
                    step(engine, seqs)
                    ts.append(time.perf_counter() - t)
            times[name].append(ts)
            if args.profile and r == 0:
                with torch.profiler.profile() as prof:
                    for _ in range(10):
                        step(engine, seqs)
                profiles[name] = [{"op": e.key, "ms_per_step": round(e.self_cpu_time_total / 10 / 1000, 3)}
                                  for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]]
    result = {"benchmark": "decode_step", "model": model, "batch": args.batch, "threads": args.threads, "steps": args.steps,
              "rounds": args.rounds, "load_average": os.getloadavg(), "designs": designs,
              "median_step_ms": {n: round(statistics.median(t for ts in v for t in ts) * 1e3, 2) for n, v in times.items()},
              "best_round_median_ms": {n: round(min(statistics.median(ts) for ts in v) * 1e3, 2) for n, v in times.items()}}
    first = next(iter(designs))
    result["speedup_vs_first"] = {n: round(result["median_step_ms"][first] / m, 2) for n, m in result["median_step_ms"].items()}
    if profiles:
        result["profiles"] = profiles
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
