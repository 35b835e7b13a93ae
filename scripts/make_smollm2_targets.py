"""Writes the SmolLM2 targets' data from code alone (nothing is downloaded): for
targets/smollm2-chat-cpu its benchmark (dataset.jsonl), its held-out checker prompts and
its known-answer questions; for targets/smollm2-json-cpu its benchmark and checker
prompts. Run once; the files are committed.

    python scripts/make_smollm2_targets.py [--rows 64] [--checker-rows 16] [--which chat,json]

Chat requests are what people ask a small assistant: short factual questions, how-to and
explanations, code, summaries of documentation (the module docstrings that ship with
Python: long prompts), and follow-ups in a multi-turn conversation, each rendered through
the model's own chat template. Each request's max_tokens is the length of the reference
model's own greedy answer to it (to its end-of-turn token, inclusive, capped per kind):
with the load generator's ignore_eos, a server produces exactly the answer the model
gives, so the workload has the model's real mix of answer lengths.

JSON requests ask to extract a record (a booking, a ticket, a contact, ...) from a short
message written from seeded templates, as JSON under a bounded schema
(vibeserve_ray/bench/json_mode.py: max_tokens above the longest valid document).

The benchmark and the held-out sets never share an instruction, a passage or a message.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibeserve_ray.bench.json_mode import JsonRow, max_document_bytes, write_dataset  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402
from vibeserve_ray.tinymodel import cache_dir  # noqa: E402

CHAT, JSON_TARGET = ROOT / "targets" / "smollm2-chat-cpu", ROOT / "targets" / "smollm2-json-cpu"
sys.path.insert(0, str(ROOT / "scripts"))
from smollm2_prompts import (  # noqa: E402
    CHECKER, CODE, EXPLAIN, KNOWN_ANSWERS, RECORDS, SHORT, SUMMARY_ASKS, SUMMARY_MODULES, CONVERSATIONS, passage)

CAPS = {"short": 32, "explain": 160, "code": 192, "summary": 128, "conversation": 128}  # max_tokens ceilings per kind
MIN_TOKENS = 4


def model_dir(target_dir: Path) -> Path:
    """The target's checkpoint, read from its toml (the target names the files this writes,
    so it does not load before they exist)."""
    # the model section alone, validated the way the target does
    from vibeserve_ray import checkpoint

    m = tomllib.loads((target_dir / "target.toml").read_text())["model"]
    return checkpoint.hf_dir(checkpoint.packaged_file(m["package"], m.get("file")))


def chat_rows(rng: random.Random, n: int) -> list[tuple[str, list[dict]]]:
    """`n` (kind, messages) pairs drawn from the benchmark pools, every kind represented."""
    pools = {
        "short": [[{"role": "user", "content": q}] for q in SHORT],
        "explain": [[{"role": "user", "content": q}] for q in EXPLAIN],
        "code": [[{"role": "user", "content": q}] for q in CODE],
        "summary": [[{"role": "user", "content": f"{ask}\n\n{passage(m)}"}] for m in SUMMARY_MODULES for ask in SUMMARY_ASKS],
        "conversation": list(CONVERSATIONS),
    }
    share = {"short": 0.25, "explain": 0.25, "code": 0.15, "summary": 0.2, "conversation": 0.15}
    rows = []
    for kind, frac in share.items():
        picks = rng.sample(pools[kind], min(len(pools[kind]), round(n * frac)))
        rows += [(kind, messages) for messages in picks]
    rng.shuffle(rows)
    return rows[:n]


def natural_lengths(model: Path, prompts: list[list[int]], caps: list[int], eos: int) -> list[int]:
    """How long the reference's greedy answer to each prompt is, its end-of-turn token
    included, at most its cap (cached on disk like every reference output)."""
    from vibeserve_ray.reference import reference_outputs

    outs = reference_outputs("transformers", model, "float32", prompts, caps, cache_root=cache_dir())
    return [max(MIN_TOKENS, o.token_ids.index(eos) + 1 if eos in o.token_ids else len(o.token_ids)) for o in outs]


def write_chat(rows: int, checker_rows: int, seed: int) -> None:
    from transformers import AutoTokenizer

    model = model_dir(CHAT)
    tok = AutoTokenizer.from_pretrained(str(model))
    render = lambda messages: tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # noqa: E731
    picked = chat_rows(random.Random(f"smollm2-chat/{seed}"), rows)
    prompts = [tok.encode(render(messages)) for _, messages in picked]
    caps = [CAPS[kind] for kind, _ in picked]
    print(f"chat: the reference's answers to {len(prompts)} requests (minutes, once)", file=sys.stderr)
    lengths = natural_lengths(model, prompts, caps, tok.convert_tokens_to_ids("<|im_end|>"))
    lines = [json.dumps({"prompt_token_ids": p, "max_tokens": n}) + "\n" for p, n in zip(prompts, lengths)]
    (CHAT / "dataset.jsonl").write_text("".join(lines))
    held = [render(messages) for messages in CHECKER[:checker_rows]]
    (CHAT / "checker").mkdir(exist_ok=True)
    (CHAT / "checker" / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in held))
    (CHAT / "known_answers.jsonl").write_text("".join(json.dumps({"question": q, "answers": a}) + "\n" for q, a in KNOWN_ANSWERS))
    load_target(CHAT)
    kinds = {k: sum(1 for kind, _ in picked if kind == k) for k in CAPS}
    print(f"chat: {len(lines)} requests {kinds}, prompt tokens {min(map(len, prompts))}-{max(map(len, prompts))}, "
          f"max_tokens {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f}); {len(held)} checker prompts; "
          f"{len(KNOWN_ANSWERS)} known-answer questions", file=sys.stderr)


def json_request(rng: random.Random, records: list) -> tuple[str, dict]:
    """An extraction instruction for a record drawn from `records`, and its response_format."""
    record = rng.choice(records)
    values = record.draw(rng)
    schema = {"type": "object", "properties": {f.name: f.schema for f in record.fields}, "required": [f.name for f in record.fields],
              "additionalProperties": False}
    fields = "; ".join(f"{f.name}: {f.describe}" for f in record.fields)
    prompt = f"Extract the {record.name} from the message below as a JSON object with the fields {fields}.\n\nMessage: {record.text(rng, values)}"
    return prompt, {"type": "json_schema", "json_schema": {"name": record.name.replace(" ", "_"), "schema": schema, "strict": True}}


def write_json(rows: int, checker_rows: int, seed: int) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir(JSON_TARGET)))
    render = lambda text: tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)  # noqa: E731
    bench, held = RECORDS  # disjoint template sets: a held-out message is never one the benchmark sends
    out = []
    for i in range(rows):
        prompt, fmt = json_request(random.Random(f"smollm2-json/{seed}/{i}"), bench)
        out.append(JsonRow(tok.encode(render(prompt)), max_document_bytes(fmt["json_schema"]["schema"]) + 1, fmt))
    write_dataset(JSON_TARGET / "dataset.jsonl", out)
    checks = [json_request(random.Random(f"smollm2-json/checker/{i}"), held) for i in range(checker_rows)]
    (JSON_TARGET / "checker").mkdir(exist_ok=True)
    (JSON_TARGET / "checker" / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": render(p), "response_format": f}) + "\n" for p, f in checks))
    load_target(JSON_TARGET)
    print(f"json: {rows} requests, prompt tokens {min(len(r.prompt_token_ids) for r in out)}-{max(len(r.prompt_token_ids) for r in out)}; "
          f"{checker_rows} checker prompts", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--checker-rows", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--which", default="chat,json")
    args = ap.parse_args()
    if "json" in args.which:
        write_json(args.rows, args.checker_rows, args.seed)
    if "chat" in args.which:
        write_chat(args.rows, args.checker_rows, args.seed)


if __name__ == "__main__":
    main()
