"""The static scan: what a candidate's code may not do, read from its syntax tree.

A candidate could pass the checker by cheating: calling out over the network, spawning
processes, reaching C through ctypes, importing the reference or the harness, hiding
an import behind a computed name, reading paths outside its tree and the model (the
checker's prompts, cached reference answers, another process's files), or reading an
environment variable outside the sandbox's allow-list (`sandbox.env`: a credential the
host might hold). The sandbox blocks most of these at run time; the scan names them
before anything runs, each with file:line, so a rejected candidate says what it tried.
Python is parsed (ast), so a string or a comment mentioning a module is not an import;
the few C/CUDA sources a candidate may carry have no parser here and get a short list
of patterns.

Findings on lines the parent (or the seed engine) already had in that file are dropped:
the seed's own code is never flagged (its engine-worker processes talk over a socket
pair), an agent's new code always is. A false alarm is a rejected candidate with
its reason recorded, not a lost one.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from vibeserve_ray.sandbox.env import may_see
from vibeserve_ray.seed import SEED_ENGINE_DIR

ALLOWED_SUFFIXES = {".py", ".toml", ".md", ".txt", ".json", ".cfg", ".cu", ".cuh", ".cpp", ".h", ".c"}
MAX_FILE_BYTES = 2 * 1024 * 1024

NETWORK = {"socket", "ssl", "urllib", "urllib3", "http", "requests", "httpx", "aiohttp", "ftplib", "smtplib", "websockets", "grpc", "zmq",
           "paramiko", "telnetlib", "xmlrpc"}
PROCESSES = {"subprocess", "pty", "multiprocessing.connection"}
NATIVE = {"ctypes", "cffi", "_ctypes"}
REFERENCE = {"transformers", "vllm", "sglang", "vibeserve_ray"}  # vibeserve_ray.candidate (the contract) excepted
SERIALIZED = {"pickle", "marshal", "shelve", "dill", "joblib"}
CONTRACT = "vibeserve_ray.candidate"
NETWORK_CALLS = {"open_connection", "create_connection", "start_server", "create_server", "sock_connect", "urlopen", "create_unix_connection"}
SPAWN_CALLS = {"system", "popen", "spawnl", "spawnle", "spawnlp", "spawnv", "spawnve", "spawnvp", "execv", "execve", "execl", "execle",
               "execlp", "execvp", "execvpe", "posix_spawn", "posix_spawnp", "startfile"}
DYNAMIC_IMPORTS = {"import_module", "__import__", "spec_from_file_location", "load_module", "find_spec"}
ENV_REASON = "reading an environment variable outside what candidate code may see"
DATA_HINTS = re.compile(r"targets/|checker|prompts\.jsonl|\.jsonl\b|/reference/|\.cache/vibeserve|VIBESERVE_CACHE|dataset", re.IGNORECASE)
ABSOLUTE_PATH = re.compile(r"^(/(tmp|root|home|etc|proc|sys|var|run|dev/shm|mnt|opt|srv|work|data)(/|$)|~)")
WRITE_CALLS = {"write_text", "write_bytes", "save", "save_file", "save_pretrained", "copy", "copyfile", "copytree", "move", "rename",
               "replace", "unlink", "rmtree", "remove", "touch", "mkdir", "makedirs", "symlink_to", "hardlink_to"}
MODEL_NAMES = {"model_dir", "model_path", "checkpoint_dir", "weights_dir"}
NATIVE_PATTERNS = ((r"\b(socket|connect|getaddrinfo)\s*\(", "network access"), (r"\b(system|popen|execv\w*|fork)\s*\(", "spawning processes"),
                   (r"\bfopen\s*\(\s*\"/", "reading paths outside the candidate and the model"))


@dataclass(frozen=True)
class ScanFinding:
    path: str
    line: int
    text: str
    reason: str

    def describe(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.text.strip()[:120]}"


def _module_reason(name: str) -> str:
    top = name.split(".")[0]
    if name == CONTRACT or name.startswith(CONTRACT + "."):
        return ""
    if top in NETWORK:
        return "network access"
    if top in PROCESSES or name in PROCESSES:
        return "spawning processes"
    if top in NATIVE:
        return "native code through ctypes"
    if top in REFERENCE:
        return "importing the reference or the harness"
    if top in SERIALIZED:
        return "loading serialized answers"
    return ""


class _Visitor(ast.NodeVisitor):
    """Collects (line, reason) for one Python file at `depth` directories below the candidate root."""

    def __init__(self, depth: int):
        self.depth, self.found = depth, []
        self.model_names = set(MODEL_NAMES)

    def flag(self, node: ast.AST, reason: str) -> None:
        self.found.append((node.lineno, reason))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if reason := _module_reason(alias.name):
                self.flag(node, reason)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module or node.module == CONTRACT:
            return  # relative imports stay in the tree; the contract is allowed
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        if reason := next((r for r in map(_module_reason, names) if r), ""):
            self.flag(node, reason)
        elif node.module == "os" and any(a.name in SPAWN_CALLS for a in node.names):
            self.flag(node, "spawning processes")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name == "create_engine" and node.args.args:
            self.model_names.add(node.args.args[0].arg)  # the contract's model_dir, whatever it is called
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Assign(self, node: ast.Assign) -> None:
        if self._mentions_model(node.value):  # a name (or self.attribute) derived from the model directory is one too
            for t in node.targets:
                if isinstance(t, (ast.Name, ast.Attribute)):
                    self.model_names.add(t.id if isinstance(t, ast.Name) else t.attr)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if not isinstance(value, str) or any(c.isspace() for c in value):
            return  # prose (docstrings, messages) is not a path
        if DATA_HINTS.search(value):
            self.flag(node, "reading benchmark or checker data")
        elif ABSOLUTE_PATH.match(value):
            self.flag(node, "reading paths outside the candidate and the model")

    def visit_Subscript(self, node: ast.Subscript) -> None:
        # Path(__file__).parents[k] beyond the candidate's root
        if isinstance(node.value, ast.Attribute) and node.value.attr == "parents" and _from_file(node.value.value):
            k = node.slice.value if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int) else None
            if k is None or k > self.depth:
                self.flag(node, "reading paths outside the candidate and the model")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        ups, inner = 0, node
        while isinstance(inner, ast.Attribute) and inner.attr == "parent":
            ups, inner = ups + 1, inner.value
        if ups and _from_file(inner) and ups > self.depth + 1:
            self.flag(node, "reading paths outside the candidate and the model")
            return
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node.func)
        attr = name.split(".")[-1]
        if attr in DYNAMIC_IMPORTS:
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if reason := _module_reason(arg.value):
                    self.flag(node, reason)
            else:
                self.flag(node, "dynamic import with a computed name")
        elif attr in ("exec", "eval", "compile") and name in ("exec", "eval", "compile", "builtins.exec", "builtins.eval"):
            self.flag(node, "dynamic code (exec/eval)")
        elif attr in NETWORK_CALLS:
            self.flag(node, "network access")
        elif name.startswith("os.") and attr in SPAWN_CALLS:
            self.flag(node, "spawning processes")
        elif name in ("Path.home", "pathlib.Path.home") or attr in ("expanduser", "gethomedir"):
            self.flag(node, "reading paths outside the candidate and the model")
        elif (attr == "get" and _is_environ(node.func)) or name in ("os.getenv", "getenv"):
            if not _visible_name(node.args[0] if node.args else None):
                self.flag(node, ENV_REASON)
        if self._writes_model(node, name, attr):
            self.flag(node, "writing into the model directory")
        self.generic_visit(node)

    def _mentions_model(self, node: ast.AST) -> bool:
        return any((isinstance(n, ast.Name) and n.id in self.model_names) or (isinstance(n, ast.Attribute) and n.attr in self.model_names)
                   for n in ast.walk(node))

    def _writes_model(self, node: ast.Call, name: str, attr: str) -> bool:
        if attr == "open" or name == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            writing = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax+")
            target = node.args[0] if node.args and name == "open" else node.func
            return writing and self._mentions_model(target)
        if attr in WRITE_CALLS:
            return self._mentions_model(node.func) or any(self._mentions_model(a) for a in node.args)
        return False


def _from_file(node: ast.AST) -> bool:
    """`__file__`, `Path(__file__)`, `Path(__file__).resolve()`, ..."""
    return any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node))


def _is_environ(func: ast.AST) -> bool:
    return isinstance(func, ast.Attribute) and _call_name(func.value) in ("os.environ", "environ")


def _call_name(func: ast.AST) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _visible_name(key: ast.AST | None) -> bool:
    """A literal name of a variable candidate code may see (a computed one could be any)."""
    return isinstance(key, ast.Constant) and isinstance(key.value, str) and may_see(key.value)


def _environ_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """os.environ["NAME"] with a NAME outside what candidate code may see, or a computed one."""
    return [(node.lineno, ENV_REASON) for node in ast.walk(tree)
            if isinstance(node, ast.Subscript) and _call_name(node.value) in ("os.environ", "environ") and not _visible_name(node.slice)]


def scan_python(source: str, depth: int) -> list[tuple[int, str]]:
    """(line, reason) for each thing the file may not do; a file that does not parse is one."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [(exc.lineno or 0, f"does not parse: {exc.msg}")]
    visitor = _Visitor(depth)
    visitor.visit(tree)
    return sorted(set(visitor.found + _environ_reads(tree)))


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts}


