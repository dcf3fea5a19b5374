"""Dense attention in plain jnp with exactly the kernels' semantics.

Materialises the ``[batch, heads, seq_q, seq_kv]`` logits: O(N^2) memory. Used by
the tests (as the float32 ground truth, and in the input dtype to measure what
that dtype's rounding alone costs) and by the dense model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flashjax import masks
from flashjax.checks import Plan


def attend(plan: Plan, q, k, v, q_segment_ids=None, kv_segment_ids=None, *,
           upcast: bool = True):
  """Dense attention.

  Args:
    plan: the resolved call (:func:`flashjax.checks.make_plan`).
    q: ``[batch, seq_q, num_q_heads, head_dim]``.
    k, v: ``[batch, seq_kv, num_kv_heads, head_dim]``, same dtype as ``q``.
    q_segment_ids, kv_segment_ids: int32 ``[batch, seq_q]`` / ``[batch, seq_kv]``.
    upcast: compute in float32 with exact matmuls (the ground truth). If
      False, the two matmuls run in the input dtype and P is rounded to it, as
      a low-precision kernel would.

  Returns:
    ``(O, L)``: O ``[batch, seq_q, num_q_heads, head_dim]`` in q's dtype, and the
    natural-log logsumexp L ``[batch, num_q_heads, seq_q]`` in float32
    (``-inf`` for a row that sees no key; its O row is 0).
  """
  dtype = jnp.float32 if upcast else q.dtype
  # The ground truth multiplies exactly (no TF32 on GPUs).
  precision = jax.lax.Precision.HIGHEST if upcast else None
  q, k, v = (x.astype(dtype) for x in (q, k, v))
  # K, V: one copy per query head of the group, [batch, seq_kv, num_q_heads, d]
  k = jnp.repeat(k, plan.group, axis=2)
  v = jnp.repeat(v, plan.group, axis=2)
  # S = scale · Q Kᵀ  [batch, heads, seq_q, seq_kv]
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                 precision=precision).astype(jnp.float32) * plan.scale
  if plan.softcap is not None:
    s = plan.softcap * jnp.tanh(s / plan.softcap)
  visible = masks.dense(plan.mask, q_segment_ids, kv_segment_ids)[:, None]
  s = jnp.where(visible, s, -jnp.inf)
  # m = rowmax(S) (0 for a row with no visible key), P = exp(S - m), l = rowsum(P)
  m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(s - m)
  l = jnp.sum(p, axis=-1, keepdims=True)
  l_safe = jnp.where(l > 0, l, 1.0)
  # O = P V / l
  o = jnp.einsum("bhqk,bkhd->bqhd", (p / l_safe).astype(dtype), v,
                 precision=precision)
  # L = m + log l
  lse = jnp.where(l > 0, m + jnp.log(l_safe), -jnp.inf)[..., 0]
  return o.astype(plan.dtype), lse
