"""Hangs in generate, blocking its event loop the way a runaway kernel would."""

import time


class HangEngine:
    async def generate(self, request):
        time.sleep(10_000)
        yield None

    async def close(self):
        pass


def create_engine(model_dir, device, knobs):
    return HangEngine()
