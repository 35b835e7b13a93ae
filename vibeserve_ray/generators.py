"""The checkpoints a target may name by recipe (`[model] generator`), made in code from a seed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from vibeserve_ray.tinyhybrid import make_tiny_hybrid
from vibeserve_ray.tinymodel import make_tiny

GENERATORS: dict[str, Callable[..., Path]] = {  # name -> make(seed, dest=None, quiet=False): the checkpoint's directory
    "tiny-llama": make_tiny,  # Llama-3-shaped, 22M parameters
    "tiny-olmo-hybrid": make_tiny_hybrid,  # Olmo-Hybrid-shaped (Gated DeltaNet + attention, 3:1), 32.6M parameters
}


def make_checkpoint(generator: str, seed: int, dest: Path | None = None) -> Path:
    """The generator's checkpoint for `seed` (in the cache unless `dest`), made on first use."""
    return GENERATORS[generator](seed, dest)
