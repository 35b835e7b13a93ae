"""Writes targets/tiny-llama-code-edit/dataset.jsonl: code-edit requests whose predictions
are the REFERENCE's greedy answers with a stated fraction of tokens edited
(vibeserve_ray/bench/code_edit.py says how). Run once; the file is committed.

    python scripts/make_code_edit_dataset.py [--rows 32] [--seed 0] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibeserve_ray.bench.code_edit import EDIT_FRACTION, EDIT_SPANS, make_rows, write_dataset  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

TARGET = ROOT / "targets" / "tiny-llama-code-edit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(TARGET / "dataset.jsonl"))
    args = ap.parse_args()
    # The target names this script's output as its dataset, so it cannot be loaded (and
    # validated) before the file exists: read its model and reference from the toml.
    import tomllib

    spec = tomllib.loads((TARGET / "target.toml").read_text())
    from vibeserve_ray.tinymodel import make_tiny

    model_dir = make_tiny(spec["model"]["seed"])
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    say(f"code-edit: {args.rows} rows, seed {args.seed}, reference {spec['reference']['kind']}, "
        f"{EDIT_FRACTION:.0%} of each prediction edited in {EDIT_SPANS} spans")
    t0 = time.perf_counter()
    rows = make_rows(model_dir, model_dir, args.seed, list(range(args.rows)), spec["reference"]["kind"], spec["reference"]["dtype"], say)
    write_dataset(args.out, rows)
    load_target(TARGET)  # the target now validates with its dataset
    say(f"code-edit: wrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
