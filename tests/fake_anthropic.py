"""A scripted stand-in for the Anthropic Messages API: a real HTTP server on 127.0.0.1.

It speaks the protocol the real `anthropic` client speaks (POST /v1/messages, tool_use
and tool_result blocks, usage with the cache fields, streaming off), checks the key,
and answers from a script per role: the role is read from the system prompt's title
line ("# The Implementer"), the turn from how many assistant messages the request
carries, so parallel sessions of one role each follow the script. Faults (429 with
retry-after, 529, ...) are served first, in order; the key can be revoked after a number
of requests. The free token-counting endpoint only checks the key. Everything received is kept, so
tests can assert on cache_control, headers and tool results.

Cache accounting follows the API's rules closely enough to test against: a breakpoint's
prefix seen before is read from the cache, a new one is written; ~4 characters a token.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Script = list[Any]  # per turn: a list of content blocks, or a callable(request) -> list of content blocks
_ids = itertools.count(1)


def tool_use(name: str, **tool_input: Any) -> dict:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):06d}", "name": name, "input": tool_input}


def text(s: str) -> dict:
    return {"type": "text", "text": s}


@dataclass(frozen=True)
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = ""

    def body(self) -> dict:
        kinds = {401: "authentication_error", 429: "rate_limit_error", 529: "overloaded_error", 500: "api_error", 400: "invalid_request_error"}
        return {"type": "error", "error": {"type": self.kind or kinds.get(self.status, "api_error"), "message": f"fake {self.status}"}}


@dataclass
class Received:
    role: str
    turn: int
    headers: dict[str, str]
    body: dict
    status: int


def role_of(body: dict) -> str:
    system = body.get("system")
    text_ = system if isinstance(system, str) else " ".join(b.get("text", "") for b in system or [])
    m = re.search(r"^#\s*The\s+([A-Za-z]+)", text_, re.M)
    return m.group(1).lower() if m else "unknown"


def _tokens(obj: Any) -> int:
    return len(json.dumps(obj, sort_keys=True)) // 4


def _strip_cache(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_cache(v) for k, v in obj.items() if k != "cache_control"}
    if isinstance(obj, list):
        return [_strip_cache(v) for v in obj]
    return obj


def _prefixes(body: dict) -> list[list]:
    """The request as blocks in cache order (tools, system, messages), cut at each breakpoint."""
    blocks: list = list(body.get("tools") or [])
    system = body.get("system")
    blocks += [{"type": "text", "text": system}] if isinstance(system, str) else list(system or [])
    for m in body.get("messages", []):
        content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        blocks += [{"role": m["role"], **b} for b in content]
    cuts = [i + 1 for i, b in enumerate(blocks) if isinstance(b, dict) and "cache_control" in b]
    return [_strip_cache(blocks[:c]) for c in cuts] + [_strip_cache(blocks)]


class FakeAnthropic:
    def __init__(self, scripts: dict[str, Script], key: str = "sk-ant-test-0123456789abcdef", faults: list[Fault] | None = None,
                 role_of: Callable[[dict], str] = role_of, revoke_after: int | None = None):
        """`revoke_after`: the key is refused (401) from that many Messages requests on."""
        self.scripts, self.key, self.faults, self.role_of, self.revoke_after = scripts, key, list(faults or []), role_of, revoke_after
        self.received: list[Received] = []
        self._cache: set[str] = set()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                status, headers, payload = fake._answer(self.path, dict(self.headers), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"content-type": "application/json", "content-length": str(len(data)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeAnthropic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def key_sent(headers: dict) -> str:
        """The key a request carried (the client sends it as a bearer token; the API also takes x-api-key)."""
        h = {k.lower(): v for k, v in headers.items()}
        return h.get("x-api-key") or h.get("authorization", "").removeprefix("Bearer ")

    def by_role(self, role: str, status: int = 200) -> list[Received]:
        return [r for r in self.received if r.role == role and r.status == status]

    def _answer(self, path: str, headers: dict, body: dict) -> tuple[int, dict, dict]:
        role = self.role_of(body)
        turn = sum(m.get("role") == "assistant" for m in body.get("messages", []))
        path = path.split("?")[0]
        if path == "/v1/messages/count_tokens":  # free, and not scripted: the key is all it checks
            ok = self.key_sent(headers) == self.key
            return (200, {}, {"input_tokens": _tokens(body)}) if ok else (401, {}, Fault(401).body())
        with self._lock:
            fault = self.faults.pop(0) if self.faults else None
            revoked = self.revoke_after is not None and len(self.received) >= self.revoke_after
            status = 404 if path != "/v1/messages" else 401 if revoked or self.key_sent(headers) != self.key else fault.status if fault else 200
            self.received.append(Received(role, turn, headers, body, status))
            if status != 200:
                f = fault if fault and fault.status == status else Fault(status)
                return status, f.headers, f.body()
            content = self._content(role, turn, body)
            usage = self._usage(body, content)
        has_tool = any(b["type"] == "tool_use" for b in content)
        return 200, {}, {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant", "model": body.get("model"),
                         "content": content, "stop_reason": "tool_use" if has_tool else "end_turn", "stop_sequence": None, "usage": usage}

    def _content(self, role: str, turn: int, body: dict) -> list[dict]:
        script = self.scripts.get(role, [])
        if turn >= len(script):
            return [text(f"(the fake's script for {role} has no turn {turn})")]
        step = script[turn]
        blocks = step(body) if callable(step) else step
        # fresh ids each time: parallel sessions of one role share the script
        return [{**b, "id": f"toolu_{next(_ids):06d}"} if b.get("type") == "tool_use" else b for b in blocks]

    def _usage(self, body: dict, content: list) -> dict:
        prefixes = _prefixes(body)
        total = _tokens(prefixes[-1])
        read = write = 0
        for p in prefixes[:-1]:
            h = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()
            n = _tokens(p)
            if h in self._cache:
                read = max(read, n)
            else:
                self._cache.add(h)
                write = max(write, n)
        write = max(0, write - read)
        return {"input_tokens": max(1, total - read - write), "output_tokens": max(1, _tokens(content)),
                "cache_creation_input_tokens": write, "cache_read_input_tokens": read}

    def tool_results(self, role: str) -> list[dict]:
        """Every tool_result block the role's sessions sent back, in order received."""
        out = []
        for r in self.by_role(role):
            last = r.body["messages"][-1]
            if last["role"] == "user" and isinstance(last["content"], list):
                out += [b for b in last["content"] if b.get("type") == "tool_result"]
        return out
