"""Static gates on a candidate tree: protected files untouched, no bypassing inference.

A candidate could pass the checker by cheating: replaying cached answers, reading the
benchmark's or the reference's data, or calling out over the network. These gates
look at what changed against the parent, so the seed's own code is never flagged and
an agent's new code always is. They are deliberately conservative: a false alarm is
a rejected candidate with its reason recorded, not a lost one.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

# Paths in a candidate tree that only the search may change (the contract's entrypoint
# is how the runner finds the engine; changing it would change what is measured).
PROTECTED_FILES: tuple[str, ...] = ()
ALLOWED_SUFFIXES = {".py", ".toml", ".md", ".txt", ".json", ".cfg", ".cu", ".cuh", ".cpp", ".h", ".c"}
MAX_FILE_BYTES = 2 * 1024 * 1024

BYPASS_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\b(import|from)\s+(socket|urllib|http\.client|requests|httpx|aiohttp|ftplib|smtplib)\b", "network access"),
    (r"\b(import|from)\s+(subprocess|multiprocessing\.connection)\b|os\.(system|popen|exec\w*)\(", "spawning processes"),
    (r"\b(import|from)\s+(transformers|vibeserve_ray\.(reference|judge|bench|measure|target))\b", "importing the reference or the harness"),
    (r"targets/|prompts\.jsonl|checker/|\.jsonl\b", "reading benchmark or checker data"),
    (r"reference_outputs|RefOutput|/\.cache/vibeserve|VIBESERVE_CACHE", "reading cached reference answers"),
    (r"\bpickle\.loads?\(|\bmarshal\.loads?\(", "loading serialized answers"),
    (r"os\.environ\[?.*(KEY|TOKEN|SECRET)", "reading credentials"),
)


@dataclass(frozen=True)
class ScanFinding:
    path: str
    line: int
    text: str
    reason: str

    def describe(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.text.strip()[:120]}"


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def protected_changes(candidate: Path, parent: Path, protected: tuple[str, ...] = PROTECTED_FILES) -> list[str]:
    """Protected files whose content differs from the parent's."""
    changed = []
    for rel in protected:
        a, b = candidate / rel, parent / rel
        if a.is_file() != b.is_file() or (a.is_file() and a.read_bytes() != b.read_bytes()):
            changed.append(rel)
    return changed


def scan_for_bypass(candidate: Path, parent: Path | None) -> list[ScanFinding]:
    """Suspicious lines added relative to `parent` (every line when there is none)."""
    findings: list[ScanFinding] = []
    old = _files(parent) if parent else {}
    for rel, path in _files(candidate).items():
        if path.is_symlink():
            findings.append(ScanFinding(rel, 0, "", "symlink in the candidate tree"))
            continue
        if path.suffix not in ALLOWED_SUFFIXES:
            findings.append(ScanFinding(rel, 0, "", f"unexpected file type {path.suffix or '(none)'}"))
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            findings.append(ScanFinding(rel, 0, "", "file too large (cached data?)"))
            continue
        new_lines = path.read_text(errors="replace").splitlines()
        old_lines = old[rel].read_text(errors="replace").splitlines() if rel in old else []
        for number, line in _added(old_lines, new_lines):
            if line.lstrip().startswith("#"):
                continue
            for pattern, reason in BYPASS_PATTERNS:
                if re.search(pattern, line):
                    findings.append(ScanFinding(rel, number, line, reason))
    return findings


def _added(old: list[str], new: list[str]) -> list[tuple[int, str]]:
    out = []
    for tag, _, _, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag in ("replace", "insert"):
            out += [(j + 1, new[j]) for j in range(j1, j2)]
    return out
