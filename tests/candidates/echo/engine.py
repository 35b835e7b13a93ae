"""A trivial candidate for front and runner tests: echoes the prompt's tokens back."""

import asyncio

from vibeserve_ray.candidate import GenerationRequest, TokenOut


class EchoEngine:
    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    async def generate(self, request: GenerationRequest):
        ids = request.prompt_token_ids
        for i in range(request.max_tokens):
            await asyncio.sleep(self.delay_s)
            token = ids[i % len(ids)]
            yield TokenOut(token, -0.5 if request.want_logprobs else None)
            if token in request.stop_token_ids:
                return

    async def close(self):
        pass


def create_engine(model_dir: str, device: str, knobs: dict):
    return EchoEngine(float(knobs.get("delay_s", 0.0)))
