"""The seed's design choices and knobs, written into its `candidate.toml`.

`design` names one choice per component (what the code does, for people and the
search to read); `knobs` are the values `create_engine` reads and a tuner may change.
"""

DEFAULT_DESIGN: dict[str, str] = {
    "scheduler": "serial",  # one request at a time, FIFO (scheduler.py)
    "kv_cache": "dynamic",  # per-request tensors grown by concatenation (kv_cache.py)
    "attention": "torch",  # F.scaled_dot_product_attention (attention.py)
}

DEFAULT_KNOBS: dict[str, int | float | str | bool] = {
    "num_threads": 0,  # torch intra-op threads; 0 leaves torch's default
}
