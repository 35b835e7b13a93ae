"""The seed serving engine: a Llama decoder, a KV cache, a scheduler and a step loop.

Copied verbatim into each candidate as the top-level package `engine/`, so everything
here imports relatively; the only outside names are torch, safetensors, xgrammar (JSON
mode), the stdlib and `vibeserve_ray.candidate` (the contract).
"""

from .llm_engine import LLMEngine, create_engine

__all__ = ["LLMEngine", "create_engine"]
