"""The seed serving engine, copied verbatim into each candidate as its package `engine/`.

Laid out by layers, as nano-vllm is:

- `core/`: what every model family shares: the front and its step loop (`llm_engine`,
  or `engine_process` for worker processes), whose step schedules (`scheduler`), runs
  one explicit batch through the model (`model_runner`, `batch`) and postprocesses; the
  KV cache (`kv_cache`, `block_pool`), a hybrid's linear-layer state beside it
  (`state_cache`, `prefix_snapshots`), `sampler`, `speculation`, `grammar`.
- `layers/`: torch building blocks: attention backends, rotary, linear kinds, norms,
  the SwiGLU MLP, the gated delta rule.
- `models/`: one module per family (`llama.py`, `olmo_hybrid.py`: its config and
  model), its design space beside it (`llama.toml`, `olmo_hybrid.toml`: the options,
  defaults and rules the engine reads), the table that picks the family by the
  checkpoint's `model_type`, and the loader.
- `config.py` (what the candidate asked for, resolved against the space by
  `space.py`) and `entrypoint.py` (`create_engine`).

Everything imports relatively; the only outside names are torch, safetensors,
xgrammar (JSON mode), the stdlib and `vibeserve_ray.candidate` (the contract).
"""

from .entrypoint import create_engine

__all__ = ["create_engine"]
