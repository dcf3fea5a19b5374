"""Flash-attention forward kernel (FlashAttention 2, Algorithm 1), Triton-lowered."""

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


def fwd_kernel(q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, descale_ref, o_ref,
               lse_ref, *, mask: MaskSpec, scale: float, softcap: float | None,
               block_q: int, block_kv: int, num_q_blocks: int,
               num_kv_blocks: int, needs_mask: bool, reverse: bool, precision,
               fp8: str | None, fp8_qk: bool):
  # The grid runs over (query tile, batch, head); this loop runs over K/V tiles.
  # Causal grids go heaviest-tile-first (reverse, MaskSpec.heavy_last).
  i = pl.program_id(0)
  if reverse:
    i = num_q_blocks - 1 - i
  q_start = i * block_q
  q = q_ref[...]
  q_seg = None if q_seg_ref is None else q_seg_ref[...]
  # FP8: this head's descales (q, k, v; Q and K 16-bit unless fp8_qk); P comes
  # out of the softmax scaled by the format's largest value (l sums the scaled
  # P, so the scale cancels in acc / l) and is rounded to FP8.
  qk_descale = (descale_ref[0] * descale_ref[1] if fp8 is not None and fp8_qk
                else None)
  p_scale = 1.0 if fp8 is None else common.fp8_p_scale(fp8)
  # S2 = x · unit (FP8: the q·k descale folded in)
  unit = common.fwd_unit(scale, softcap, qk_descale)

  def body(j, carry):
    acc, m, l = carry
    kv_start = pl.multiple_of(j * block_kv, block_kv)
    k = k_ref[pl.ds(kv_start, block_kv), :]
    v = v_ref[pl.ds(kv_start, block_kv), :]
    # S = scale · Q Kᵀ (log2 units: s · unit), invisible entries -inf
    qk = common.dot(q, k, trans_b=True, precision=precision)
    s = common.fwd_logits(qk, scale=scale, softcap=softcap,
                          qk_descale=qk_descale)
    if needs_mask:
      kv_seg = (None if kv_seg_ref is None
                else kv_seg_ref[pl.ds(kv_start, block_kv)])
      s = common.mask_tile(s, mask, q_start, kv_start, block_q, block_kv,
                           q_seg, kv_seg)
    # P = exp2(S - m_new) (FP8: · p_scale), l_new = alpha · l + rowsum(P)
    p, m, l, alpha = common.online_softmax_step(s, m, l, unit, p_scale)
    # acc = alpha · acc + P V
    acc = acc * alpha[:, None] + common.dot(p.astype(v.dtype), v,
                                            precision=precision)
    return acc, m, l

  head_dim = q.shape[-1]
  init = (jnp.zeros((block_q, head_dim), jnp.float32),
          jnp.full((block_q,), -jnp.inf, jnp.float32),
          jnp.zeros((block_q,), jnp.float32))
  # Only K/V tiles that hold a visible entry for this query tile are visited.
  lo, hi = mask.kv_block_range(q_start, block_q, block_kv, num_kv_blocks)
  acc, m, l = lax.fori_loop(lo, hi, body, init)
  # O = acc / l, L = m + log l
  o, lse = common.finalize(acc, m, l, unit, p_scale)
  if fp8 is not None:
    o = o * descale_ref[2]
  o_ref[...] = o.astype(o_ref.dtype)
  lse_ref[...] = lse


def forward(plan: Plan, q, k, v, q_segment_ids, kv_segment_ids, descale=None):
  """Run the forward kernel on padded inputs.

  Args:
    q: ``[batch, seq_q_padded, num_q_heads, head_dim_padded]``.
    k, v: ``[batch, seq_kv_padded, num_kv_heads, head_dim_padded]``.
    q_segment_ids / kv_segment_ids: int32 ``[batch, seq_*_padded]`` or None.
    descale: FP8 (``plan.fp8``) only: float32 ``[num_q_heads, 4]``, the q, k
      and v descales of each query head's tensors.

  Returns:
    O (``plan.dtype``) ``[batch, seq_q_padded, num_q_heads, head_dim_padded]``,
    and L (natural log, float32) ``[batch, num_q_heads, seq_q_padded]``.
  """
  batch, seq_q, num_heads, head_dim = q.shape
  seq_kv = k.shape[1]
  blocks = plan.fwd_blocks
  block_q, block_kv = blocks.block_q, blocks.block_kv
  num_q_blocks = seq_q // block_q
  group = plan.group
  reverse = plan.mask.heavy_last

  def q_block(i):
    return num_q_blocks - 1 - i if reverse else i

  kernel = functools.partial(
      fwd_kernel, mask=plan.mask, scale=plan.scale, softcap=plan.softcap,
      block_q=block_q, block_kv=block_kv, num_q_blocks=num_q_blocks,
      num_kv_blocks=seq_kv // block_kv,
      needs_mask=not plan.mask.is_trivial(seq_kv), reverse=reverse,
      precision=specs.precision(plan), fp8=plan.fp8, fp8_qk=plan.fp8_qk)
  q_spec = pl.BlockSpec((None, block_q, None, head_dim),
                        lambda i, b, h: (b, q_block(i), h, 0))
  kv_spec = pl.BlockSpec((None, seq_kv, None, head_dim),
                         lambda i, b, h: (b, 0, h // group, 0))
  has_seg = q_segment_ids is not None
  q_seg_spec = (pl.BlockSpec((None, block_q), lambda i, b, h: (b, q_block(i)))
                if has_seg else None)
  kv_seg_spec = (pl.BlockSpec((None, seq_kv), lambda i, b, h: (b, 0))
                 if has_seg else None)
  descale_spec = (pl.BlockSpec((None, 4), lambda i, b, h: (h, 0))
                  if descale is not None else None)
  return pl.pallas_call(
      kernel,
      grid=(num_q_blocks, batch, num_heads),
      in_specs=[q_spec, kv_spec, kv_spec, q_seg_spec, kv_seg_spec,
                descale_spec],
      out_specs=[q_spec,
                 pl.BlockSpec((None, None, block_q),
                              lambda i, b, h: (b, h, q_block(i)))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, plan.dtype),
                 jax.ShapeDtypeStruct((batch, num_heads, seq_q), jnp.float32)],
      compiler_params=specs.compiler_params(blocks),
      interpret=plan.interpret,
      name="flashjax_fwd",
  )(q, k, v, q_segment_ids, kv_segment_ids, descale)
