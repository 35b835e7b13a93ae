"""Writes targets/tiny-llama-json/dataset.jsonl (benchmark requests, each with its own JSON
schema) and checker/prompts.jsonl (held-out prompts with theirs), from seeds alone
(vibeserve_ray/bench/json_mode.py says how). Run once; the files are committed.

    python scripts/make_json_dataset.py [--rows 64] [--seed 0] [--checker-rows 16]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibeserve_ray.bench.json_mode import json_request, make_rows, write_dataset  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402
from vibeserve_ray.tinymodel import make_tiny  # noqa: E402

TARGET = ROOT / "targets" / "tiny-llama-json"
CHECKER_SEED = 1_000  # held-out prompts: another seed than any benchmark row's


def checker_prompts(num_rows: int) -> list[dict]:
    """Held-out prompts: schema requests like the benchmark's but smaller (most answers end
    within the checker's max_tokens, so both ways of ending are checked), and one plain
    JSON-mode request."""
    rows = []
    for i in range(num_rows - 1):
        prompt, fmt = json_request(random.Random(f"json-mode/{CHECKER_SEED}/{i}"), max_fields=3)
        rows.append({"prompt": prompt, "response_format": fmt})
    rows.append({"prompt": "Describe the weather today as a JSON object.", "response_format": {"type": "json_object"}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checker-rows", type=int, default=16)
    args = ap.parse_args()
    # The target names these files, so it cannot be loaded before they exist: the model
    # (whose directory holds the tokenizer) is read from the toml.
    import tomllib

    spec = tomllib.loads((TARGET / "target.toml").read_text())
    model_dir = make_tiny(spec["model"]["seed"])
    write_dataset(TARGET / "dataset.jsonl", make_rows(model_dir, args.seed, args.rows))
    lines = [json.dumps(row) + "\n" for row in checker_prompts(args.checker_rows)]
    (TARGET / "checker" / "prompts.jsonl").write_text("".join(lines))
    load_target(TARGET)  # the target now validates with its files
    print(f"json-mode: wrote {args.rows} requests and {args.checker_rows} checker prompts to {TARGET}", file=sys.stderr)


if __name__ == "__main__":
    main()
