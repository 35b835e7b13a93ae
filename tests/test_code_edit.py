"""The code-edit target: its committed dataset is the reference's greedy answers with the
stated fraction of each prediction edited, and the target loads and benchmarks from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vibeserve_ray.bench.code_edit import EDIT_FRACTION, EDIT_SPANS, CodeEditRow, RowMaker
from vibeserve_ray.inner.workload import target_workload
from vibeserve_ray.reference import load_reference
from vibeserve_ray.target import load_target

TARGET = Path(__file__).resolve().parent.parent / "targets" / "tiny-llama-code-edit"
REGENERATED = [0, 17]  # rows rebuilt from scratch and compared with the committed file


@pytest.fixture(scope="module")
def target():
    return load_target(TARGET)


@pytest.fixture(scope="module")
def committed() -> list[CodeEditRow]:
    return [CodeEditRow(**json.loads(line)) for line in (TARGET / "dataset.jsonl").read_text().splitlines() if line.strip()]


def _runs(positions: list[int]) -> int:
    return sum(1 for i, p in enumerate(positions) if i == 0 or positions[i - 1] != p - 1)


def test_target_loads_and_every_request_carries_a_prediction(target, committed):
    requests = target_workload(target)
    assert len(requests) == target.spec.benchmark.num_requests == len(committed)
    assert target.spec.benchmark.headline == "mean_e2el_ms" and target.spec.benchmark.direction == "minimize"
    for r in requests:
        assert r.prediction is not None and len(r.prediction) == r.max_tokens
    assert f"{EDIT_FRACTION:.0%} of its tokens replaced, in {EDIT_SPANS} spans" in (TARGET / "target.toml").read_text()


@pytest.mark.parametrize("index", REGENERATED)
def test_prediction_is_the_reference_answer_with_the_stated_fraction_edited(target, committed, index):
    reference = load_reference(target.spec.reference.kind, target.model_dir(), target.spec.reference.dtype)
    row, answer = RowMaker(target.tokenizer_dir(), reference, seed=0).row(index)
    assert row == committed[index]  # the committed row is exactly what the reference makes today
    edited = [i for i, (p, a) in enumerate(zip(row.prediction, answer.token_ids)) if p != a]
    assert len(edited) == round(EDIT_FRACTION * row.max_tokens)
    assert _runs(edited) <= EDIT_SPANS
    assert 0 < len(edited) < row.max_tokens // 5  # mostly matching, and not trivially so
