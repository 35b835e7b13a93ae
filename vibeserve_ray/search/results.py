"""`RUN/results.parquet`: one row per evaluation, a stable schema for people and tools.

The notes in git are the source of truth; this table is their flat copy, rebuilt from
the notes when it is lost. In memory an `Evaluation` is typed (dicts, `Hint`s);
`to_record` and `from_record` are where its JSON columns are written and read, for the
table and the notes alike. Columns (stable; extend, never rename):

| column | meaning |
| --- | --- |
| eval_id | unique id of the evaluation |
| commit, tree, parent | the candidate's commit, its tree id (dedupe key), its parent commit ("" for the seed) |
| island, round | where and when in the search (the side-by-side re-measure is in `remeasure.json`, not here) |
| implementer | offline / anthropic:<model> / seed / tune (the finalist's tuning pass: the parent's code, knobs moved) |
| design, knobs | JSON of the candidate's design choices and (tuned) knob values |
| verdict | validated / rejected (judge said no) / failed (crash, hang, memory) / timeout |
| failure_phase, failure_reason | why, when not validated |
| headline_name, headline_value, speedup | the target's headline metric, and its ratio to the seed's (>1 is better, either direction) |
| slo_passed | the SLO verdict of the best tuned trial |
| metrics, hints | JSON: every benchmark metric; the evaluator's hints for the next round |
| started_at, finished_at | unix seconds |
| implement_s, judge_s, evaluate_s | time in each phase of the inner loop |
| node, attempt | the Ray node that ran it, and Ray's attempt number |
| agent_calls | Messages API calls the candidate's agents made (Implementer, Judge, Evaluator; 0 offline) |
| agent_input_tokens, agent_cache_write_tokens, agent_cache_read_tokens | their input tokens: uncached (the API's `input_tokens`), written to and read from the prompt cache; billed input is the sum |
| agent_output_tokens | their output tokens |
| agent_cost_usd | what those calls cost, at the prices in the target's `[agent]` (or the built-in list prices) |
| agent_s | wall time of the candidate's agent sessions, tools included |
| agent_usage | JSON: the same per role (`calls`, token counts, `cost_usd`, `seconds` in the API, `session_s`) |
| judge_gates | JSON: each judge gate that ran, its verdict and seconds |
| sandbox_warning | set when candidate code ran unconfined (`[limits] sandbox = "best-effort"` on a machine without a sandbox) |
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from vibeserve_ray.inner.hints import Hint
from vibeserve_ray.inner.result import Outcome

RESULTS_FILE = "results.parquet"


@dataclass(frozen=True, kw_only=True)
class Evaluation(Outcome):
    """One row: the inner loop's outcome as recorded, with its commit and what it cost."""

    commit: str
    tree: str  # the commit's tree id: two candidates with one tree are the same code
    speedup: float = math.nan
    agent_calls: int = 0
    agent_input_tokens: int = 0
    agent_cache_write_tokens: int = 0
    agent_cache_read_tokens: int = 0
    agent_output_tokens: int = 0
    agent_cost_usd: float = 0.0
    agent_s: float = 0.0
    agent_usage: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> its calls, tokens, cost_usd, seconds, session_s

    def to_record(self) -> dict[str, Any]:
        """The row as the table and the notes store it: flat, its structured fields as JSON."""
        return {name: _CODECS[name][0](getattr(self, name)) if name in _CODECS else getattr(self, name) for name in SCHEMA.names}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Evaluation":
        """A stored row (a table row or a note), any version: columns it lacks take their
        defaults, keys that are no column (a note's trials) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: _CODECS[k][1](v) if k in _CODECS else v for k, v in record.items() if k in known})


def _dumps(sort_keys: bool) -> Callable[[Any], str]:
    return lambda value: json.dumps(value, sort_keys=sort_keys)


def _loads(empty: str, then: Callable[[Any], Any] = lambda x: x) -> Callable[[str], Any]:
    return lambda text: then(json.loads(text or empty))  # "" was written by hand-made rows of old tests and tools


# column -> (to its JSON text, back): the encodings are part of the table's contract
_CODECS: dict[str, tuple[Callable[[Any], str], Callable[[str], Any]]] = {
    "design": (_dumps(True), _loads("{}")),
    "knobs": (_dumps(True), _loads("{}")),
    "metrics": (_dumps(True), _loads("{}")),
    "hints": (lambda hints: json.dumps([h.to_dict() for h in hints]), _loads("[]", lambda xs: tuple(Hint.from_dict(h) for h in xs))),
    "agent_usage": (_dumps(True), _loads("{}")),
    "judge_gates": (lambda gates: json.dumps(list(gates)), _loads("[]", tuple)),
}

# The table's columns in their order, with their types: a contract (extend, never rename).
SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("commit", pa.string()), ("tree", pa.string()), ("parent", pa.string()),
    ("island", pa.int64()), ("round", pa.int64()), ("implementer", pa.string()),
    ("design", pa.string()), ("knobs", pa.string()), ("verdict", pa.string()),
    ("failure_phase", pa.string()), ("failure_reason", pa.string()),
    ("headline_name", pa.string()), ("headline_value", pa.float64()), ("speedup", pa.float64()), ("slo_passed", pa.bool_()),
    ("metrics", pa.string()), ("hints", pa.string()), ("started_at", pa.float64()), ("finished_at", pa.float64()),
    ("implement_s", pa.float64()), ("judge_s", pa.float64()), ("evaluate_s", pa.float64()), ("node", pa.string()), ("attempt", pa.int64()),
    ("agent_calls", pa.int64()), ("agent_input_tokens", pa.int64()), ("agent_cache_write_tokens", pa.int64()),
    ("agent_cache_read_tokens", pa.int64()), ("agent_output_tokens", pa.int64()), ("agent_cost_usd", pa.float64()), ("agent_s", pa.float64()),
    ("agent_usage", pa.string()), ("judge_gates", pa.string()), ("sandbox_warning", pa.string()),
])
assert set(SCHEMA.names) == {f.name for f in fields(Evaluation)}, "a field of Evaluation that is no column (or the reverse)"


class ResultsUnreadable(Exception):
    """results.parquet is there but is no table (a disk error, a partial copy, an editor)."""


def read_results(run_dir: Path) -> list[Evaluation]:
    file = Path(run_dir) / RESULTS_FILE
    if not file.is_file():
        return []
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise ResultsUnreadable(f"{file}: {exc}") from exc
    return [Evaluation.from_record(row) for row in table.to_pylist()]


def write_results(run_dir: Path, rows: list[Evaluation]) -> None:
    """Writes the whole table atomically (small tables; the notes are the log)."""
    file = Path(run_dir) / RESULTS_FILE
    table = pa.Table.from_pylist([r.to_record() for r in rows], schema=SCHEMA)
    tmp = file.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(file)


def set_aside(file: Path) -> Path:
    """Moves an unreadable state file out of the way (kept for a post-mortem), returning where."""
    aside = file.with_name(f"{file.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    file.replace(aside)
    return aside


def append_result(run_dir: Path, row: Evaluation, known: int = 0) -> bool:
    """Appends the row; False (and nothing written) when the table is unreadable, or holds
    fewer than the `known` rows the caller has recorded before (it was deleted or cut
    short): the caller rebuilds it from the notes."""
    try:
        rows = read_results(run_dir)
    except ResultsUnreadable:
        set_aside(Path(run_dir) / RESULTS_FILE)
        return False
    if any(r.eval_id == row.eval_id for r in rows):
        return True
    if len(rows) < known:
        return False
    write_results(run_dir, rows + [row])
    return True


def rows_from_notes(notes: dict[str, list[dict]]) -> list[Evaluation]:
    """The evaluations the notes in git hold, in the order they finished."""
    rows = [Evaluation.from_record(rec) for recs in notes.values() for rec in recs]
    rows.sort(key=lambda r: (r.finished_at, r.eval_id))
    return rows


def rebuild_from_notes(run_dir: Path, notes: dict[str, list[dict]]) -> list[Evaluation]:
    """The table as the notes in git say it is (after a crash, or if the file was lost)."""
    rows = rows_from_notes(notes)
    write_results(run_dir, rows)
    return rows
