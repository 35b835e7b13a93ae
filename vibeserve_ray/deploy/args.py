"""What one replica serves (the `args` of a Serve config), and the names configs carry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vibeserve_ray.errors import BadInput
from vibeserve_ray.generators import make_checkpoint
from vibeserve_ray.runner import Limits

DEPLOYMENT_NAME = "vibeserve"
IMPORT_PATH = "vibeserve_ray.deploy.replica:app_builder"  # what Serve config files (`serve deploy`, RayService) name
# Names the environment variable that holds the API key: configs carry the name, never the key.
API_KEY_ENV_VAR = "VIBESERVE_API_KEY_ENV"


class ServeArgs(BaseModel):
    """What to serve (the `args` of a Serve config): portable values, no secrets.

    `candidate` is a directory (relative ones resolve in the replica's working_dir, where
    the config's runtime_env puts the candidate tree) or `seed`. The model is an HF
    directory on every node, or a generator recipe made on the node on first use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str = "."
    served_name: str
    device: Literal["cpu", "cuda"] = "cpu"
    model_path: str | None = None
    tokenizer_path: str | None = None
    generator: Literal["tiny-llama", "tiny-olmo-hybrid"] | None = None  # generators.GENERATORS
    generator_seed: int = 0
    memory_mb: int = Limits.memory_mb  # the engine process's limit (the target's [limits])
    startup_timeout_s: float = Limits.startup_timeout_s
    sandbox: Literal["required", "best-effort"] = "required"  # the target's [limits] sandbox
    # Streamed tokens are relayed in batches at most this often (0: every chunk at once).
    stream_interval_ms: Annotated[float, Field(ge=0, le=1000)] = 50.0

    def model_dirs(self) -> tuple[Path, Path]:
        if self.generator is not None:
            model = make_checkpoint(self.generator, self.generator_seed)
        elif self.model_path:
            model = Path(self.model_path)
        else:
            raise BadInput("serve config", "args.model_path", "give model_path or generator")
        return model, Path(self.tokenizer_path) if self.tokenizer_path else model


def parse_args(args: dict | ServeArgs) -> ServeArgs:
    if isinstance(args, ServeArgs):
        return args
    try:
        return ServeArgs.model_validate(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BadInput("serve config", "args." + ".".join(str(p) for p in err["loc"]), err["msg"]) from None
