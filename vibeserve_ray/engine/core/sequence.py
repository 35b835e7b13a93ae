"""A request's mutable state while the engine serves it (nano-vllm's Sequence), and the
chunk of it one step feeds the model (what the scheduler hands the model runner)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum, auto
from itertools import count
from typing import Any

from vibeserve_ray.candidate import GenerationRequest

_ids = count()


class Status(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(eq=False)
class Sequence:
    """Owned by the step thread once admitted; the event loop only sets `aborted`.

    `outlet` is the request's stream: the event loop it lives on and the asyncio.Queue
    that receives TokenOut, an exception or the end marker (llm_engine delivers).
    """

    request: GenerationRequest
    seed: int  # sampling seed (the request's, or drawn for it when it gave none)
    outlet: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None  # None: a probe nobody listens to
    seq_id: int = field(default_factory=lambda: next(_ids))
    token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    aborted: bool = False
    num_cached: int = 0  # tokens whose keys/values are in the cache (the rest are fed next)
    # where the cache keeps them (which field depends on the kv_cache design)
    kv: tuple[list, list] | None = None  # dynamic: per-layer key and value tensors
    slot: int | None = None  # slab
    block_table: list[int] = field(default_factory=list)  # paged
    num_hashed_blocks: int = 0  # paged with prefix caching: leading blocks already named
    state: Any = None  # a hybrid's linear-layer state, when it is the request's own (state_cache.RequestStates)
    arrived: float = 0.0  # monotonic time it was queued (static batching waits on it)
    spec_cursor: int = 0  # prompt lookup: where in the lookup text the last draft ended
    grammar: Any = None  # an xgrammar GrammarMatcher when the request has a response_format

    def __post_init__(self) -> None:
        self.token_ids = list(self.request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    @property
    def pending(self) -> list[int]:
        """Tokens not yet in the cache: the unprocessed prompt, or the last sampled token."""
        return self.token_ids[self.num_cached:]

    @property
    def grammar_done(self) -> bool:
        """The grammar has accepted a stop token: the document is complete."""
        return self.grammar is not None and self.grammar.is_terminated()

    @property
    def is_done(self) -> bool:
        """max_tokens reached, the last token is a stop token (which is emitted), or the grammar is done."""
        if self.num_completion_tokens >= self.request.max_tokens or self.grammar_done:
            return True
        return self.num_completion_tokens > 0 and self.token_ids[-1] in self.request.stop_token_ids


@dataclass
class Chunk:
    """Tokens of one sequence fed in this step: part of its prompt (chunked prefill), the
    whole prompt, or its last token, plus any draft tokens to verify."""

    seq: Sequence
    start: int  # position of the first token fed (= seq.num_cached)
    token_ids: list[int]  # real tokens (prompt or last sampled)
    draft: list[int] = field(default_factory=list)  # speculative tokens after them

    @property
    def length(self) -> int:
        return len(self.token_ids) + len(self.draft)

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def num_logits(self) -> int:
        """Rows that need logits: none for a partial prefill; the last real token and each draft otherwise."""
        return 1 + len(self.draft) if self.start + len(self.token_ids) == len(self.seq.token_ids) else 0

    @property
    def scored(self) -> range | None:
        """Positions of the prompt tokens whose logprobs this chunk gives, when the request
        asks for them (`prompt_logprobs`): the row of each prompt token fed scores the
        prompt token after it."""
        if not self.seq.request.prompt_logprobs:
            return None
        return range(self.start + 1, min(self.start + len(self.token_ids), self.seq.num_prompt_tokens - 1) + 1)
