"""Entry point of a candidate's sandboxed server process (started by `runner`).

Imports the candidate, builds its engine, and serves the shared front on a port it
picks itself (bound before writing it to --port-file, so there is no port race).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys


def main() -> None:
    parser = argparse.ArgumentParser(prog="vibeserve_ray.serve.worker")
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--served-name", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from vibeserve_ray.candidate import import_entrypoint, load_candidate
    from vibeserve_ray.serve.app import build_app
    from vibeserve_ray.serve.front import OpenAIFront

    spec = load_candidate(args.candidate)
    create_engine = import_entrypoint(spec)
    engine = create_engine(args.model, args.device, dict(spec.knobs))
    app = build_app(OpenAIFront(engine, args.tokenizer, args.served_name))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, 0))
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(sock.getsockname()[1]))
    os.replace(tmp, args.port_file)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await engine.close()


if __name__ == "__main__":
    sys.exit(main())
