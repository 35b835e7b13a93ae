"""Prints the environment it sees (one `ENV {json}` line in its log), then yields one token."""

import json
import os

from vibeserve_ray.candidate import TokenOut


class SpyEngine:
    async def generate(self, request):
        yield TokenOut(request.prompt_token_ids[0])

    async def close(self):
        pass


def create_engine(model_dir, device, knobs):
    print("ENV " + json.dumps(dict(os.environ)), flush=True)
    return SpyEngine()
