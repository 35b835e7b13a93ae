"""A candidate's engine process behind the front on 127.0.0.1, as the evaluator runs it:
the server that `fuzz.py` and `soak.py` put under stress when they are given no URL."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vibeserve_ray.candidate import load_candidate  # noqa: E402
from vibeserve_ray.design_space import default_space_path, load_space, materialise, parse_assignments  # noqa: E402
from vibeserve_ray.runner import CandidateProcess, Limits, start_candidate  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

TARGET = Path(__file__).resolve().parent.parent / "targets" / "tiny-llama-cpu"
# Every engine component at once (batching, paged KV, prefix cache, speculation), so
# what a stress program sends reaches the most engine code.
EVERYTHING = ["scheduler=continuous", "kv_cache=paged", "prefix_cache=on", "speculation=prompt_lookup"]


def add_arguments(parser) -> None:
    parser.add_argument("--candidate", default="seed", help="a candidate directory, or 'seed' (default) at --design")
    parser.add_argument("--design", nargs="+", default=EVERYTHING, metavar="CHOICE=OPTION",
                        help=f"the seed's design (default: {' '.join(EVERYTHING)})")


@contextlib.contextmanager
def engine_process(candidate: str, design: list[str], workdir: Path) -> Iterator[CandidateProcess]:
    """The candidate (or the seed at `design`) on the laptop target's model, under the
    target's limits; stopped on exit."""
    target = load_target(TARGET)
    if candidate == "seed":
        candidate = materialise(load_space(default_space_path()), workdir / "seed", parse_assignments(design, "command line", "design"), {})
    limits = replace(Limits(**target.spec.limits.model_dump()), cpu_time_s=None)  # a soak may run for hours, as a server does
    with start_candidate(load_candidate(candidate), target.model_dir(), target.tokenizer_dir(), target.name, "cpu", limits,
                         workdir / "engine") as proc:
        yield proc
