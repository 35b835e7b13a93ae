"""A code-edit workload: every request carries a `prediction` that mostly matches its answer.

Editing code, most of the answer is text the client already has (the file being
edited): OpenAI's "predicted outputs" send it along so the server can verify it
instead of generating it. The tiny target's model is untrained, so there is no real
edit it would make; the answer is whatever the reference produces, and the honest
dataset is built from that: prompts are code-like snippets, each answer is the
REFERENCE's greedy output (made once, here, never by a candidate), and each
prediction is that answer with `EDIT_FRACTION` of its tokens replaced in
`EDIT_SPANS` spans, as a predicted file differs from the edited one in a few places.

Every row depends only on (seed, row index), so a test can rebuild any row and
compare it with the committed file.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vibeserve_ray.candidate import load_tokenizer

if TYPE_CHECKING:
    from vibeserve_ray.reference import RefOutput

EDIT_FRACTION = 0.10  # share of each prediction's tokens that differ from the answer
EDIT_SPANS = 3  # in this many separate spans
OUTPUT_LEN = (128, 192)  # answer tokens per request, inclusive range

_NAMES = ["total", "items", "index", "value", "result", "count", "buffer", "key", "node", "cache", "limit", "offset", "name", "path"]
_OPS = ["+", "-", "*", "/"]


@dataclass(frozen=True)
class CodeEditRow:
    """One line of the dataset (the JSONL format `bench.workload.from_jsonl` reads)."""

    prompt_token_ids: list[int]
    max_tokens: int
    prediction: list[int]

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def code_prompt(rng: random.Random) -> str:
    """A Python-like function and an instruction to edit it."""
    fn = rng.choice(["update", "merge", "scale", "lookup", "flush", "parse", "render"]) + "_" + rng.choice(_NAMES)
    args = rng.sample(_NAMES, rng.randint(2, 3))
    lines = [f"def {fn}({', '.join(args)}):"]
    for _ in range(rng.randint(3, 6)):
        a, b = rng.sample(args + [str(rng.randint(0, 99))], 2)
        target = rng.choice(_NAMES)
        lines.append(f"    {target} = {a} {rng.choice(_OPS)} {b}")
        if rng.random() < 0.3:
            lines.append(f"    if {target} > {rng.randint(0, 99)}:\n        return {target}")
    lines.append(f"    return {rng.choice(args)}")
    old, new = rng.sample(_NAMES, 2)
    return "\n".join(lines) + f"\n# edit: rename {old} to {new} and keep everything else\n"


def edit_spans(answer: list[int], rng: random.Random, fraction: float = EDIT_FRACTION, spans: int = EDIT_SPANS) -> list[tuple[int, int]]:
    """`spans` disjoint [start, end) ranges covering round(fraction * len(answer)) tokens."""
    total = round(fraction * len(answer))
    sizes = [total // spans + (i < total % spans) for i in range(spans)]
    # cut the answer into `spans` equal regions and put one span at a random place in each
    region = len(answer) // spans
    out = []
    for i, size in enumerate(sizes):
        start = i * region + rng.randint(0, max(region - size, 0))
        out.append((start, start + size))
    return out


def predict(answer: list[int], rng: random.Random, vocab: list[int], fraction: float = EDIT_FRACTION, spans: int = EDIT_SPANS) -> list[int]:
    """The answer with its edit spans replaced by other tokens drawn from `vocab`."""
    prediction = list(answer)
    for start, end in edit_spans(answer, rng, fraction, spans):
        for i in range(start, end):
            while (token := rng.choice(vocab)) == answer[i]:
                pass
            prediction[i] = token
    return prediction


def make_rows(model_dir: str | Path, tokenizer_dir: str | Path, seed: int, indices: list[int], reference_kind: str = "transformers",
              dtype: str = "float32", progress: Callable[[str], None] = lambda s: None) -> list[CodeEditRow]:
    """Rows `indices` of the dataset for `seed`: prompts, the reference's greedy answers, predictions."""
    # the reference loads torch and transformers: only making the dataset needs them
    from vibeserve_ray.reference import load_reference

    maker = RowMaker(tokenizer_dir, load_reference(reference_kind, model_dir, dtype), seed)
    rows = []
    for n, i in enumerate(indices, 1):
        rows.append(maker.row(i)[0])
        progress(f"code-edit: row {n}/{len(indices)}: {len(rows[-1].prompt_token_ids)} prompt tokens, {rows[-1].max_tokens} answer tokens")
    return rows


class RowMaker:
    """Builds row i of the dataset from (seed, i) alone, with the reference's answer."""

    def __init__(self, tokenizer_dir: str | Path, reference, seed: int):
        self.tok = load_tokenizer(tokenizer_dir)  # transformers loads torch: only making the dataset needs it
        special = set(self.tok.all_special_ids)
        self.vocab = [t for t in range(len(self.tok)) if t not in special]
        self.reference, self.seed = reference, seed

    def row(self, index: int) -> tuple[CodeEditRow, RefOutput]:
        rng = random.Random(f"code-edit/{self.seed}/{index}")
        prompt = self.tok.encode(code_prompt(rng))
        max_tokens = rng.randint(*OUTPUT_LEN)
        answer = self.reference.generate(prompt, max_tokens)
        return CodeEditRow(prompt, max_tokens, predict(answer.token_ids, rng, self.vocab)), answer


def write_dataset(path: str | Path, rows: list[CodeEditRow]) -> None:
    Path(path).write_text("".join(row.to_json() + "\n" for row in rows))
