"""`vibeserve target calibrate`: the target's model under controls, through the judge's statistics.

A tolerance contract is only as good as the gap between what an honest engine at the
contract's precision does to the model and what the mildest cheat does. This runs both
on the target's own model and held-out prompts, each control generating greedily with its
own KV cache and the target's reference scoring its tokens, exactly as the judge scores a
candidate's (`score.reference_scores`, `stats.greedy_stats`):

- honest controls, each at its precision: the model in float32 decoded in a batch (the
  reference's arithmetic in another order), in float16 and in bfloat16, and its weights
  quantised to int8 with one scale per output channel;
- cheats: each single decoder layer dropped, the argmax taken over the first half of the
  vocabulary only (a "reduced precision" that is a truncated vocabulary), and the other
  checkpoint (the weight-swap one) answering instead.

It proposes thresholds between the noise floor (the worst honest control the tier admits)
and the mildest cheat, and says the model is too flat to judge when they are less than
JUDGEABLE_RATIO apart in mean deficit, or when gross errors do not split them (see
docs/accuracy.md for why 10 and not the 100 first proposed).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from vibeserve_ray.accuracy.contract import AccuracySpec
from vibeserve_ray.accuracy.score import Response, reference_scores
from vibeserve_ray.accuracy.stats import GreedyStats, greedy_failure, greedy_stats, json_safe
from vibeserve_ray.engine.space import admits
from vibeserve_ray.inner.judge.checker import held_out_prompts
from vibeserve_ray.target import Target

JUDGEABLE_RATIO = 10.0  # mildest cheat / noise floor, in mean deficit: a threshold between them keeps >= 3x each side


@dataclass(frozen=True)
class Control:
    name: str
    precision: str | None  # an honest control's precision; None for a cheat
    build: Callable  # (float32 model, the other checkpoint's loader) -> (model, picker)


@dataclass(frozen=True)
class Row:
    name: str
    precision: str | None
    must: str  # "pass" (an honest control the tier admits), "fail" (a cheat), "" (honest, below the tier)
    stats: GreedyStats
    failure: str  # '' when the statistics pass the proposed thresholds
    seconds: float


@dataclass(frozen=True)
class Calibration:
    target: str
    tier: str
    prompts: int
    max_tokens: int
    rows: list[Row]
    floor: float  # the worst mean deficit among controls that must pass
    mildest: float  # the smallest among cheats
    ratio: float
    proposed: dict[str, float]
    judgeable: bool
    why: str  # when not judgeable

    def to_dict(self) -> dict:
        rows = [{k: v for k, v in asdict(r).items() if k != "stats"} | {"stats": json_safe(r.stats)} for r in self.rows]
        return {k: v for k, v in asdict(self).items() if k != "rows"} | {"rows": rows}


def controls(num_layers: int) -> list[Control]:
    out = [Control("float32, batched", "float32", lambda base, other: (base, _argmax)),
           Control("float16", "float16", lambda base, other: (_cast(base, "float16"), _argmax)),
           Control("bfloat16", "bfloat16", lambda base, other: (_cast(base, "bfloat16"), _argmax)),
           Control("int8 weights, per channel", "int8", lambda base, other: (_int8_weights(base), _argmax))]
    out += [Control(f"layer {i} dropped", None, lambda base, other, i=i: (_drop_layer(base, i), _argmax)) for i in range(num_layers)]
    out += [Control("argmax over half the vocabulary", None, lambda base, other: (base, _half_vocab)),
            Control("the other checkpoint", None, lambda base, other: (other(), _argmax))]
    return out


def calibrate(target: Target, tier: str, max_tokens: int, say: Callable[[str], None] = print) -> Calibration:
    """Runs every control on the held-out prompts and proposes thresholds for `tier`."""
    # torch and transformers load for calibration only
    import torch

    prompts = [p.token_ids for p in held_out_prompts(target)]
    ref = target.spec.reference
    base = _load(target.model_dir())
    other = _Lazy(lambda: _load(target.model_dir(swap=True)))
    spec = target.accuracy if target.accuracy.tolerant and target.accuracy.tier == tier else AccuracySpec(mode="tolerance", tier=tier)
    measured: list[tuple[Control, GreedyStats, float]] = []
    for control in controls(base.config.num_hidden_layers):
        t0 = time.perf_counter()
        model, pick = control.build(base, other)
        with torch.inference_mode():
            outs = _generate(model, prompts, max_tokens, pick)
        responses = [Response(f"prompt #{i}", p, tokens, max_tokens, logprobs=lps) for i, (p, (tokens, lps)) in enumerate(zip(prompts, outs))]
        stats = greedy_stats(list(zip(responses, reference_scores(ref.kind, target.model_dir(), ref.dtype, responses))), spec)
        measured.append((control, stats, time.perf_counter() - t0))
        say(f"calibrate: {control.name}: mean deficit {stats.mean_deficit:.3g}, {stats.gross} gross of {stats.positions}, "
            f"worst response {stats.worst_response_deficit:.3g} ({time.perf_counter() - t0:.0f} s)")
    return _propose(target, tier, spec, len(prompts), max_tokens, measured)


def _propose(target: Target, tier: str, spec: AccuracySpec, prompts: int, max_tokens: int,
             measured: list[tuple[Control, GreedyStats, float]]) -> Calibration:
    must = {c.name: ("fail" if c.precision is None else "pass" if admits(tier, c.precision) else "") for c, _, _ in measured}
    honest = [s for c, s, _ in measured if must[c.name] == "pass"]
    cheats = [s for c, s, _ in measured if must[c.name] == "fail"]
    floor = max(s.mean_deficit for s in honest)
    mildest = min(s.mean_deficit for s in cheats)
    ratio = mildest / floor if floor > 0 else math.inf
    worst_honest_response = max(s.worst_response_deficit for s in honest)
    honest_lp = [s.logprob_error for s in honest if s.logprob_error is not None]
    proposed = {
        "mean_deficit": _round(math.sqrt(max(floor, 1e-6) * mildest)),
        # a response's mean rides on few tokens: above every honest one by the same factor, at least the default
        "response_mean_deficit": _round(max(spec.response_mean_deficit, math.sqrt(max(worst_honest_response, 1e-6) * min(s.worst_response_deficit for s in cheats)))),
        "gross_deficit": _round(max(spec.gross_deficit, 2 * max(s.max_deficit for s in honest))),
    }
    if honest_lp:  # a check of what a server reports, not of its tokens: a cheat may report its own logprobs truly
        proposed["logprob_error"] = _round(2 * max(honest_lp))
    gross_split = all(s.gross <= s.gross_allowed for s in honest) and all(s.gross > s.gross_allowed for s in cheats)
    why = []
    if ratio < JUDGEABLE_RATIO:
        why.append(f"the mildest cheat's mean deficit is only {ratio:.1f}x the noise floor's (needs {JUDGEABLE_RATIO:g}x)")
    if not gross_split:
        why.append("gross errors do not separate the honest controls from every cheat")
    judged = spec.model_copy(update=proposed)
    rows = [Row(c.name, c.precision, must[c.name], s, greedy_failure(s, judged), round(sec, 1)) for c, s, sec in measured]
    return Calibration(target.name, tier, prompts, max_tokens, rows, floor, mildest, ratio, proposed, not why, "; ".join(why))


def table(cal: Calibration) -> str:
    """The controls as a Markdown table, then the proposal and the verdict."""
    header = ("| control | must | mean deficit | max deficit | gross (> 1 nat) | worst response | top-1 agree, decisive | logprob error | exact | "
              "with the proposed thresholds |")
    lines = [f"{cal.target}: {cal.prompts} held-out prompts x {cal.max_tokens} greedy tokens, each control teacher-forced by the reference",
             "", header, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in cal.rows:
        s = r.stats
        lp = "-" if s.logprob_error is None else f"{s.logprob_error:.3g}"
        verdict = "pass" if not r.failure else "FAIL: " + r.failure.split(";")[0]
        lines.append(f"| {r.name} | {r.must or 'below tier'} | {s.mean_deficit:.3g} | {s.max_deficit:.3g} | {s.gross}/{s.positions} | "
                     f"{s.worst_response_deficit:.3g} | {s.agree_decisive:.3f} | {lp} | {s.exact}/{s.responses} | {verdict} |")
    lines += ["", f"noise floor {cal.floor:.3g} (the worst control the {cal.tier} tier admits), mildest cheat {cal.mildest:.3g}: {cal.ratio:.0f}x apart",
              "", "proposed for target.toml:", "", "[accuracy]", 'mode = "tolerance"', f'tier = "{cal.tier}"']
    lines += [f"{k} = {v:g}" for k, v in cal.proposed.items()]
    lines += ["", "JUDGEABLE: every honest control passes and every cheat fails with these thresholds" if cal.judgeable and
              all(bool(r.failure) == (r.must == "fail") for r in cal.rows if r.must) else
              f"TOO FLAT TO JUDGE: {cal.why or 'some control lands on the wrong side of the proposed thresholds'}"]
    return "\n".join(lines)


def _round(x: float) -> float:
    """One significant figure (thresholds are orders of magnitude, not measurements)."""
    return float(f"{x:.1g}")


class _Lazy:
    """The other checkpoint, loaded only when a control asks for it."""

    def __init__(self, load: Callable):
        self.load, self.value = load, None

    def __call__(self):
        if self.value is None:
            self.value = self.load()
        return self.value


def _load(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def _cast(base, dtype: str):
    import torch

    return copy.deepcopy(base).to(getattr(torch, dtype))


def _int8_weights(base):
    """Every linear weight rounded to int8 with one absmax scale per output channel (the math stays float32)."""
    import torch

    model = copy.deepcopy(base)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight.detach()
            scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            module.weight = torch.nn.Parameter(torch.round(w / scale).clamp(-127, 127) * scale, requires_grad=False)
    return model


def _drop_layer(base, index: int):
    """The model with decoder layer `index`'s output discarded (it still runs, so its cache stays consistent)."""
    import torch

    class PassThrough(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, hidden_states, *args, **kwargs):
            self.layer(hidden_states, *args, **kwargs)
            return hidden_states

    model = copy.deepcopy(base)  # a shallow copy of a module shares its submodule table: the drop would reach the base
    model.model.layers[index] = PassThrough(model.model.layers[index])
    return model


def _argmax(logits) -> int:
    return int(logits.argmax())


def _half_vocab(logits) -> int:
    return int(logits[: logits.shape[-1] // 2].argmax())


def _generate(model, prompts: list[list[int]], max_tokens: int, pick: Callable) -> list[tuple[list[int], list[float]]]:
    """Greedy decoding of every prompt at once with the model's own KV cache (left-padded,
    with an attention mask and explicit positions): (tokens, the model's logprob of each)."""
    import torch

    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    tokens: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]
    for step in range(max_tokens):
        rows = torch.log_softmax(out.logits[:, -1].float(), -1)
        for b in range(len(prompts)):
            tokens[b].append(pick(rows[b]))
            logprobs[b].append(float(rows[b, tokens[b][-1]]))
        if step + 1 == max_tokens:
            break
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
        pos = pos[:, -1:] + 1
        cache = {"cache": out["cache"]} if "cache" in out else {"past_key_values": out.past_key_values}
        out = model(input_ids=torch.tensor([[t[-1]] for t in tokens]), attention_mask=mask, position_ids=pos, use_cache=True, **cache)
    return list(zip(tokens, logprobs))
