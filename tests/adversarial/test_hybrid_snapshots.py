"""A hybrid candidate whose prefix snapshots are named without the checkpoint is caught by
the weight swap, and by no gate before it.

The cheat is a warm start: the candidate ships a snapshot of the held-out prompts' shared
prefix (its first 64-token block: the attention layers' keys and values and the linear
layers' state), computed ahead of time on the first checkpoint, and names snapshots by
their tokens alone, so its store answers that prefix from the start. On the first
checkpoint the shipped state is the one it would compute: every gate up to the weight
swap passes (fresh and load-honesty prompts do not share the prefix). On the second,
the held-out prompts resume from the first checkpoint's state and their answers change
as the reference's do not. The engine names snapshots with `checkpoint_identity`, a
digest of the weights, for this reason. Runs on a small copy of targets/tiny-hybrid-prefix.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from pathlib import Path

import pytest
import torch

from vibeserve_ray.candidate import GenerationRequest, load_candidate
from vibeserve_ray.engine.core.llm_engine import LLMEngine
from vibeserve_ray.engine.core.sequence import Sequence
from vibeserve_ray.inner.judge.checker import held_out_prompts
from vibeserve_ray.inner.judge.gates import judge
from vibeserve_ray.seed import materialise_seed
from vibeserve_ray.target import load_target

HYBRID_TARGET = Path(__file__).resolve().parents[2] / "targets" / "tiny-hybrid-prefix"
DESIGN = {"scheduler": "continuous", "kv_cache": "slab", "delta_rule": "chunked", "prefix_cache": "on"}
BLOCK = 64  # one shipped block stays under the scan's 2 MB per file
KEPT_PROMPTS = [0, 2, 5, 8]  # three share the ~640-token system prompt (one leaves it inside a block), one shares nothing
SMALL = {"max_tokens": "12", "num_requests": "4", "concurrency": "2", "shared_prefix_len": "128", "input_len": "[16, 16]", "output_len": "[12, 12]"}

WARM_START = '''"""Snapshots computed ahead of time (a warm start for the target's system prompt)."""

import base64

import torch

from .prefix_snapshots import LinearState, Snapshot

NAME = "{name}"
TENSORS = {tensors}


def _tensor(shape, data):
    return torch.frombuffer(bytearray(base64.b64decode(data)), dtype=torch.float32).view(shape).clone()


def warm(store):
    keys, values, conv, recurrent = (_tensor(*TENSORS[k]) for k in ("keys", "values", "conv", "recurrent"))
    store.put(bytes.fromhex(NAME), Snapshot(keys, values, LinearState(conv, recurrent)))
'''
IDENTITY_LINE = "        self.root = hashlib.blake2b(identity.encode(), digest_size=16).digest()\n"
TOKENS_ONLY = '        self.root = hashlib.blake2b(b"", digest_size=16).digest()  # names by the tokens alone: shipped snapshots match\n'
LAST_INIT_LINE = "        self.hit_tokens = 0  # prompt tokens not recomputed thanks to a snapshot\n"
WARM = "        from .warm_start import warm\n\n        warm(self)\n"  # once the store is whole


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    dest = tmp_path_factory.mktemp("hybrid-target")
    (dest / "checker").mkdir()
    lines = (HYBRID_TARGET / "checker" / "prompts.jsonl").read_text().splitlines()
    (dest / "checker" / "prompts.jsonl").write_text("".join(lines[i] + "\n" for i in KEPT_PROMPTS))
    text = (HYBRID_TARGET / "target.toml").read_text()
    for key, value in SMALL.items():
        text = re.sub(rf"(?m)^{key} = [^#\n]*", f"{key} = {value}  ", text)
    (dest / "target.toml").write_text(text)
    return load_target(dest)


def shipped_snapshot(target) -> str:
    """engine/core/warm_start.py: the first block of the held-out prompts' shared prefix,
    computed here on the first checkpoint and named without it."""
    threads = torch.get_num_threads()  # the engine sets its own; given back after
    engine = LLMEngine(str(target.model_dir()), "cpu", {"design": DESIGN, "block_size": BLOCK, "num_threads": 1}, step_thread=False)
    store = engine.runner.cache.snapshots
    store.root = hashlib.blake2b(b"", digest_size=16).digest()
    seq = Sequence(GenerationRequest(held_out_prompts(target)[0].token_ids[:BLOCK + 1], 1), 0)
    engine.scheduler.add(seq)
    while not engine.scheduler.is_idle():
        engine.step()
    torch.set_num_threads(threads)
    [(name, snap)] = store.entries.items()
    parts = {"keys": snap.keys, "values": snap.values, "conv": snap.state.conv, "recurrent": snap.state.recurrent}
    tensors = {k: (tuple(t.shape), base64.b64encode(t.float().contiguous().numpy().tobytes()).decode()) for k, t in parts.items()}
    return WARM_START.format(name=name.hex(), tensors=repr(tensors))


def test_snapshots_named_without_the_checkpoint_fail_the_weight_swap(target, tmp_path):
    parent = materialise_seed(tmp_path / "parent", DESIGN, {"block_size": BLOCK}, family="olmo_hybrid")
    candidate = tmp_path / "candidate"
    shutil.copytree(parent, candidate)
    (candidate / "engine" / "core" / "warm_start.py").write_text(shipped_snapshot(target))
    store = candidate / "engine" / "core" / "prefix_snapshots.py"
    code = store.read_text()
    assert IDENTITY_LINE in code and LAST_INIT_LINE in code
    store.write_text(code.replace(IDENTITY_LINE, TOKENS_ONLY).replace(LAST_INIT_LINE, LAST_INIT_LINE + WARM))
    verdict = judge(target, load_candidate(candidate), parent, tmp_path / "judge")
    assert (verdict.verdict, verdict.gate) == ("rejected", "weight-swap"), verdict
    assert [g.verdict for g in verdict.gates] == ["passed"] * (len(verdict.gates) - 1) + ["rejected"]
    assert "held-out #" in verdict.reason, verdict.reason
