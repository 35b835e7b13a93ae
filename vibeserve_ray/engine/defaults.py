"""The seed's design choices and knobs, written into its `candidate.toml`.

`design` names one choice per component (what the code does, for people and the
search to read); `knobs` are the values `create_engine` reads and a tuner may change.
"""

DEFAULT_DESIGN: dict[str, str] = {
    "scheduler": "serial",  # serial | static | continuous
    "kv_cache": "dynamic",  # dynamic | slab | paged
    "prefix_cache": "off",  # off | on (requires kv_cache = paged)
    "attention": "sdpa",  # sdpa | eager | flashinfer (cuda only)
    "compile": "off",  # off | on
    "dtype": "float32",  # float32 | bfloat16
    "speculation": "off",  # off | prompt_lookup
}

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
}
