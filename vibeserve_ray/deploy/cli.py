"""`vibeserve deploy`: its flags, and the command (choose, write the config or run it).

Exit codes as the rest of the CLI: 0 ok, 1 the application is unhealthy, 2 bad input
(raised as BadInput; the main CLI, `vibeserve_ray.cli`, prints it as one line).
"""

from __future__ import annotations

import argparse
import os

from vibeserve_ray import progress
from vibeserve_ray.errors import BadInput


def say(line: str) -> None:
    progress.event(line)


def cmd_deploy(args: argparse.Namespace) -> int:
    # Ray Serve loads when the command runs, not whenever the main CLI builds its parser.
    from vibeserve_ray.deploy import choice, config, launch

    opts = config.ServeOptions(
        host=args.host, port=args.port, api_key_env=args.api_key_env,
        max_ongoing_requests=args.max_ongoing_requests, max_queued_requests=args.max_queued_requests,
        min_replicas=args.min_replicas, max_replicas=args.max_replicas, stream_interval_ms=args.stream_interval_ms,
    )
    opts.validate()
    chosen = choice.choose(args.run, args.commit, args.candidate, args.target)
    knobs = [x for group in args.knobs for x in group]
    if knobs:
        chosen = choice.with_knobs(chosen, knobs)
    serve_config = config.serve_config(chosen, opts)
    if args.config_only:
        written = config.write_config(serve_config, args.config_only)
        say(f"deploy: wrote {written} ({chosen.label}); run it with `serve deploy {args.config_only}`")
        return 0
    # Checked here, not in the replica, where a missing key could only fail the deployment.
    if opts.api_key_env and not os.environ.get("RAY_ADDRESS") and not os.environ.get(opts.api_key_env):
        raise BadInput("environment", opts.api_key_env,
                       "not set (named by --api-key-env; with RAY_ADDRESS the cluster's environment holds it)")
    say(f"deploy: {chosen.label} on target {chosen.target.name}")
    return launch.run(serve_config, detach=args.detach, say=say)


def add_deploy_parser(subparsers) -> None:
    """Registers `deploy` on the main CLI's subparsers."""
    p = subparsers.add_parser("deploy", help="serve a candidate (default: a run's best) as a Ray Serve application with an OpenAI API")
    p.add_argument("run", nargs="?", help="search run directory: deploys its best validated candidate")
    p.add_argument("--commit", metavar="SHA", help="deploy this candidate of the run instead of the best")
    p.add_argument("--candidate", metavar="PATH", help="deploy this candidate directory ('seed' for the seed engine); needs --target")
    p.add_argument("--target", metavar="PATH", help="target directory (default: the run's target)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; 0.0.0.0 to listen on all interfaces)")
    p.add_argument("--api-key-env", metavar="NAME", help="require `Authorization: Bearer $NAME`; only the name is written anywhere")
    p.add_argument("--knobs", nargs="+", action="append", default=[], metavar="KNOB=VALUE",
                   help="override the candidate's knobs for serving (sent as user_config; changeable without a restart)")
    p.add_argument("--config-only", metavar="FILE", help="write the Serve config for `serve deploy` and exit")
    p.add_argument("--detach", action="store_true", help="return once healthy and leave the application running")
    p.add_argument("--max-ongoing-requests", type=int, help="requests a replica works on at once (default: the benchmark's concurrency)")
    p.add_argument("--max-queued-requests", type=int, help="requests waiting beyond those; more get 503 (default: twice the above)")
    p.add_argument("--min-replicas", type=int, help="autoscale from this many replicas")
    p.add_argument("--max-replicas", type=int, help="autoscale up to this many replicas")
    p.add_argument("--stream-interval-ms", type=float,
                   help="relay streamed tokens in batches at most this often (default 50; 0 sends each at once)")
    progress.add_quiet_flag(p)
    p.set_defaults(func=cmd_deploy)
