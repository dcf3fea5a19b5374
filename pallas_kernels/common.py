"""Tile math shared by every kernel (forward, dQ, dK/dV): pure array functions.

Internally logits live in log2 units, ``S2 = S · log2(e)``, so every exponential
is an ``exp2`` (one FMA + ``ex2`` on the GPU). The logsumexp L crosses the kernel
boundary in natural-log units. Notation: FlashAttention 2's Q, K, V, O, S, P, m,
l, L = m + log l, dO, D = rowsum(dO ∘ O).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from flashjax.masks import MaskSpec

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


def dot(a, b, *, trans_a: bool = False, trans_b: bool = False,
        precision=None):
  """2-D matmul with a float32 result: ``op(a) @ op(b)``, op = optional transpose."""
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, precision=precision,
                         preferred_element_type=jnp.float32)


def scores(q, k, *, scale: float, softcap: float | None, precision):
  """Logits of one tile in log2 units.

  q ``[block_q, d]``, k ``[block_kv, d]`` (input dtype) -> ``(S2, t)`` with S2
  float32 ``[block_q, block_kv]`` and ``t = tanh(scale·QKᵀ / softcap)`` (None
  without softcap), which the backward needs for the soft-cap derivative.
  """
  return logits(dot(q, k, trans_b=True, precision=precision), scale=scale,
                softcap=softcap)


def logits(qk, *, scale: float, softcap: float | None):
  """``(S2, t)`` of :func:`scores` from the raw ``Q Kᵀ`` tile (float32), for
  kernels that compute the product themselves (Mosaic GPU's wgmma)."""
  # S = scale · Q Kᵀ  (softcap: S = c · tanh(scale · Q Kᵀ / c))
  if softcap is None:
    return qk * (scale * LOG2E), None
  t = jnp.tanh(qk * (scale / softcap))
  return t * (softcap * LOG2E), t


def _folds(scale: float, softcap: float | None) -> bool:
  return softcap is None and scale > 0


def fwd_unit(scale: float, softcap: float | None, qk_descale=None):
  """The unit of the forward's logits x (:func:`fwd_logits`): S2 = x · unit.
  ``qk_descale``: FP8's q·k descale (a scalar, or per row ``[block_q]``),
  folded in with the scale, so it costs no multiply per entry."""
  if not _folds(scale, softcap):
    return 1.0
  unit = scale * LOG2E
  return unit if qk_descale is None else qk_descale * unit


def fwd_logits(qk, *, scale: float, softcap: float | None, qk_descale=None):
  """The forward's logits x of a raw ``Q Kᵀ`` tile (float32), S2 = x ·
  :func:`fwd_unit`. Without a soft cap (and with a positive scale) x is
  ``Q Kᵀ`` itself: :func:`online_softmax_step` folds the scale (and FP8's
  ``qk_descale``) into one FMA per entry, ``exp2(x · unit - m · unit)``,
  where scaling first costs a multiply and a subtract (FlashAttention 2's
  trick). Otherwise x = S2, of the descaled Q Kᵀ."""
  if _folds(scale, softcap):
    return qk
  if qk_descale is not None:
    qk = qk * (qk_descale if jnp.ndim(qk_descale) == 0 else
               lax.broadcast_in_dim(qk_descale, qk.shape, [0]))
  return logits(qk, scale=scale, softcap=softcap)[0]


def fp8_p_scale(fmt: str) -> float:
  """FP8 kernels round ``P · fp8_p_scale`` (P ≤ 1) to ``fmt`` for the P V
  product, using the format's whole range, and divide it out of O."""
  return float(jnp.finfo(fmt).max)


def fp8_pv_key_order(x, axis: int, inverse: bool = False):
  """``x`` with its keys (``axis``, a multiple of 16) in the order the FP8
  P V wgmma reads them when P comes straight from the Q Kᵀ accumulator
  (``inverse``: back from that order).

  In the float32 accumulator a thread holds, of each 16 columns, the pairs
  2q, 2q+1 and 8+2q, 9+2q (q = lane % 4); an 8-bit register operand has the
  thread hold columns 4q … 4q+3. Reading the former as the latter (no data
  moves) puts key 16t + 8h + 2q + e at position 16t + 4q + 2h + e, so V's
  keys are put in that order too, and P V is unchanged."""
  n = x.shape[axis]
  groups = (4, 2, 2) if inverse else (2, 4, 2)
  y = x.reshape(x.shape[:axis] + (n // 16, *groups) + x.shape[axis + 1:])
  return jnp.swapaxes(y, axis + 1, axis + 2).reshape(x.shape)


def fp8_v_key_major(v):
  """V ``[batch, seq_kv, kv_heads, d]`` (seq_kv a multiple of 16) as the
  Hopper FP8 forward reads it: ``[batch, kv_heads, d, seq_kv]``, K-major for
  the 8-bit P V wgmma, its keys in :func:`fp8_pv_key_order`."""
  return fp8_pv_key_order(jnp.transpose(v, (0, 2, 3, 1)), axis=3)


def mask_tile(s, spec: MaskSpec, q_start, kv_start, block_q: int,
              block_kv: int, q_seg=None, kv_seg=None):
  """Set the invisible entries of tile ``s [block_q, block_kv]`` to -inf."""
  q_idx = q_start + lax.broadcasted_iota(jnp.int32, (block_q,), 0)
  k_idx = kv_start + lax.broadcasted_iota(jnp.int32, (block_kv,), 0)
  return jnp.where(spec.predicate(q_idx, k_idx, q_seg, kv_seg), s, -jnp.inf)


def _scaled(m2, p_scale: float):
  """A row term m2 (log2 units) less log2(p_scale): exp2(x - it) is p_scale ·
  exp2(x - m2). Nothing is added for p_scale = 1 (16-bit kernels)."""
  return m2 if p_scale == 1.0 else m2 - math.log2(p_scale)


def online_softmax_step(s, m_prev, l_prev, unit: float = 1.0,
                        p_scale: float = 1.0):
  """One step of the online softmax over a tile of logits S2 = s · unit
  (log2 units; ``unit > 0``, :func:`fwd_unit`, or per row ``[block_q]``:
  the FP8 forward folds each row's q·k descale into it, so a descale costs
  no multiply per entry). ``p_scale``: P comes out
  multiplied by it (FP8's :func:`fp8_p_scale`) at no cost, in the FMA's row
  term; l sums the scaled P, so ``acc / l`` is unchanged and
  :func:`finalize` takes the scale out of L.

  s ``[block_q, block_kv]`` (-inf where masked), m_prev/l_prev ``[block_q]``;
  m is kept in s's units. Returns ``(P, m_new, l_new, alpha)`` where the
  caller rescales its O accumulator by ``alpha`` before adding ``P V``. A row
  that has seen no visible key keeps m = -inf, l = 0 and P = 0 (never NaN).
  """
  # m_new = max(m_prev, rowmax(S))
  m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
  m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  # P = p_scale · exp2(S - m_new) (one FMA and an exp2 per entry),
  # alpha = exp2(m_prev - m_new)
  entry_unit = unit if jnp.ndim(unit) == 0 else unit[:, None]
  p = jnp.exp2(s * entry_unit - _scaled(m_safe * unit, p_scale)[:, None])
  alpha = jnp.exp2((m_prev - m_safe) * unit)
  # l_new = alpha · l_prev + rowsum(P)
  l_new = alpha * l_prev + jnp.sum(p, axis=1)
  return p, m_new, l_new, alpha


def finalize(acc, m, l, unit: float = 1.0, p_scale: float = 1.0):
  """Deferred normalisation: ``O = acc / l`` and ``L = (m · unit + log2 l -
  log2 p_scale) · ln 2`` (m, l and p_scale as in :func:`online_softmax_step`).

  A fully masked row (l = 0) gives O = 0 and L = -inf.
  """
  empty = l == 0.0
  o = acc / jnp.where(empty, 1.0, l)[:, None]
  lse = jnp.where(empty, -jnp.inf, (_scaled(m * unit, p_scale)
                                    + jnp.log2(jnp.where(empty, 1.0, l))) * LN2)
  return o, lse


def rounding_residual(o, dtype):
  """``r = O - round(O)`` in ``dtype``, of float32 ``O``: what rounding O to
  ``dtype`` dropped (``O + r`` is O to about twice ``dtype``'s bits)."""
  return (o - o.astype(dtype).astype(jnp.float32)).astype(dtype)


def lse_log2_for_recompute(lse):
  """L (natural log) -> log2 units for ``P = exp2(S2 - L2)``; -inf rows -> +inf.

  With +inf, a fully masked row recomputes P = exp2(-inf - inf) = 0, not NaN.
  """
  return jnp.where(lse == -jnp.inf, jnp.inf, lse * LOG2E)


def recompute_unit(scale: float, softcap: float | None):
  """The backward's S unit u when L folds into S's accumulator (no softcap, a
  positive scale): the accumulator starts at ``-L2 / u`` and ``u · (start +
  Q Kᵀ) = S2 - L2``; None when it does not fold."""
  return scale * LOG2E if _folds(scale, softcap) else None


def consistent_delta_inputs(lse, dlse):
  """What a backward that makes D consistent with its own P (its dQ kernel
  first: excess = rowsum(G) - dL per row, dQ - excess ⊗ P'K, dK/dV with
  D + excess) reads besides the residuals: dL, 0 where a row sees no key
  (L = -inf: P = 0 there, so its excess and dQ stay 0), float32 ``[batch,
  heads, seq_q]``."""
  return jnp.where(jnp.isneginf(lse), 0.0, dlse)


def softcap_grad(ds, t):
  """dS w.r.t. the raw ``scale·QKᵀ``: ``dS ∘ (1 - t²)`` under soft-capping."""
  return ds if t is None else ds * (1.0 - t * t)
