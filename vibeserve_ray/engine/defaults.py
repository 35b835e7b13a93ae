"""What this engine implements: every option of each design choice, and the knobs'
defaults. The seed's `candidate.toml` takes the first option of each choice.

`design` names one choice per component (what the code does, for people and the
search to read); `knobs` are the values `create_engine` reads and a tuner may change.
The search's view of the same space (ranges, constraints, docs) is
`search_spaces/llama.toml`; a test holds the two equal.
"""

DESIGN_OPTIONS: dict[str, tuple[str, ...]] = {
    "scheduler": ("serial", "static", "continuous"),
    "kv_cache": ("dynamic", "slab", "paged"),
    "prefix_cache": ("off", "on"),  # on requires kv_cache = paged
    "attention": ("sdpa", "eager", "flashinfer"),  # flashinfer: cuda only
    "compile": ("off", "on"),
    "dtype": ("float32", "bfloat16"),
    "speculation": ("off", "prompt_lookup", "jump_forward"),
    "step_loop": ("thread", "process"),  # process: engine_process.py, apart from the HTTP front
    "linear": ("torch", "onednn"),  # onednn: onednn_linear.py, weights packed once (cpu only)
}

DEFAULT_DESIGN: dict[str, str] = {name: options[0] for name, options in DESIGN_OPTIONS.items()}

DEFAULT_KNOBS: dict[str, int | float | str | bool] = {
    "num_threads": 0,  # torch intra-op threads; 0 leaves torch's default
    "max_num_seqs": 16,
    "max_num_batched_tokens": 512,
    "batch_wait_ms": 5.0,
    "max_model_len": 2048,
    "block_size": 16,
    "num_kv_blocks": 1024,
    "spec_k": 4,
    "spec_ngram": 2,
    "engine_workers": 1,  # step_loop = process: engine processes, each with its own share of the requests
}
