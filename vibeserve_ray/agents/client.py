"""Where the API key comes from, and the `anthropic` client made from it.

Any endpoint that speaks the Messages API works: `ANTHROPIC_BASE_URL` names it (a
self-hosted model included). The key is taken out of the driver's environment before
Ray starts, because a local Ray's raylet and every worker inherit the driver's
environment; only the gateway actor ever holds it. On a cluster the key can instead
be a file on the head node (`ANTHROPIC_API_KEY_FILE`, e.g. a mounted Kubernetes
Secret), which only the gateway reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import anthropic

from vibeserve_ray.errors import BadInput

KEY_ENV = "ANTHROPIC_API_KEY"
KEY_FILE_ENV = "ANTHROPIC_API_KEY_FILE"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
DEFAULT_BASE_URL = "https://api.anthropic.com"


@dataclass(frozen=True)
class ApiKey:
    """The key itself (never printed) or the path of a file holding it."""

    value: str | None = field(default=None, repr=False)
    file: str | None = None

    def __bool__(self) -> bool:
        return bool(self.value or self.file)

    def read(self) -> str:
        """The key; BadInput when the file is missing or empty."""
        if self.value:
            return self.value
        if not self.file:
            raise BadInput(KEY_ENV, "key", "not set")
        try:
            key = Path(self.file).read_text().strip()
        except OSError as exc:
            raise BadInput(self.file, KEY_FILE_ENV, f"cannot read the key file: {exc.strerror}") from None
        if not key:
            raise BadInput(self.file, KEY_FILE_ENV, "the key file is empty")
        return key


def take_key_from_env(environ: dict | None = None) -> ApiKey:
    """Removes the key from the environment (call before Ray starts) and returns it."""
    env = os.environ if environ is None else environ
    value = env.pop(KEY_ENV, None) or None
    path = env.get(KEY_FILE_ENV) or None
    return ApiKey(value=value, file=None if value else path)


def api_base_url(environ: dict | None = None) -> str:
    env = os.environ if environ is None else environ
    return (env.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def make_client(key: str, url: str, max_retries: int, timeout_s: float) -> anthropic.Anthropic:
    """The real client. Its own retry machinery handles 408/409/429/5xx (529 included),
    honours `retry-after`, and never retries 400/401/403/404; `max_retries` is raised for
    long searches. An explicit timeout also lifts the client's refusal of large
    non-streaming `max_tokens`."""
    return anthropic.Anthropic(api_key=key, base_url=url, max_retries=max_retries, timeout=timeout_s)
