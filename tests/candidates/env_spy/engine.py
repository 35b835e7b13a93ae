"""Writes the environment it sees to env.json in its working directory, then yields one token."""

import json
import os
from pathlib import Path

from vibeserve_ray.candidate import TokenOut


class SpyEngine:
    async def generate(self, request):
        yield TokenOut(request.prompt_token_ids[0])

    async def close(self):
        pass


def create_engine(model_dir, device, knobs):
    Path("env.json").write_text(json.dumps(dict(os.environ)))
    return SpyEngine()
