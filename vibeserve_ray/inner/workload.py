"""The target's workload: the requests its benchmark sends, from its dataset or its
seeded synthetic recipe. The evaluator measures with them, and the judge checks a
candidate under other requests of the same shapes (load honesty) and looks for copies
of them in its tree (protected data).
"""

from __future__ import annotations

import json
from pathlib import Path

from vibeserve_ray.bench import Request, from_jsonl, synthetic
from vibeserve_ray.target import Target


def target_workload(target: Target, num_requests: int | None = None, seed: int | None = None) -> list[Request]:
    """The target's benchmark requests: its JSONL dataset or its seeded synthetic recipe
    (`seed`: other requests of the same shapes, as the judge's load-honesty gate sends)."""
    b = target.spec.benchmark
    n = num_requests or b.num_requests
    if b.dataset is not None:
        return from_jsonl(target.path(b.dataset), n, b.seed if seed is None else seed)
    config = json.loads((target.model_dir() / "config.json").read_text())
    special = special_token_ids(target.tokenizer_dir())
    s = b.synthetic
    assert s is not None
    return synthetic(n, s.seed if seed is None else seed, int(config["vocab_size"]), tuple(s.input_len), tuple(s.output_len),
                     s.shared_prefix_len, special)


def special_token_ids(tokenizer_dir: Path) -> list[int]:
    tok_file = tokenizer_dir / "tokenizer.json"
    if not tok_file.is_file():
        return []
    return [t["id"] for t in json.loads(tok_file.read_text()).get("added_tokens", []) if t.get("special")]
