"""A Llama-family GGUF file as an HF-format directory in the cache, converted once.

Engines, the reference and vLLM read HF directories (config.json, safetensors, a
tokenizer); users have GGUF files. transformers dequantises a GGUF (Q4_1, Q8_0, F16,
...) to float32 on load but refuses to `save_pretrained` the result ("quantized with
gguf ... not serializable"), so the state dict is written with safetensors directly,
without the tied `lm_head.weight` (safetensors refuses tensors sharing storage; the
engine's loader ties them back from `tie_word_embeddings`). What the GGUF load leaves
in the config is mended (see `_config`), and so is the pre-tokenizer where transformers
does not know the GGUF's (PRE_TOKENIZER_FIXES).

The directory is keyed by the file's content (sha256): a moved or renamed copy reuses
it, a changed file gets its own. It is written beside its final place and renamed in,
with `vibeserve_source.json` written last, so a crash or two converters at once never
leave half a directory where a reader looks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vibeserve_ray.tinymodel import cache_dir

Progress = Callable[[str], None]
FORMAT_VERSION = 1  # bump when the written files change, so older conversions are redone
SOURCE_FILE = "vibeserve_source.json"  # written last: its presence means the directory is whole
DIGEST_CHARS = 16


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def file_sha256(path: Path) -> str:
    """sha256 of the file, computed once per process while its size and mtime stay (0.16 s for 94 MiB)."""
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def converted_dir(digest: str) -> Path:
    return cache_dir() / "models" / f"gguf-{digest[:DIGEST_CHARS]}"


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path | None = None, progress: Progress = to_stderr, verify: bool = True) -> Path:
    """The HF directory holding `gguf_path`'s model (default: in the cache, keyed by its
    content), converting on first use (~20-60 s for a 135M-parameter model on 2 cores)."""
    gguf_path = Path(gguf_path).resolve()
    digest = file_sha256(gguf_path)
    out = Path(out_dir) if out_dir else converted_dir(digest)
    if _is_conversion_of(out, digest):
        return out
    t0 = time.monotonic()
    progress(f"model: converting {gguf_path.name} ({gguf_path.stat().st_size / 2**20:.0f} MiB, sha256 {digest[:DIGEST_CHARS]}) "
             f"into {out} (once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        took = _write_hf(gguf_path, tmp, progress, verify)
        source = {"sha256": digest, "source": str(gguf_path), "format_version": FORMAT_VERSION, **took}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        publish(tmp, out, lambda: _is_conversion_of(out, digest))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"model: converted in {time.monotonic() - t0:.1f} s")
    return out


def publish(tmp: Path, out: Path, done: Callable[[], bool]) -> None:
    """Renames the finished `tmp` to `out`, replacing an older or unfinished `out`; a
    concurrent writer that got there first is as good (`done` says whether it did)."""
    tmp.chmod(0o755)  # mkdtemp makes it 0700 and safetensors its file 0600; a cache is read by other users' processes
    for f in tmp.iterdir():
        f.chmod(0o644)
    if out.exists() and not done():
        shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:
        if not done():
            raise


def _is_conversion_of(out: Path, digest: str) -> bool:
    try:
        meta = json.loads((out / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("sha256") == digest and meta.get("format_version") == FORMAT_VERSION


def _write_hf(gguf_path: Path, out: Path, progress: Progress, verify: bool) -> dict[str, float]:
    """Writes the directory's files into `out`; returns the seconds each step took."""
    # torch, transformers and safetensors load only for a conversion, not to find one in the cache
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    took: dict[str, float] = {}
    t = time.monotonic()
    progress("model: [1/4] loading and dequantising the GGUF (transformers)")
    src, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    _fix_pre_tokenizer(tokenizer, gguf_path, progress)
    took["load_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    progress("model: [2/4] writing model.safetensors")
    tied = bool(model.config.tie_word_embeddings)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    took["weights_s"] = round(time.monotonic() - t, 1)

    progress("model: [3/4] writing config, generation config and tokenizer")
    (out / "config.json").write_text(json.dumps(_config(model), indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))  # transformers 5 writes the chat template to chat_template.jinja
    if not tokenizer.chat_template:
        progress("model: warning: the GGUF carries no chat template (tokenizer.chat_template); /v1/chat/completions will refuse")

    if verify:
        t = time.monotonic()
        progress("model: [4/4] reloading the directory and comparing logits")
        took["max_abs_logit_diff"] = same_logits(model, out)
        took["verify_s"] = round(time.monotonic() - t, 1)
    return took


def _config(model) -> dict:
    """config.json as the GGUF load leaves it, mended for readers of the directory."""
    config = model.config.to_dict()
    # quant_method "gguf" makes vLLM refuse the directory; the names point at the GGUF's path
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]  # the GGUF load leaves None; vLLM picks its model class by it
    config["dtype"] = "float32"
    return config


def _smollm_pre_tokenizer():
    # tokenizers comes with transformers; only a conversion needs it
    from tokenizers import pre_tokenizers

    # SmolLM's own tokenizer.json: every digit on its own, then GPT-2's byte-level split.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])


# `tokenizer.ggml.pre` names transformers 5.25 does not map: it falls back to GPT-2's split,
# which differs from the model's own where whitespace runs precede digits ("  12" became
# [216, 216, 33, 34] where llama.cpp and SmolLM2's own tokenizer give [256, 33, 34]; 4 of 26
# texts differed, 0 with the fix).
PRE_TOKENIZER_FIXES = {"smollm": _smollm_pre_tokenizer}


def _fix_pre_tokenizer(tokenizer, gguf_path: Path, progress: Progress) -> None:
    # gguf (a dependency for this) reads the GGUF's metadata; only a conversion needs it
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    pre = field.contents() if field is not None else None
    if pre in PRE_TOKENIZER_FIXES:
        progress(f"model: pre-tokenizer {pre!r}: digits split one by one, as the model's own tokenizer does")
        tokenizer.backend_tokenizer.pre_tokenizer = PRE_TOKENIZER_FIXES[pre]()


def same_logits(model, out: Path, seq_len: int = 32) -> float:
    """Reloads `out` and runs both models on the same random tokens; raises unless the logits are identical."""
    # only a conversion's check needs them
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = model(ids).logits, reloaded(ids).logits
    diff = float((a - b).abs().max())
    if diff != 0.0:
        raise RuntimeError(f"{out}: reloaded logits differ from the GGUF's by up to {diff:g}")
    return diff
