"""Protected data: what the candidate must neither change nor carry.

The model (both checkpoints), the target (its checker prompts and benchmark data), the
reference and the harness (the vibeserve_ray package) are hashed before the candidate
runs and after; a difference rejects it (the sandbox mounts them read-only, so this
is the check that holds where it runs unconfined). And the candidate tree may hold no
copy of the checker's prompts, the benchmark's requests or the reference's answers to
the held-out prompts: a copy is how an engine would replay answers instead of
computing them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from vibeserve_ray.bench import Request
from vibeserve_ray.sandbox.view import package_dir
from vibeserve_ray.target import Target

FULL_HASH_BYTES = 64 << 20  # bigger files: size, mtime and their first and last MiB (a full hash of a
# multi-GB checkpoint per judging would cost more than the judging; the sandbox mounts it read-only)
COPY_TOKENS = 12  # a run of this many token ids of a protected sequence, in order, is a copy
MIN_TEXT_CHARS = 12  # shorter prompt texts occur by chance


def _digest(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
            return h.hexdigest()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(f.read(1 << 20))
        f.seek(-(1 << 20), 2)
        h.update(f.read(1 << 20))
    return h.hexdigest()


def protected_roots(target: Target) -> list[Path]:
    roots = [target.model_dir(), target.model_dir(swap=True), target.tokenizer_dir(), target.dir, package_dir()]
    return list(dict.fromkeys(p.resolve() for p in roots))


def snapshot(target: Target, exclude: Path | None = None) -> dict[str, str]:
    """Digest of every protected file, by path (`exclude`: the judging's own work directory,
    should it lie inside one of them)."""
    out = {}
    skip = exclude.resolve() if exclude else None
    for root in protected_roots(target):
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if p.is_file() and "__pycache__" not in p.parts and not (skip and p.is_relative_to(skip)):
                out[str(p)] = _digest(p)
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


def _ids_pattern(ids: list[int]) -> str:
    return ",".join(str(t) for t in ids[:COPY_TOKENS])


def copies_in_tree(candidate: Path, prompts: list[tuple[str, list[int]]], requests: list[Request], answers: list[list[int]]) -> list[str]:
    """'file: what' for each protected text or token sequence found in the candidate's files
    (token ids compared with whitespace and brackets removed, so any list literal or JSON matches)."""
    texts = {t: label for label, (t, _) in ((f"held-out prompt #{i}", p) for i, p in enumerate(prompts)) if len(t) >= MIN_TEXT_CHARS}
    sequences: dict[str, str] = {}
    for i, (_, ids) in enumerate(prompts):
        sequences.setdefault(_ids_pattern(ids), f"held-out prompt #{i} (token ids)")
    for i, r in enumerate(requests):
        sequences.setdefault(_ids_pattern(r.prompt_token_ids), f"benchmark request #{i}")
    for i, ids in enumerate(answers):
        sequences.setdefault(_ids_pattern(ids), f"the reference's answer to held-out prompt #{i}")
    sequences = {k: v for k, v in sequences.items() if k.count(",") + 1 >= min(COPY_TOKENS, 6)}
    found = []
    for path in sorted(candidate.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        text = path.read_text(errors="replace")
        flat = re.sub(r"[\s\[\]()]", "", text)
        rel = path.relative_to(candidate)
        found += [f"{rel}: a copy of {label}" for t, label in texts.items() if t in text]
        found += [f"{rel}: a copy of {label}" for pattern, label in sequences.items()
                  if pattern in flat and re.search(rf"(?<!\d){re.escape(pattern)}(?!\d)", flat)]
    return found
