"""Echoes the prompt, and is SIGKILLed on its 12th request: an engine process killed mid-benchmark."""

import os
import signal

from vibeserve_ray.candidate import TokenOut


class DoomedEngine:
    def __init__(self):
        self.requests = 0

    async def generate(self, request):
        self.requests += 1
        if self.requests == 12:
            os.kill(os.getpid(), signal.SIGKILL)
        for i in range(request.max_tokens):
            yield TokenOut(request.prompt_token_ids[i % len(request.prompt_token_ids)])

    async def close(self):
        pass


def create_engine(model_dir, device, knobs):
    return DoomedEngine()
