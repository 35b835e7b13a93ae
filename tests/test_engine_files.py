"""No engine component reads or writes anything outside its candidate directory and the
model directory (and the scratch space the runner gives a candidate process).

A candidate with every component on serves a few requests in a fresh interpreter whose
audit hook records each file Python opens; library code (the interpreter's own
prefixes) and the kernel's pseudo-files are the only other places allowed, and only
for reading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from vibeserve_ray.design_space import default_space_path, load_space, materialise
from vibeserve_ray.sandbox.env import candidate_env, scratch_env

ALL_ON = {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on", "compile": "on", "speculation": "prompt_lookup"}

SCRIPT = r"""
import asyncio, json, os, sys
opened, recording = [], [True]
def hook(event, args):
    if recording[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode = args[1] if isinstance(args[1], str) else ("w" if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR) else "r")
        opened.append([os.path.abspath(os.fsdecode(args[0])), mode or "r"])
candidate, model, out = sys.argv[1:4]
sys.path.insert(0, candidate)
sys.addaudithook(hook)
from vibeserve_ray.candidate import GenerationRequest, import_entrypoint, load_candidate
spec = load_candidate(candidate)
engine = import_entrypoint(spec)(model, "cpu", dict(spec.knobs))
async def main():
    async def one(prompt, prediction=None):
        return [t.token_id async for t in engine.generate(GenerationRequest(prompt, 12, prediction=prediction))]
    shared = list(range(5, 45))
    await asyncio.gather(one(shared + [50, 51]), one(shared + [60]), one([7, 8, 9, 7, 8], prediction=[9, 7, 8, 9]))
    await engine.close()
asyncio.run(main())
recording[0] = False
json.dump(opened, open(out, "w"))
"""


def test_an_engine_with_every_component_on_touches_only_its_own_files(tmp_path, tiny_models):
    model_dir = tiny_models[0].resolve()
    candidate = materialise(load_space(default_space_path()), tmp_path / "cand", ALL_ON, {}, source="files").resolve()
    sandbox = (tmp_path / "sandbox").resolve()
    out = tmp_path / "opened.json"
    env = candidate_env(scratch_env(sandbox))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(candidate), str(model_dir), str(out)], cwd=sandbox, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    opened = [(Path(p), mode) for p, mode in json.loads(out.read_text())]
    assert any(p.is_relative_to(model_dir) for p, _ in opened), "the audit saw no model file: it saw nothing"

    writable = (candidate, sandbox, Path("/dev/null"))
    readable = (*writable, model_dir, *{Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sysconfig.get_paths()["purelib"],
                                                                     sysconfig.get_paths()["stdlib"])},
                Path("/proc"), Path("/sys"), Path("/dev"))
    root = Path(__file__).resolve().parent.parent
    repo = (root / "vibeserve_ray", *root.glob("*.egg-info"))  # the contract module and its metadata, from a source checkout
    bad_writes = [str(p) for p, mode in opened if set(mode) & set("wax+") and not any(p.is_relative_to(d) for d in writable)]
    bad_reads = [str(p) for p, _ in opened if not any(p.is_relative_to(d) for d in (*readable, *repo))]
    assert not bad_writes, f"written outside the candidate and its sandbox: {sorted(set(bad_writes))[:10]}"
    assert not bad_reads, f"read outside the candidate, the model and the libraries: {sorted(set(bad_reads))[:10]}"
    assert os.listdir(sandbox / "torch-cache"), "compile on, yet torch.compile wrote nothing where the runner points it"
