"""`RUN/results.parquet`: one row per evaluation, a stable schema for people and tools.

The notes in git are the source of truth; this table is their flat copy, rebuilt from
the notes when it is lost. Columns (stable; extend, never rename):

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

RESULTS_FILE = "results.parquet"


@dataclass(frozen=True)
class Evaluation:
    eval_id: str
    commit: str
    tree: str
    parent: str
    island: int
    round: int
    implementer: str
    design: str
    knobs: str
    verdict: str
    failure_phase: str = ""
    failure_reason: str = ""
    headline_name: str = ""
    headline_value: float = math.nan
    speedup: float = math.nan
    slo_passed: bool = False
    metrics: str = "{}"
    hints: str = "[]"
    started_at: float = 0.0
    finished_at: float = 0.0
    implement_s: float = 0.0
    judge_s: float = 0.0
    evaluate_s: float = 0.0
    node: str = ""
    attempt: int = 0
    agent_calls: int = 0
    agent_input_tokens: int = 0
    agent_cache_write_tokens: int = 0
    agent_cache_read_tokens: int = 0
    agent_output_tokens: int = 0
    agent_cost_usd: float = 0.0
    agent_s: float = 0.0
    agent_usage: str = "{}"
    judge_gates: str = "[]"
    sandbox_warning: str = ""

    @property
    def validated(self) -> bool:
        return self.verdict == "validated"

    def design_dict(self) -> dict:
        return json.loads(self.design)

    def to_dict(self) -> dict:
        return asdict(self)


_TYPES = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}
SCHEMA = pa.schema([(f.name, _TYPES[{"int": int, "float": float, "str": str, "bool": bool}[f.type]]) for f in fields(Evaluation)])


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
    names = {f.name for f in fields(Evaluation)}
    return [Evaluation(**{k: v for k, v in row.items() if k in names}) for row in table.to_pylist()]


def write_results(run_dir: Path, rows: list[Evaluation]) -> None:
    """Writes the whole table atomically (small tables; the notes are the log)."""
    file = Path(run_dir) / RESULTS_FILE
    table = pa.Table.from_pylist([r.to_dict() for r in rows], schema=SCHEMA)
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
    names = {f.name for f in fields(Evaluation)}
    rows = [Evaluation(**{k: v for k, v in rec.items() if k in names}) for recs in notes.values() for rec in recs]
    rows.sort(key=lambda r: (r.finished_at, r.eval_id))
    return rows


def rebuild_from_notes(run_dir: Path, notes: dict[str, list[dict]]) -> list[Evaluation]:
    """The table as the notes in git say it is (after a crash, or if the file was lost)."""
    rows = rows_from_notes(notes)
    write_results(run_dir, rows)
    return rows
