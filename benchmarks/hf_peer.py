"""transformers' batched `generate` as a peer: serving with the model's own library, no server.

The target's requests go in order, `concurrency` at a time, as one left-padded batch each
(static batching: a batch runs until its longest request is done), greedy, end-of-text
ignored as the load generator asks of servers; each request's output is cut at its own
max_tokens. Its speed is output tokens (each request's max_tokens) per second of the whole
run; it has no streaming, so no latency figures. Its outputs are judged like any server's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vibeserve_ray.bench import Request, RequestResult


class HFGenerate:
    def __init__(self, model_dir: Path, dtype: str = "float32", threads: int = 2):
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).eval()
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.threads = threads

    def run(self, requests: Sequence[Request], batch: int) -> tuple[list[RequestResult], float]:
        """Every request's output, and the seconds the run took."""
        torch.set_num_threads(self.threads)
        results: list[RequestResult] = []
        t0 = time.perf_counter()
        for at in range(0, len(requests), batch):
            group = requests[at: at + batch]
            width = max(r.prompt_len for r in group)
            ids = torch.tensor([[self.pad] * (width - r.prompt_len) + r.prompt_token_ids for r in group])
            mask = torch.tensor([[0] * (width - r.prompt_len) + [1] * r.prompt_len for r in group])
            longest = max(r.max_tokens for r in group)
            start = time.perf_counter() - t0
            with torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=longest, do_sample=False,
                                          eos_token_id=None, pad_token_id=self.pad)  # None: EOS is a token like any other
            took = time.perf_counter() - t0 - start
            for r, row in zip(group, out[:, width:].tolist()):
                got = row[: r.max_tokens]
                results.append(RequestResult(True, "", start, took, (), took, r.prompt_len, len(got), tuple(got)))
        return results, time.perf_counter() - t0
