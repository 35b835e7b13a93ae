"""Fuzzes the OpenAI-compatible API with schemathesis, from the server's own /openapi.json.

With no --url it starts the seed engine (every component on, see loopback.py) behind the
front on the laptop model; with --url it fuzzes any running server of ours, e.g. a
deployed app (`--api-key-env NAME` sends the key). For the run only, the schema names
the served model (otherwise nearly every request stops at a 404 before reaching the
engine) and a hook (fuzz_hooks.py) caps each request's token budget at --max-tokens, so
each request is cheap. Schemathesis sends boundary values, wrong types, missing and unknown fields and random
valid requests, and checks every response: no 5xx, status codes, content types and
bodies as the schema documents them, invalid input refused with a 4xx.

Prints JSON: requests sent, responses by status, server errors (>= 500), requests that
hung past --request-timeout or failed at the network level, seconds, and whether every
check passed (schemathesis' report, with a curl line for each failure, is on stderr).
Exit 0 when all is well, 1 if not.

    python benchmarks/fuzz.py [--url URL [--api-key-env NAME]] [--max-examples N] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from loopback import add_arguments, engine_process

CHECKS = "all"
# positive_data_acceptance expects every schema-valid request to succeed, but some are
# refused for reasons a schema cannot state (a token id past the vocabulary, a prompt
# longer than the context, an engine without a feature): each a 4xx, never a 5xx.
EXCLUDED = "positive_data_acceptance"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def naming(schema: dict, model: str) -> dict:
    """The schema with `model` fixed to the served name (any other is a 404)."""
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        schema["components"]["schemas"][name]["properties"]["model"] = {"type": "string", "enum": [model]}
    return schema


def fuzz(url: str, headers: dict[str, str], args: argparse.Namespace, workdir: Path) -> dict:
    request = urllib.request.Request(url + "/openapi.json", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as r:
        schema = json.loads(r.read())
    with urllib.request.urlopen(urllib.request.Request(url + "/v1/models", headers=headers), timeout=30) as r:
        model = json.loads(r.read())["data"][0]["id"]
    schema_file, reports = workdir / "openapi.json", workdir / "reports"
    schema_file.write_text(json.dumps(naming(schema, model)))
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", str(schema_file), "--url", url, "--checks", CHECKS, "--exclude-checks", EXCLUDED, "--max-examples", str(args.max_examples),
           "--phases", args.phases, "--request-timeout", str(args.request_timeout), "--workers", str(args.workers), "--seed", str(args.seed),
           "--report", "har,ndjson", "--report-dir", str(reports), "--no-color", "--suppress-health-check", "all"]
    for name, value in headers.items():
        cmd += ["--header", f"{name}: {value}"]
    say(f"fuzz: schemathesis against {url} ({model}), at most {args.max_examples} cases per operation ...")
    start = time.perf_counter()
    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "VIBESERVE_FUZZ_MAX_TOKENS": str(args.max_tokens),
           "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=args.time_limit, env=env, cwd=workdir)
    seconds = time.perf_counter() - start
    entries = json.loads(next(reports.glob("har-*.json")).read_text())["log"]["entries"]
    events = [json.loads(line) for line in next(reports.glob("ndjson-*.ndjson")).read_text().splitlines()]
    errors = [e["NonFatalError"]["value"]["message"] for e in events if "NonFatalError" in e]  # timeouts, refused connections
    statuses = collections.Counter(e["response"]["status"] for e in entries)
    passed = run.returncode == 0
    say(run.stdout[-8000:] + run.stderr[-2000:])  # schemathesis' own report
    return {
        "url": url, "model": model, "requests": len(entries), "by_status": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500), "network_errors": len(errors), "errors": errors[:5],
        "seconds": round(seconds, 1), "requests_per_s": round(len(entries) / seconds, 1), "schemathesis_passed": passed,
        "max_examples": args.max_examples, "max_tokens": args.max_tokens, "seed": args.seed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="fuzz this running server instead of starting one")
    parser.add_argument("--api-key-env", metavar="NAME", help="send `Authorization: Bearer $NAME`")
    add_arguments(parser)
    parser.add_argument("--max-examples", type=int, default=150, help="generated cases per operation and phase")
    parser.add_argument("--max-tokens", type=int, default=4, help="the largest max_tokens a fuzzed request asks for")
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds after which a request counts as hung")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="schemathesis' seed (the same seed sends the same requests)")
    parser.add_argument("--time-limit", type=float, default=900.0, help="the whole run's limit in seconds")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {os.environ[args.api_key_env]}"} if args.api_key_env else {}
    with tempfile.TemporaryDirectory(prefix="vibeserve-fuzz-") as tmp:
        workdir = Path(tmp)
        if args.url:
            result = fuzz(args.url.rstrip("/"), headers, args, workdir)
        else:
            with engine_process(args.candidate, args.design, workdir) as proc:
                result = fuzz(proc.base_url, headers, args, workdir)
                result["engine_alive"] = proc.failure() is None
    print(json.dumps(result, indent=2))
    ok = result["schemathesis_passed"] and not result["server_errors"] and not result["network_errors"] and result.get("engine_alive", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
