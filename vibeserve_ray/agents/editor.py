"""Anthropic's text editor tool (`text_editor_20250728`, `str_replace_based_edit_tool`),
confined to one root (the candidate tree): the interface Claude models are trained on for editing.

The agent sees the root as `/candidate` (relative paths work too). A path that
leaves it, or passes through a symlink, is refused: an agent must not read
the harness, the reference or the benchmark data, nor write outside its candidate.
"""

from __future__ import annotations

from pathlib import Path

from vibeserve_ray.agents.tools import Tool, ToolError, schema

EDITOR_TYPE = "text_editor_20250728"
EDITOR_NAME = "str_replace_based_edit_tool"
VIRTUAL_ROOT = "/candidate"
SKIP_DIRS = {"__pycache__", ".git"}

EDITOR_SCHEMA = {
    "type": "object",
    "properties": {
        "command": {"enum": ["view", "create", "str_replace", "insert"]},
        "path": {"type": "string"},
        "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        "file_text": {"type": "string"},
        "old_str": {"type": "string"},
        "new_str": {"type": "string"},
        "insert_line": {"type": "integer", "minimum": 0},
        "insert_text": {"type": "string"},
    },
    "required": ["command", "path"],
    "allOf": [
        {"if": {"properties": {"command": {"const": "create"}}}, "then": {"required": ["file_text"]}},
        {"if": {"properties": {"command": {"const": "str_replace"}}}, "then": {"required": ["old_str"]}},
        {"if": {"properties": {"command": {"const": "insert"}}}, "then": {"required": ["insert_line"]}},
    ],
}


class ConfinedRoot:
    """The candidate tree as agents reach it: files under `root`, by paths that stay inside it."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def resolve(self, path: str) -> Path:
        rel = path.strip()
        for prefix in (VIRTUAL_ROOT, str(self.root)):
            if rel == prefix or rel.startswith(prefix + "/"):
                rel = rel[len(prefix):]
                break
        else:
            if rel.startswith("/"):
                raise ToolError(f"{path}: outside the workspace (paths start with {VIRTUAL_ROOT}/)")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ToolError(f"{path}: '..' is not allowed")
        current = self.root
        for part in parts:
            current = current / part
            if current.is_symlink():
                raise ToolError(f"{path}: passes through a symlink, which is refused")
        return current

    def show(self, p: Path) -> str:
        rel = p.relative_to(self.root).as_posix()
        return VIRTUAL_ROOT + ("/" + rel if rel != "." else "")

    def view(self, path: str, view_range: list[int] | None = None) -> str:
        p = self.resolve(path)
        if p.is_dir():
            return self._listing(p)
        text = self._read(p, path)
        lines = text.splitlines()
        start, end = 1, len(lines)
        if view_range:
            start, end = view_range[0], (len(lines) if view_range[1] == -1 else view_range[1])
            if not (1 <= start <= max(1, len(lines)) and start <= end <= len(lines)):
                raise ToolError(f"view_range {view_range} is outside the file's lines 1-{len(lines)}")
        width = len(str(end))
        return "\n".join(f"{n:>{width}}\t{lines[n - 1]}" for n in range(start, end + 1))

    def _listing(self, directory: Path) -> str:
        out = [f"{self.show(directory)}/ (files and directories up to 2 levels deep)"]
        for p in sorted(directory.rglob("*")):
            rel = p.relative_to(directory)
            if len(rel.parts) > 2 or SKIP_DIRS & set(rel.parts) or p.is_symlink():
                continue
            out.append(self.show(p) + ("/" if p.is_dir() else f"  ({p.stat().st_size} bytes)"))
        return "\n".join(out)

    def _read(self, p: Path, path: str) -> str:
        if not p.is_file():
            raise ToolError(f"{path}: no such file")
        try:
            return p.read_text()
        except UnicodeDecodeError:
            raise ToolError(f"{path}: not a text file") from None

    def create(self, path: str, file_text: str) -> str:
        p = self.resolve(path)
        if p.is_dir():
            raise ToolError(f"{path}: is a directory")
        p.parent.mkdir(parents=True, exist_ok=True)
        existed = p.exists()
        p.write_text(file_text)
        return f"{'overwrote' if existed else 'created'} {self.show(p)}"

    def str_replace(self, path: str, old_str: str, new_str: str) -> str:
        p = self.resolve(path)
        text = self._read(p, path)
        n = text.count(old_str)
        if n != 1:
            raise ToolError(f"old_str occurs {n} times in {self.show(p)}; it must occur exactly once (include more context)"
                            if n else f"old_str not found in {self.show(p)} (it must match exactly, whitespace included)")
        p.write_text(text.replace(old_str, new_str, 1))
        line = text[: text.index(old_str)].count("\n") + 1
        return f"edited {self.show(p)} at line {line}"

    def insert(self, path: str, insert_line: int, insert_text: str) -> str:
        p = self.resolve(path)
        lines = self._read(p, path).splitlines(keepends=True)
        if insert_line > len(lines):
            raise ToolError(f"insert_line {insert_line} is past the end of {self.show(p)} ({len(lines)} lines)")
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        new = insert_text if insert_text.endswith("\n") else insert_text + "\n"
        lines.insert(insert_line, new)
        p.write_text("".join(lines))
        return f"inserted {new.count(chr(10))} lines after line {insert_line} of {self.show(p)}"

    def edit(self, args: dict) -> str:
        """The text editor tool's four commands."""
        cmd = args["command"]
        if cmd == "view":
            return self.view(args["path"], args.get("view_range"))
        if cmd == "create":
            return self.create(args["path"], args["file_text"])
        if cmd == "str_replace":
            return self.str_replace(args["path"], args["old_str"], args.get("new_str", ""))
        # older editor versions called the inserted text `new_str`
        return self.insert(args["path"], args["insert_line"], args.get("insert_text", args.get("new_str", "")))

    def grep(self, pattern: str, limit: int = 200) -> str:
        """Lines of text files containing `pattern` (a plain string), as path:line: text."""
        hits = []
        for p in sorted(self.root.rglob("*")):
            if not p.is_file() or p.is_symlink() or SKIP_DIRS & set(p.relative_to(self.root).parts):
                continue
            try:
                for n, line in enumerate(p.read_text().splitlines(), 1):
                    if pattern in line:
                        hits.append(f"{self.show(p)}:{n}: {line.strip()[:200]}")
            except (UnicodeDecodeError, OSError):
                continue
        return "\n".join(hits[:limit]) + (f"\n[{len(hits) - limit} more]" if len(hits) > limit else "") if hits else "no match"


def editor_tool(root: ConfinedRoot) -> Tool:
    """The text editor, confined to `root`: view, create, str_replace, insert."""
    return Tool(EDITOR_NAME, "Anthropic's text editor", EDITOR_SCHEMA, root.edit, api_type=EDITOR_TYPE)


def read_tools(root: ConfinedRoot) -> list[Tool]:
    """Read-only tools over `root`, for roles that review and never edit."""
    view = Tool("view", f"Shows a file of the candidate with line numbers (or a directory listing). Paths start with {VIRTUAL_ROOT}/.",
                schema({"path": {"type": "string"}, "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}},
                       ["path"]),
                lambda a: root.view(a["path"], a.get("view_range")))
    grep = Tool("grep", "Lines of the candidate's files containing a plain string, as path:line: text.",
                schema({"pattern": {"type": "string", "minLength": 1}}), lambda a: root.grep(a["pattern"]))
    return [view, grep]

