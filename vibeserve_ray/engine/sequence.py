"""A request's mutable state while the engine serves it (nano-vllm's Sequence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto
from itertools import count
from typing import Callable

from vibeserve_ray.candidate import GenerationRequest

from .kv_cache import DynamicKVCache

_ids = count()


class Status(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(eq=False)
class Sequence:
    """Owned by the step thread once admitted; the event loop only sets `aborted`.

    `emit` hands a TokenOut, an exception or FINISHED to the request's stream and is
    safe to call from the step thread.
    """

    request: GenerationRequest
    seed: int  # sampling seed (the request's, or drawn for it when it gave none)
    emit: Callable[[object], None]
    seq_id: int = field(default_factory=lambda: next(_ids))
    token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    aborted: bool = False
    kv_cache: DynamicKVCache | None = None

    def __post_init__(self) -> None:
        self.token_ids = list(self.request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    @property
    def is_done(self) -> bool:
        """max_tokens reached, or the last token is a stop token (which is emitted)."""
        if self.num_completion_tokens >= self.request.max_tokens:
            return True
        return self.num_completion_tokens > 0 and self.token_ids[-1] in self.request.stop_token_ids
