"""A JSON-mode workload: every request asks for a JSON object matching its own schema.

As an application extracting records would send them: a prompt that describes the
record and names its fields, and `response_format` {"type": "json_schema"} with the
schema. Schemas are drawn from (seed, row index) alone: objects of 2 to 5 fields, each
a bounded string, an enum, an integer range, a boolean, a short array of enum values
or a small nested object, every field required.

Every schema is bounded, so every valid document is, and `max_tokens` is set above the
longest one (`max_document_bytes` + 1 for the stop token; a token is at least a byte):
the grammar, not max_tokens, ends every answer, and every answer is a complete document.
The tiny model is untrained, so what fills the fields is noise; the masks are what make
it valid.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from vibeserve_ray.candidate import load_tokenizer

_RECORDS = ["order", "user", "invoice", "ticket", "sensor reading", "shipment", "review", "booking", "event", "product"]
_FIELDS = ["id", "name", "city", "status", "count", "price", "active", "tags", "owner", "level", "kind", "code", "score",
           "email", "country", "note", "size", "color", "priority", "rating"]
_WORDS = ["red", "green", "blue", "open", "closed", "pending", "low", "high", "small", "large", "new", "done", "north", "south"]
ESCAPED_CHAR_BYTES = 6  # the most bytes one string character takes in JSON text: an escape like \u00e9


@dataclass(frozen=True)
class JsonRow:
    """One line of the dataset (the JSONL format `bench.workload.from_jsonl` reads)."""

    prompt_token_ids: list[int]
    max_tokens: int
    response_format: dict

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def random_field(rng: random.Random, depth: int = 0) -> tuple[dict, str]:
    """A bounded JSON Schema for one field and the words a prompt uses to describe it."""
    kinds = ["string", "enum", "integer", "boolean", "array"] + (["object"] if depth == 0 else [])
    kind = rng.choice(kinds)
    if kind == "string":
        # a pattern, not maxLength: xgrammar 0.2.9 lets a maxLength string hold raw control
        # characters (its rule is [^"\\\r\n]), which no JSON parser accepts
        n = rng.randint(4, 12)
        return {"type": "string", "pattern": f"^[a-z ]{{1,{n}}}$"}, f"lower-case words of at most {n} characters"
    if kind == "enum":
        words = rng.sample(_WORDS, rng.randint(2, 4))
        return {"type": "string", "enum": words}, "one of " + ", ".join(words)
    if kind == "integer":
        low = rng.choice([0, 1, -100])
        high = rng.choice([9, 99, 999, 99999])
        return {"type": "integer", "minimum": low, "maximum": high}, f"an integer from {low} to {high}"
    if kind == "boolean":
        return {"type": "boolean"}, "true or false"
    if kind == "array":
        words, n = rng.sample(_WORDS, rng.randint(2, 4)), rng.randint(1, 4)
        return {"type": "array", "items": {"type": "string", "enum": words}, "maxItems": n}, f"up to {n} of " + ", ".join(words)
    schema, words = random_object(rng, rng.randint(2, 3), depth + 1)
    return schema, f"an object with {words}"


def random_object(rng: random.Random, num_fields: int, depth: int = 0) -> tuple[dict, str]:
    names = rng.sample(_FIELDS, num_fields)
    fields = [(name, *random_field(rng, depth)) for name in names]
    schema = {"type": "object", "properties": {name: s for name, s, _ in fields}, "required": names, "additionalProperties": False}
    return schema, "; ".join(f"{name}: {words}" for name, _, words in fields)


def json_request(rng: random.Random, max_fields: int = 5) -> tuple[str, dict]:
    """A prompt describing a record of 2 to `max_fields` fields and the response_format asking for it."""
    record = rng.choice(_RECORDS)
    schema, words = random_object(rng, rng.randint(2, max_fields))
    prompt = f"Extract the {record} from the text below as JSON with the fields {words}.\nText: " + " ".join(
        rng.choice(_WORDS + _FIELDS) for _ in range(rng.randint(4, 24)))
    name = record.replace(" ", "_")
    return prompt, {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def max_document_bytes(schema: dict) -> int:
    """The longest compact document (xgrammar's ", " and ": " separators) valid under `schema`, in bytes."""
    kind = schema.get("type")
    if "enum" in schema:
        return max(len(json.dumps(v).encode()) for v in schema["enum"])
    if kind == "string":
        # a pattern of one character class repeated at most n times: "^[a-z ]{1,12}$", "^[0-9:]{4,5}$"
        return 2 + ESCAPED_CHAR_BYTES * int(re.fullmatch(r"\^\[[^\]]+\]\{\d+,(\d+)\}\$", schema["pattern"]).group(1))
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if kind == "boolean":
        return len("false")
    if kind == "array":
        n = schema["maxItems"]
        return 2 + n * max_document_bytes(schema["items"]) + 2 * max(n - 1, 0)
    if kind == "object":
        props = schema["properties"]
        fields = sum(len(json.dumps(k).encode()) + 2 + max_document_bytes(v) for k, v in props.items())
        return 2 + fields + 2 * max(len(props) - 1, 0)
    raise ValueError(f"unbounded schema: {schema}")


def make_rows(tokenizer_dir: str | Path, seed: int, num_rows: int) -> list[JsonRow]:
    """Rows 0..num_rows-1 of the dataset for `seed` (row i depends on (seed, i) only)."""
    tok = load_tokenizer(tokenizer_dir)  # transformers loads torch: only making the dataset needs it
    rows = []
    for i in range(num_rows):
        prompt, fmt = json_request(random.Random(f"json-mode/{seed}/{i}"))
        rows.append(JsonRow(tok.encode(prompt), max_document_bytes(fmt["json_schema"]["schema"]) + 1, fmt))
    return rows


def write_dataset(path: str | Path, rows: list[JsonRow]) -> None:
    Path(path).write_text("".join(row.to_json() + "\n" for row in rows))
