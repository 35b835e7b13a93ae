"""The engine: an asyncio front on a background step loop (nano-vllm's LLMEngine).

Forward passes run in one dedicated thread so they never block the event loop (the
HTTP front answers /health from it while generating). Requests cross to that thread
through an inbox; tokens come back through each request's asyncio.Queue via
`loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
from typing import Any, AsyncIterator

import torch

from vibeserve_ray.candidate import PROMPT_LOGPROBS, RESPONSE_FORMAT, TOP_LOGPROBS, GenerationRequest, RequestRefused, TokenOut

from ..config import EngineConfig, ModelConfig
from ..layers import int8_linear, onednn_linear
from ..layers.attention import make_attention
from ..models import load_family
from ..models.loader import checkpoint_identity, load_model
from .grammar import Grammars
from .kv_cache import make_kv_cache
from .model_runner import ModelRunner
from .scheduler import make_scheduler
from .sequence import Sequence, Status
from .state_cache import make_state_cache

FINISHED = object()  # end-of-stream marker put on a request's queue
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class LLMEngine:
    capabilities = frozenset({TOP_LOGPROBS, PROMPT_LOGPROBS, RESPONSE_FORMAT})

    def __init__(self, model_dir: str, device: str = "cpu", knobs: dict[str, Any] | None = None, step_thread: bool = True):
        """`step_thread=False` builds the model, cache and scheduler only: whoever holds the
        engine drives `step()` (an engine worker process, engine_process.py)."""
        family, self.config = load_family(model_dir)
        self.engine_config = ec = EngineConfig.resolve(knobs, family.space(), device)
        if ec.num_threads > 0:
            torch.set_num_threads(ec.num_threads)
        self.device = torch.device(device)
        dtype = DTYPES[ec.dtype]
        if ec.linear == "onednn" and not onednn_linear.available():
            raise ValueError("design.linear = 'onednn' needs a torch built with oneDNN")
        if dtype == torch.bfloat16 and self.device.type == "cpu" and not onednn_linear.bf16_supported():
            raise ValueError("design.dtype = 'bfloat16' needs a CPU with AVX512-BF16 or AMX (this one emulates it, slower than float32)")
        model = load_model(model_dir, self.device, dtype)
        if ec.linear == "onednn":
            onednn_linear.pack_linears(model)
        elif ec.linear == "int8":
            int8_linear.quantize_linears(model)
        if ec.compile == "on":  # the dense part of each layer; attention stays eager (its shapes vary per step)
            for layer in model.model.layers:
                layer.mlp = torch.compile(layer.mlp, dynamic=True)
        cache = make_kv_cache(self.config, ec, self.device, dtype)
        if self.config.linear_layers:  # a hybrid: its linear-attention layers keep a state beside the attention layers' KV
            cache = make_state_cache(cache, self.config, ec, self.device, dtype, checkpoint_identity(model_dir) if ec.prefix_cache else "")
        # oneDNN runs bfloat16 and packed linears on CPU, and builds kernels per row count:
        # steps run at padded counts, each built here, before the first request
        pad = self.device.type == "cpu" and (dtype == torch.bfloat16 or ec.linear == "onednn") and not self.config.linear_layers
        attention = make_attention(ec.attention, self.config.head_dim, self.config.num_attention_heads // self.config.num_key_value_heads, dtype)
        self.runner = ModelRunner(model, cache, attention, self.device, compile_graph=ec.compile == "graph", pad=pad)
        if pad:
            self.runner.warm_up(min(ec.max_num_batched_tokens if ec.scheduler == "continuous" else ec.max_model_len, ec.max_model_len, 512))
        self.scheduler = make_scheduler(cache, ec)
        self.grammars = Grammars(model_dir)
        self._inbox: queue.SimpleQueue[Sequence | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # makes "check closed, then enqueue" atomic with shutdown
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="engine-step", daemon=True)
        if step_thread:
            self._thread.start()

    # --- the event-loop side -------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenOut]:
        """Streams one TokenOut per generated token; closing the stream aborts the request."""
        self._validate(request)
        loop = asyncio.get_running_loop()
        stream: asyncio.Queue = asyncio.Queue()
        seed = request.seed if request.seed is not None else random.getrandbits(63)
        seq = Sequence(request, seed, outlet=(loop, stream))
        if request.response_format is not None:  # compiled off the step thread and the event loop
            seq.grammar = await asyncio.to_thread(self.grammar_for, request)
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is closed")
            self._inbox.put(seq)
        try:
            while (item := await stream.get()) is not FINISHED:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if seq.status is not Status.FINISHED:  # the client went away mid-stream
                seq.aborted = True
                self._inbox.put(None)  # wake the step thread so it frees the request

    async def close(self) -> None:
        with self._lock:
            self._closed = True
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)

    def grammar_for(self, request: GenerationRequest) -> Any:
        """A grammar matcher for the request's response_format (None without one);
        RequestRefused when xgrammar cannot build the grammar."""
        if request.response_format is None:
            return None
        try:
            return self.grammars.matcher(request.response_format)
        except ValueError as exc:
            raise RequestRefused(f"response_format.{exc}") from None

    def _validate(self, request: GenerationRequest) -> None:
        check_request(request, self.config)
        probe = Sequence(request, 0)
        if (why := self.scheduler.cache.never_fits(probe, self.scheduler.spec_slack)) is not None:
            raise RequestRefused(f"request cannot fit this engine's KV cache: {why}")

    # --- the step thread -----------------------------------------------------------

    def _loop(self) -> None:
        error: BaseException = RuntimeError("engine is closed")
        try:
            while not self._closed:
                self._admit(wait=self.scheduler.is_idle())
                if (out := self.step()) is not None:
                    _deliver_threadsafe(out)
                elif (hint := self.scheduler.wait_hint()) is not None:
                    self._admit(wait=True, timeout=hint)
        except BaseException as exc:  # a bug in the loop: fail every request, never hang one
            error = exc
        with self._lock:
            self._closed = True
        _deliver_threadsafe(self.fail_all(self._drain(), error))

    def fail_all(self, extra: list[Sequence], error: BaseException) -> list[tuple[Sequence, object]]:
        """Ends every request (queued, running, and `extra` not yet added) with `error`."""
        failed = self.scheduler.all_sequences() + extra
        for seq in failed:
            self.scheduler.finish(seq)
        return [(seq, error) for seq in failed]

    def step(self) -> list[tuple[Sequence, object]] | None:
        """Schedule, run, postprocess: what each request's stream receives, in order (None
        when there was nothing to run)."""
        chunks = self.scheduler.schedule()
        if not chunks:
            return None
        try:
            prompt, outs = self.runner.run(chunks)
        except Exception as exc:  # a failed forward fails the requests in it, not the engine
            for chunk in chunks:
                self.scheduler.finish(chunk.seq)
            return [(chunk.seq, exc) for chunk in chunks]
        finished = self.scheduler.postprocess(chunks, outs)
        # a request's scored prompt tokens go before its first new token (same step)
        return ([(chunk.seq, out) for chunk, tokens in zip(chunks, prompt) for out in tokens]
                + [(chunk.seq, out) for chunk, tokens in zip(chunks, outs) for out in tokens]
                + [(seq, FINISHED) for seq in finished])

    def _admit(self, wait: bool, timeout: float | None = None) -> None:
        """Moves new requests from the inbox to the scheduler; blocks only when idle
        (or for `timeout` while a batch is being gathered)."""
        try:
            item = self._inbox.get(block=wait, timeout=timeout)
            while True:
                if item is not None and (why := self.scheduler.add(item)) is not None:
                    item.status = Status.FINISHED
                    _deliver_threadsafe([(item, RequestRefused(why))])
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _drain(self) -> list[Sequence]:
        seqs = []
        while not self._inbox.empty():
            if (item := self._inbox.get_nowait()) is not None:
                seqs.append(item)
        return seqs


def check_request(request: GenerationRequest, config: ModelConfig) -> None:
    """What the model itself cannot take (the KV cache's own limits are the scheduler's)."""
    n, limit, vocab = len(request.prompt_token_ids), config.max_position_embeddings, config.vocab_size
    if n == 0:
        raise RequestRefused("prompt is empty")
    if n > limit:
        raise RequestRefused(f"prompt has {n} tokens, more than the model's {limit} positions")
    if request.max_tokens < 1:
        raise RequestRefused(f"max_tokens must be at least 1, got {request.max_tokens}")
    if not all(0 <= t < vocab for t in request.prompt_token_ids):
        raise RequestRefused(f"prompt has token ids outside [0, {vocab})")
    if not all(0 <= t < vocab for t in request.prediction or ()):  # drafts are fed to the model
        raise RequestRefused(f"prediction has token ids outside [0, {vocab})")
    if not 0 <= request.top_logprobs <= vocab:
        raise RequestRefused(f"top_logprobs must be in [0, {vocab}], got {request.top_logprobs}")


def _deliver_threadsafe(items: list[tuple[Sequence, object]]) -> None:
    """Hands items to their requests' streams from the step thread, waking each event
    loop once per call (one call per step), not once per token: every wake-up competes
    with the next forward pass for the cores."""
    batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
    for seq, item in items:
        if seq.outlet is not None:
            loop, stream = seq.outlet
            batches.setdefault(loop, []).append((stream, item))
    for loop, batch in batches.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # that event loop is closed: nobody is listening
            pass


def _put_all(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for stream, item in batch:
        stream.put_nowait(item)
