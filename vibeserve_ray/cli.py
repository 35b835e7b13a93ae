"""`vibeserve`: the command line. Exit codes: 0 success, 1 negative verdict, 2 bad input."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from vibeserve_ray.errors import BadInput


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _candidate_session(args: argparse.Namespace):
    """The target, the candidate and a work directory (removed after, unless --workdir)."""
    from vibeserve_ray.candidate import resolve_candidate
    from vibeserve_ray.target import load_target

    target = load_target(args.target)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vibeserve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield target, resolve_candidate(args.candidate, workdir), workdir
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from vibeserve_ray.tinymodel import make_tiny

    print(make_tiny(args.seed, Path(args.dir) if args.dir else None))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from vibeserve_ray.judge.checker import check_candidate

    with _candidate_session(args) as (target, spec, workdir):
        verdict = check_candidate(target, spec, workdir / "check", swap=args.swap, say=say)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(target.tokenizer_dir()))
        print(verdict.summary(decode=lambda ids: tok.decode(ids)))
        if args.json:
            Path(args.json).write_text(json.dumps(verdict.to_dict(), indent=2))
        return 0 if verdict.passed else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from vibeserve_ray.bench import format_table
    from vibeserve_ray.measure import bench_candidate

    with _candidate_session(args) as (target, spec, workdir):
        result = bench_candidate(target, spec, workdir / "bench", num_requests=args.num_requests, say=say)
        if not hasattr(result, "metrics"):
            print(result.describe())
            if args.out:
                Path(args.out).write_text(json.dumps({"failure": result.to_dict()}, indent=2))
            return 1
        print(format_table(result))
        out = result.to_json() | {"target": target.name, "candidate": str(spec.path), "design": spec.design, "knobs": spec.knobs}
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2))
            say(f"bench: wrote {args.out}")
        return 0 if result.slo_passed and result.metrics.failed == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vibeserve", description="Search for, validate and deploy a bespoke LLM serving system.")
    sub = p.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="generated models").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("make-tiny", help="generate the tiny Llama checkpoint (printed: its directory)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--dir", help="write here instead of the cache")
    tiny.set_defaults(func=cmd_make_tiny)

    def candidate_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("target", help="target directory (holding target.toml)")
        sp.add_argument("--candidate", default="seed", help="candidate directory, or 'seed' for the seed engine")
        sp.add_argument("--workdir", help="keep the run's files (server log, materialised seed) here")

    check = sub.add_parser("check", help="gate a candidate on correctness against the reference")
    candidate_args(check)
    check.add_argument("--json", help="write the verdict as JSON here")
    check.add_argument("--swap", action="store_true", help="check on the second (weight-swap) checkpoint")
    check.set_defaults(func=cmd_check)

    bench = sub.add_parser("bench", help="benchmark a candidate on the target's workload")
    candidate_args(bench)
    bench.add_argument("--out", help="write the metrics as JSON here")
    bench.add_argument("--num-requests", type=int, help="override the target's request count")
    bench.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
