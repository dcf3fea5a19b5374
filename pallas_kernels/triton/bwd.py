"""Flash-attention backward kernels (FlashAttention 2, Algorithm 2), Triton-lowered.

P is recomputed tile by tile from L; nothing of size seq_q × seq_kv is stored.
Two kernels, each parallel over the tiles it writes:

* dQ, one program per query tile, looping over K/V tiles; it also sums each
  row of G = P ∘ (dP − D), whose excess over dL is what D = rowsum(dO ∘ O)
  from the rounded O misses of rowsum(P ∘ dP), and takes that excess out of
  dQ at the end (dQ −= excess ⊗ P'K, P' = P times a softcap's factor: an
  extra product a step);
* then dK/dV, one program per K/V tile of a K/V head, looping over the query
  tiles of every query head in its GQA group (the group sum happens in
  registers), with D + excess: a D consistent with the backward's own P.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from flashjax.checks import Plan
from flashjax.masks import MaskSpec
from pallas_kernels import common
from pallas_kernels.triton import specs


def _ds_tile(q, k, v, do, lse2, delta, *, mask: MaskSpec, scale, softcap,
             q_start, kv_start, block_q, block_kv, q_seg, kv_seg, needs_mask,
             precision):
  """Recompute P for one (query tile, K/V tile) pair and form dS.

  Returns ``(P, dS, G, P')``, float32 ``[block_q, block_kv]``; dS is w.r.t.
  the raw ``scale · QKᵀ`` divided by scale (the caller multiplies by scale
  once); G = P ∘ (dP - D), dS before a softcap's factor (dS itself without
  one), whose rows sum to dL in exact arithmetic; P' = P with that factor,
  what a change of D moves dS by: dS(D + e) = dS(D) - e P'.
  """
  # S = scale · Q Kᵀ (log2 units), invisible entries -inf
  s, t = common.scores(q, k, scale=scale, softcap=softcap, precision=precision)
  if needs_mask:
    s = common.mask_tile(s, mask, q_start, kv_start, block_q, block_kv, q_seg,
                         kv_seg)
  # P = exp2(S - L)
  p = jnp.exp2(s - lse2[:, None])
  # dP = dO Vᵀ
  dp = common.dot(do, v, trans_b=True, precision=precision)
  # dS = P ∘ (dP - D)   (∘ (1 - t²) under soft-capping)
  g = p * (dp - delta[:, None])
  return p, common.softcap_grad(g, t), g, common.softcap_grad(p, t)


def dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref,
                kv_seg_ref, dk_ref, dv_ref, *, mask: MaskSpec, scale: float,
                softcap: float | None, group: int, block_q: int, block_kv: int,
                num_q_blocks: int, needs_mask: bool, precision):
  # q_ref/do_ref: [seq_q, group, d]; lse_ref/delta_ref: [group, seq_q];
  # k_ref/v_ref/dk_ref/dv_ref: [block_kv, d] of this program's K/V tile.
  kv_start = pl.program_id(0) * block_kv
  k = k_ref[...]
  v = v_ref[...]
  kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]
  lo, hi = mask.q_block_range(kv_start, block_kv, block_q, num_q_blocks)

  def head_body(g, carry):
    def body(i, carry):
      dk, dv = carry
      q_start = pl.multiple_of(i * block_q, block_q)
      rows = pl.ds(q_start, block_q)
      q = q_ref[rows, g, :]
      do = do_ref[rows, g, :]
      q_seg = None if q_seg_ref is None else q_seg_ref[rows]
      p, ds, _, _ = _ds_tile(
          q, k, v, do, common.lse_log2_for_recompute(lse_ref[g, rows]),
          delta_ref[g, rows], mask=mask, scale=scale, softcap=softcap,
          q_start=q_start, kv_start=kv_start, block_q=block_q,
          block_kv=block_kv, q_seg=q_seg, kv_seg=kv_seg,
          needs_mask=needs_mask, precision=precision)
      # dV += Pᵀ dO
      dv = dv + common.dot(p.astype(do.dtype), do, trans_a=True,
                       precision=precision)
      # dK += dSᵀ Q
      dk = dk + common.dot(ds.astype(q.dtype), q, trans_a=True,
                       precision=precision)
      return dk, dv
    # Only query tiles with a row that sees this K/V tile are visited.
    return lax.fori_loop(lo, hi, body, carry)

  head_dim = k.shape[-1]
  zeros = jnp.zeros((block_kv, head_dim), jnp.float32)
  dk, dv = lax.fori_loop(0, group, head_body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref,
              kv_seg_ref, dlse_ref, dq_ref, excess_ref, *,
              mask: MaskSpec, scale: float, softcap: float | None,
              block_q: int, block_kv: int, num_kv_blocks: int,
              needs_mask: bool, precision):
  # q_ref/do_ref/dq_ref: [block_q, d]; lse_ref/delta_ref/dlse_ref/excess_ref:
  # [block_q] (dL 0 where a row sees no key); k_ref/v_ref: [seq_kv, d] of
  # the K/V head this query head reads.
  q_start = pl.program_id(0) * block_q
  q = q_ref[...]
  do = do_ref[...]
  lse2 = common.lse_log2_for_recompute(lse_ref[...])
  delta = delta_ref[...]
  q_seg = None if q_seg_ref is None else q_seg_ref[...]

  def body(j, carry):
    dq, pk, g_sum = carry
    kv_start = pl.multiple_of(j * block_kv, block_kv)
    cols = pl.ds(kv_start, block_kv)
    k = k_ref[cols, :]
    _, ds, g, p_factor = _ds_tile(
        q, k, v_ref[cols, :], do, lse2, delta, mask=mask, scale=scale,
        softcap=softcap, q_start=q_start, kv_start=kv_start, block_q=block_q,
        block_kv=block_kv, q_seg=q_seg,
        kv_seg=None if kv_seg_ref is None else kv_seg_ref[cols],
        needs_mask=needs_mask, precision=precision)
    # dQ += dS K; P'K; rowsum(G)
    return (dq + common.dot(ds.astype(k.dtype), k, precision=precision),
            pk + common.dot(p_factor.astype(k.dtype), k, precision=precision),
            g_sum + jnp.sum(g, axis=1))

  lo, hi = mask.kv_block_range(q_start, block_q, block_kv, num_kv_blocks)
  zeros = jnp.zeros((block_q, q.shape[-1]), jnp.float32)
  dq, pk, g_sum = lax.fori_loop(lo, hi, body,
                                (zeros, zeros, jnp.zeros((block_q,),
                                                         jnp.float32)))
  # rowsum(G) is dL exactly (0 where a row sees no key: P = 0), but D from
  # the rounded O misses rowsum(P ∘ dP) by a little, the excess; the dK/dV
  # kernel takes D + excess, consistent with its P, and dQ with D + excess
  # is dQ - excess ⊗ P'K
  excess = g_sum - dlse_ref[...]
  excess_ref[...] = excess
  dq = dq - excess[:, None] * pk
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def backward(plan: Plan, q, k, v, q_segment_ids, kv_segment_ids, do, lse,
             delta, dlse):
  """dQ, dK, dV from the forward's residuals, on padded inputs.

  Args:
    q, do: ``[batch, seq_q_padded, num_q_heads, head_dim_padded]``.
    k, v: ``[batch, seq_kv_padded, num_kv_heads, head_dim_padded]``.
    q_segment_ids / kv_segment_ids: int32 ``[batch, seq_*_padded]`` or None.
    lse: L (natural log, float32) ``[batch, num_q_heads, seq_q_padded]``.
    delta: D = rowsum(dO ∘ O) - dL, float32, same shape as lse.
    dlse: dL, float32, same shape (zeros unless L is differentiated).

  Returns:
    ``(dQ, dK, dV)`` shaped and typed like q, k, v.
  """
  batch, seq_q, num_heads, head_dim = q.shape
  _, seq_kv, num_kv_heads, _ = k.shape
  blocks = plan.bwd_blocks
  block_q, block_kv = blocks.block_q, blocks.block_kv
  group = plan.group
  statics = dict(mask=plan.mask, scale=plan.scale, softcap=plan.softcap,
                 block_q=block_q, block_kv=block_kv,
                 needs_mask=not plan.mask.is_trivial(seq_kv),
                 precision=specs.precision(plan))
  has_seg = q_segment_ids is not None
  call = functools.partial(pl.pallas_call,
                           compiler_params=specs.compiler_params(blocks),
                           interpret=plan.interpret)

  # dQ first: grid (query tile, batch, query head). It also gives each row's
  # excess (dq_kernel), so that its dQ and the dK/dV kernel's D match the
  # backward's own P.
  dlse = common.consistent_delta_inputs(lse, dlse)
  q_tile = pl.BlockSpec((None, block_q, None, head_dim),
                        lambda i, b, h: (b, i, h, 0))
  kv_all = pl.BlockSpec((None, seq_kv, None, head_dim),
                        lambda i, b, h: (b, 0, h // group, 0))
  row_tile = pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))
  dq, excess = call(
      functools.partial(dq_kernel, num_kv_blocks=seq_kv // block_kv,
                        **statics),
      grid=(seq_q // block_q, batch, num_heads),
      in_specs=[q_tile, kv_all, kv_all, q_tile, row_tile, row_tile,
                pl.BlockSpec((None, block_q), lambda i, b, h: (b, i))
                if has_seg else None,
                pl.BlockSpec((None, seq_kv), lambda i, b, h: (b, 0))
                if has_seg else None,
                row_tile],
      out_specs=[q_tile, row_tile],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct(lse.shape, jnp.float32)],
      name="flashjax_bwd_dq",
  )(q, k, v, do, lse, delta, q_segment_ids, kv_segment_ids, dlse)

  # dK, dV: grid (K/V tile, batch, K/V head); a program reads its whole
  # group. D + excess = rowsum(P ∘ dP) - dL of the backward's own P.
  kv_tile = pl.BlockSpec((None, block_kv, None, head_dim),
                         lambda j, b, h: (b, j, h, 0))
  q_group = pl.BlockSpec((None, seq_q, group, head_dim),
                         lambda j, b, h: (b, 0, h, 0))
  row_group = pl.BlockSpec((None, group, seq_q), lambda j, b, h: (b, h, 0))
  dk, dv = call(
      functools.partial(dkdv_kernel, group=group,
                        num_q_blocks=seq_q // block_q, **statics),
      grid=(seq_kv // block_kv, batch, num_kv_heads),
      in_specs=[q_group, kv_tile, kv_tile, q_group, row_group, row_group,
                pl.BlockSpec((None, seq_q), lambda j, b, h: (b, 0))
                if has_seg else None,
                pl.BlockSpec((None, block_kv), lambda j, b, h: (b, j))
                if has_seg else None],
      out_specs=[kv_tile, kv_tile],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      name="flashjax_bwd_dkdv",
  )(q, k, v, do, lse, delta + excess, q_segment_ids, kv_segment_ids)
  return dq, dk, dv
