"""Seed engine vs transformers: greedy throughput on the same prompts, in one run.

Both run in this process on the same weights and prompts (the tiny target's model and
a seeded slice of its benchmark workload). transformers runs `generate` one prompt at a
time (what the seed does) and, for reference, all prompts in one left-padded batch.
Prints JSON: medians over repeats, and the seed's ratio to each.

    python benchmarks/engine_vs_transformers.py [--prompts 16] [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from vibeserve_ray.candidate import GenerationRequest  # noqa: E402
from vibeserve_ray.engine import create_engine  # noqa: E402
from vibeserve_ray.inner.workload import target_workload  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

TARGET = Path(__file__).resolve().parent.parent / "targets" / "tiny-llama-cpu"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def engine_run(engine, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    async def one(p: list[int]) -> list[int]:
        return [t.token_id async for t in engine.generate(GenerationRequest(p, new_tokens))]

    return await asyncio.gather(*(one(p) for p in prompts))


def hf_batch1(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    outs = []
    for p in prompts:
        seq = model.generate(torch.tensor([p]), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        outs.append(seq[0, len(p):].tolist())
    return outs


def hf_batched(model, prompts: list[list[int]], new_tokens: int, pad: int) -> list[list[int]]:
    """All prompts in one left-padded greedy `generate`; each one's new tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=pad)
    return out[:, width:].tolist()


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    target = load_target(TARGET)
    model_dir = target.model_dir()
    prompts = [r.prompt_token_ids for r in target_workload(target, args.prompts)]
    total = args.prompts * args.new_tokens
    say(f"bench: {args.prompts} prompts x {args.new_tokens} new tokens, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    engine = create_engine(str(model_dir), "cpu", {})
    loop = asyncio.new_event_loop()
    pad = json.loads((model_dir / "config.json").read_text())["pad_token_id"]
    with torch.inference_mode():
        loop.run_until_complete(engine_run(engine, prompts[:2], 4))  # warm-up, not timed
        hf_batch1(hf, prompts[:2], 4)
        times: dict[str, list[float]] = {"seed_engine": [], "transformers_batch1": [], "transformers_batched": []}
        agree = 0
        for rep in range(args.repeats):
            t, eng_out = timed(lambda: loop.run_until_complete(engine_run(engine, prompts, args.new_tokens)))
            times["seed_engine"].append(t)
            t, hf_out = timed(lambda: hf_batch1(hf, prompts, args.new_tokens))
            times["transformers_batch1"].append(t)
            t, _ = timed(lambda: hf_batched(hf, prompts, args.new_tokens, pad))
            times["transformers_batched"].append(t)
            agree = sum(a == b for a, b in zip(eng_out, hf_out))
            say(f"bench: repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{k} {total / v[-1]:.0f} tok/s" for k, v in times.items()))
    loop.run_until_complete(engine.close())
    tps = {k: total / statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "engine_vs_transformers",
        "model": str(model_dir),
        "prompts": args.prompts,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "greedy_output_tok_per_s_median": {k: round(v, 1) for k, v in tps.items()},
        "ratio_seed_vs_transformers_batch1": round(tps["seed_engine"] / tps["transformers_batch1"], 3),
        "ratio_seed_vs_transformers_batched": round(tps["seed_engine"] / tps["transformers_batched"], 3),
        "greedy_sequences_identical": f"{agree}/{args.prompts}",
    }, indent=2))


if __name__ == "__main__":
    main()
