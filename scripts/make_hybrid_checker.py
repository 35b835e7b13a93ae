"""Writes targets/tiny-hybrid-prefix/checker/prompts.jsonl: held-out prompts for the hybrid
target, from a seed alone. Run once; the file is committed.

Most share one long "system prompt" (about 640 tokens: several snapshot blocks at every
block size the design space offers) with tails of different lengths, so a candidate with
prefix reuse answers them from snapshots; two leave it inside a block, where a snapshot
must not be used past the divergence; the rest share nothing. Pseudo-words like the
tokenizer's corpus (tinymodel.py), drawn with their own seed.

    python scripts/make_hybrid_checker.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibeserve_ray.target import load_target  # noqa: E402

TARGET = ROOT / "targets" / "tiny-hybrid-prefix"
SEED = 26
SYLLABLES = ["ka", "to", "ri", "ne", "sa", "mo", "lu", "pe", "di", "ga", "fi", "zo", "ba", "che", "qu", "vi", "xe", "ya", "wu", "ho"]
COMMON = "the a of to and in is it you that he was for on are with as I his they be at one have this".split()
SHARED_WORDS = 520  # the system prompt, ~640 tokens
TAILS = [2, 8, 20, 45, 90]  # words after the whole system prompt
DIVERGE = [0.45, 0.8]  # share of the system prompt's words kept before a tail of its own
ALONE = [3, 12, 30, 70, 250]  # prompts sharing nothing


def words(rng: random.Random, n: int) -> str:
    out = [rng.choice(COMMON) if rng.random() < 0.3 else "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)]
    return " ".join(out)


def prompts() -> list[str]:
    rng = random.Random(SEED)
    system = words(rng, SHARED_WORDS).split()
    rows = [" ".join(system) + ". " + words(rng, n) for n in TAILS]
    rows += [" ".join(system[:int(share * len(system))]) + " " + words(rng, 24) for share in DIVERGE]
    rows += [words(rng, n) for n in ALONE]
    return rows


def main() -> None:
    rows = prompts()
    (TARGET / "checker" / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    from vibeserve_ray.inner.judge.checker import held_out_prompts  # transformers' tokenizer: only once the file exists

    lengths = [len(p.token_ids) for p in held_out_prompts(load_target(TARGET))]
    print(f"hybrid checker: wrote {len(rows)} prompts of {lengths} tokens to {TARGET / 'checker'}", file=sys.stderr)


if __name__ == "__main__":
    main()
