"""Gated DeltaNet's math in plain PyTorch: the short causal convolution with its state,
the gated delta rule in chunked (prefill) and recurrent (decode) form, and the gated
output norm. No state handling here: where a request's state lives is the cache's
(core/state_cache.py).

The recurrence, per value head, on a state S [key_dim, value_dim] (float32 always, as
transformers and FLA keep it: the state integrates thousands of updates):

    S <- exp(g_t) * S                        decay (g_t <= 0)
    S <- S + k_t (beta_t (v_t - S^T k_t))^T  delta rule: write only what S mispredicts
    o_t = S^T q_t                            read

with q, k L2-normalised and q scaled by key_dim^-1/2. The chunked form computes the same
thing C tokens at a time with matmuls (the UT transform of the DeltaNet paper), so a
prompt costs T/C sequential steps instead of T; the recurrent form is one token per
sequence, batched across sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHUNK = 64  # transformers' and FLA's chunk


@dataclass(frozen=True)
class DeltaHeads:
    """How a layer's convolved q|k|v row splits into heads."""

    num_k_heads: int
    head_k_dim: int
    num_v_heads: int
    head_v_dim: int

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """y [n, 2 * key_dim + value_dim] -> q, k [n, Hk, dk], v [n, Hv, dv] (views)."""
        key_dim = self.num_k_heads * self.head_k_dim
        q, k, v = y.split((key_dim, key_dim, self.num_v_heads * self.head_v_dim), dim=-1)
        n = y.shape[0]
        return (q.view(n, self.num_k_heads, self.head_k_dim), k.view(n, self.num_k_heads, self.head_k_dim),
                v.view(n, self.num_v_heads, self.head_v_dim))


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """FLA's normalisation (eps inside the root), which transformers copies."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _prepare(q: torch.Tensor, k: torch.Tensor, num_v_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32, L2-normalised, q scaled, and each key head repeated over its group of
    value heads (consecutive, as transformers and vLLM map them)."""
    if q.shape[-2] != num_v_heads:
        q = q.repeat_interleave(num_v_heads // q.shape[-2], dim=-2)
        k = k.repeat_interleave(num_v_heads // k.shape[-2], dim=-2)
    q, k = l2norm(q.float()), l2norm(k.float())
    return q * q.shape[-1] ** -0.5, k


def chunked_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                       state: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's tokens: q, k [T, Hk, dk]; v [T, Hv, dv]; g, beta [T, Hv]; state
    [Hv, dk, dv] (the state before these tokens). Returns out [T, Hv, dv] (float32) and
    the state after them. Bit-identical to transformers' torch_chunk_gated_delta_rule."""
    T, num_heads = v.shape[0], v.shape[1]
    q, k = _prepare(q, k, num_heads)
    pad = -T % chunk  # zero padding is inert: beta = 0 writes nothing, g = 0 keeps S

    def split(x: torch.Tensor) -> torch.Tensor:  # [T, H, ...] -> [H, chunks, C, ...]
        x = x.float().transpose(0, 1)
        x = F.pad(x, (0, 0, 0, pad)) if x.dim() == 3 else F.pad(x, (0, pad))
        return x.reshape(num_heads, -1, chunk, *x.shape[2:])

    q, k, v, g, beta = (split(x) for x in (q, k, v, g, beta))
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    cum = g.cumsum(-1)  # log of the decay from the chunk's start to each position
    # decay[i, j] = exp(cum_i - cum_j) for j <= i: what position j's write has decayed by at i
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    # UT transform: within a chunk the delta rule's writes depend on each other through a
    # unit lower-triangular system; solving it once per chunk turns the T sequential
    # rank-one updates into matmuls.
    system = (k_beta @ k.transpose(-1, -2)) * decay
    values = torch.linalg.solve_triangular(system, v_beta, upper=False, unitriangular=True)
    reads = torch.linalg.solve_triangular(system, k_beta * cum.exp()[..., None], upper=False, unitriangular=True)
    intra = (q @ k.transpose(-1, -2)) * decay
    q_decayed = q * cum.exp()[..., None]
    k_to_end = k * (cum[..., -1:] - cum).exp()[..., None]
    chunk_decay = cum[..., -1].exp()[..., None, None]
    out = torch.empty_like(v)
    S = state.float()
    for i in range(q.shape[1]):  # sequential over chunks only
        v_new = values[:, i] - reads[:, i] @ S  # what the state already predicts is not written again
        out[:, i] = q_decayed[:, i] @ S + intra[:, i] @ v_new
        S = S * chunk_decay[:, i] + k_to_end[:, i].transpose(-1, -2) @ v_new
    return out.reshape(num_heads, -1, v.shape[-1])[:, :T].transpose(0, 1), S


def recurrent_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                         state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token for each of B sequences: q, k [B, Hk, dk]; v [B, Hv, dv]; g, beta [B, Hv];
    state [B, Hv, dk, dv]. Returns out [B, Hv, dv] (float32) and the new state."""
    q, k = _prepare(q, k, v.shape[1])
    S = state * g.float().exp()[..., None, None]
    delta = (v.float() - (k.unsqueeze(-2) @ S).squeeze(-2)) * beta.float()[..., None]  # what S mispredicts of v
    S = torch.baddbmm(S.flatten(0, 1), k.flatten(0, 1).unsqueeze(-1), delta.flatten(0, 1).unsqueeze(-2)).view_as(S)
    return (q.unsqueeze(-2) @ S).squeeze(-2), S


def recurrent_delta_rule_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                          state: torch.Tensor) -> torch.Tensor:
    """`recurrent_delta_rule` writing the new state into `state` itself (a contiguous view
    of the cache: no gather before, no scatter after). A row with g = 0 and beta = 0
    keeps its state bit for bit (times 1, plus 0), so idle rows may ride along."""
    q, k = _prepare(q, k, v.shape[1])
    state.mul_(g.float().exp()[..., None, None])
    delta = (v.float() - (k.unsqueeze(-2) @ state).squeeze(-2)) * beta.float()[..., None]
    state.view(-1, *state.shape[-2:]).baddbmm_(k.flatten(0, 1).unsqueeze(-1), delta.flatten(0, 1).unsqueeze(-2))
    return (q.unsqueeze(-2) @ state).squeeze(-2)


def recurrent_delta_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                         state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrent form over one sequence's T tokens (chunked_delta_rule's signature):
    T sequential steps, the plainest prefill."""
    outs, S = [], state[None].float()
    for t in range(v.shape[0]):
        o, S = recurrent_delta_rule(q[t:t + 1], k[t:t + 1], v[t:t + 1], g[t:t + 1], beta[t:t + 1], S)
        outs.append(o)
    return torch.cat(outs), S[0]


RULES = {"chunked": chunked_delta_rule, "recurrent": recurrent_delta_scan}  # design.delta_rule: a prompt's form


def conv_prefill(x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution + SiLU over one sequence's tokens x [T, C], continuing
    from conv_state [C, K-1] (the K-1 inputs before them; zeros for a new sequence).
    Returns y [T, C] and the window [C, K-1+T]: its K-1 columns ending at any position are
    the state there (the last K-1: the new state)."""
    window = torch.cat((conv_state, x.t().to(conv_state.dtype)), dim=1)
    y = F.conv1d(window[None], weight[:, None, :], groups=weight.shape[0])[0]
    return F.silu(y).t().to(x.dtype), window


def conv_step(x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token for each of B sequences: x [B, C], conv_state [B, C, K-1] -> y [B, C], new state."""
    window = torch.cat((conv_state, x[..., None].to(conv_state.dtype)), dim=-1)
    return F.silu((window * weight).sum(-1)).to(x.dtype), window[..., 1:]


def gated_rms_norm(o: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise each head's output, then gate it with SiLU (norm before gate, as FLA's
    FusedRMSNormGated): o, gate [..., dv]."""
    dtype = gate.dtype
    o = o.float()
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * o.to(dtype) * F.silu(gate.float())).to(dtype)
