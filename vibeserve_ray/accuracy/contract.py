"""`[accuracy]` in target.toml: exact outputs, or a statistical tolerance down to a precision.

    [accuracy]
    mode = "tolerance"        # or "exact" (the default): outputs equal to the reference's
    tier = "bfloat16"         # the lowest precision a design may compute in (tolerance only)
    mean_deficit = 0.02       # thresholds (tolerance only; defaults below, `vibeserve target calibrate` proposes them)
    script = "accuracy.py"    # the target's own check, run against the candidate's URL (either mode)

The defaults come from a study of reduced precision on this project's machines
(docs/accuracy.md): at the bfloat16 tier, float16 and bfloat16 engines pass them with a
margin on the tiny Llama and on SmolLM2-135M, and every dropped layer, decode-only layer
skip, other checkpoint, truncated vocabulary and per-tensor int8 quantisation fails them;
the int8 tier's (TIER_DEFAULTS) admit int8 weight-only engines as well.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from vibeserve_ray.engine.space import PRECISIONS

Positive = Annotated[float, Field(gt=0)]
Rate = Annotated[float, Field(ge=0, lt=1)]
THRESHOLDS = ("mean_deficit", "gross_deficit", "gross_rate", "response_mean_deficit", "logprob_error", "max_abs_z", "far_outside_rate")
TOLERANCE_ONLY = ("tier", *THRESHOLDS)
# Where a tier's defaults differ from the fields' (those of the float32 to bfloat16 tiers):
# int8 weight-only engines gave up 0.006-0.007 nats per token and reported logprobs 0.06-0.07
# off (bfloat16: 0.001-0.002 and 0.03-0.04); int8 with per-tensor dynamic activations 0.027-0.035
# and 0.13-0.14; the mildest cheats 0.1 (SmolLM2) to 0.8 (tiny).
TIER_DEFAULTS = {"int8": {"mean_deficit": 0.02, "logprob_error": 0.15}}


class AccuracySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mode: Literal["exact", "tolerance"] = "exact"
    tier: Literal[PRECISIONS] = "bfloat16"  # type: ignore[valid-type] - the design space's ladder
    script: str | None = None  # relative to the target directory; run as `python SCRIPT URL MODEL`
    script_timeout_s: Positive = 300.0
    # greedy: the deficit of a position is the reference's best logprob minus its logprob of
    # the token the server chose (0 where they agree), teacher-forced on the server's tokens
    mean_deficit: Positive = 0.01  # over every scored position, pooled
    gross_deficit: Positive = 1.0  # a "gross error": the reference prefers its own token by more than this (nats)
    gross_rate: Rate = 0.005  # gross errors allowed, as a share of the positions (never fewer than one)
    response_mean_deficit: Positive = 0.1  # every single response (a cheat on some requests only hides in the pool)
    logprob_error: Positive = 0.06  # mean |reported - reference| logprob of the chosen tokens, where the server reports them
    # seeded sampling: a score test of the reference's tempered logprobs of the sampled tokens
    max_abs_z: Positive = 4.0
    far_outside_rate: Rate = 0.005  # samples far outside the reference's top-p nucleus (never fewer than one allowed)

    @model_validator(mode="before")
    @classmethod
    def _tier_defaults(cls, data):
        if isinstance(data, dict) and data.get("mode") == "tolerance":
            return TIER_DEFAULTS.get(data.get("tier", "bfloat16"), {}) | data
        return data

    @field_validator(*TOLERANCE_ONLY)
    @classmethod
    def _tolerance_only(cls, value, info: ValidationInfo):
        if info.data.get("mode", "exact") == "exact":
            raise ValueError("only with mode = 'tolerance' (mode 'exact' compares outputs token for token)")
        return value

    @property
    def tolerant(self) -> bool:
        return self.mode == "tolerance"

    def lowest_precision(self, reference_dtype: str) -> str:
        """The lowest precision a design may compute in: the reference's own in exact mode
        (a float32 reference is matched only by float32 arithmetic), the tier otherwise."""
        return self.tier if self.tolerant else reference_dtype

    def describe(self, reference_dtype: str) -> str:
        """The contract in a few words, as a rejection names it."""
        if self.tolerant:
            return f'mode = "tolerance" down to {self.tier}'
        return f'mode = "exact": outputs equal to a {reference_dtype} reference'