def _findings(rel: str, path: Path) -> list[tuple[int, str]]:
    if path.is_symlink():
        return [(0, "symlink in the candidate tree")]
    if path.suffix not in ALLOWED_SUFFIXES:
        return [(0, f"unexpected file type {path.suffix or '(none)'}")]
    if path.stat().st_size > MAX_FILE_BYTES:
        return [(0, "file too large (cached data?)")]
    text = path.read_text(errors="replace")
    if path.suffix == ".py":
        return scan_python(text, rel.count("/"))
    if path.suffix in (".c", ".cpp", ".cu", ".cuh", ".h"):
        return [(n, reason) for n, line in enumerate(text.splitlines(), 1) for pattern, reason in NATIVE_PATTERNS if re.search(pattern, line)]
    return []


def _lines(path: Path | None) -> set[str]:
    return set(path.read_text(errors="replace").splitlines()) if path is not None and path.is_file() and not path.is_symlink() else set()


def scan_for_bypass(candidate: Path, parent: Path | None) -> list[ScanFinding]:
    """What the candidate's code may not do, on lines neither the parent nor the seed engine
    (the template every candidate starts from, as `engine/`) already had in that file."""
    old = _files(parent) if parent else {}
    findings: list[ScanFinding] = []
    for rel, path in _files(candidate).items():
        lines = path.read_text(errors="replace").splitlines() if path.is_file() and not path.is_symlink() else []
        seed = SEED_ENGINE_DIR / rel.removeprefix("engine/") if rel.startswith("engine/") else None
        had = _lines(old.get(rel)) | _lines(seed)
        for number, reason in _findings(rel, path):
            text = lines[number - 1] if 0 < number <= len(lines) else ""
            if number and text in had:
                continue
            findings.append(ScanFinding(rel, number, text, reason))
    return findings
