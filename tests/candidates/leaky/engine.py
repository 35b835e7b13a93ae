"""A candidate that keeps 2 MiB for every request it serves: the soak must catch it."""

import asyncio

from vibeserve_ray.candidate import GenerationRequest, TokenOut


class LeakyEngine:
    def __init__(self):
        self.kept = []

    async def generate(self, request: GenerationRequest):
        self.kept.append(bytearray(b"x" * (2 << 20)))  # written, so the pages are really resident
        ids = request.prompt_token_ids
        for i in range(request.max_tokens):
            await asyncio.sleep(0.002)
            yield TokenOut(ids[i % len(ids)], -0.5 if request.want_logprobs else None)

    async def close(self):
        pass


def create_engine(model_dir: str, device: str, knobs: dict):
    return LeakyEngine()
