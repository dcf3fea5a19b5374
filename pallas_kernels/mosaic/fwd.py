"""Hopper flash-attention forward (FlashAttention 3's layout), Pallas Mosaic GPU.

Each CTA owns ``2 · BLOCK_Q`` query rows: two compute warpgroups of
``BLOCK_Q`` rows each, plus one producer warpgroup that streams the K/V tiles
the CTA can see (causal/window tiles outside are skipped) into ``STAGES``
shared-memory slots with TMA, signalled by mbarriers. Both matmuls are wgmma:
S = Q Kᵀ from shared memory, and O += P V with P written to shared memory
first (SS form). That form, and accumulating O as ``acc + (P V)`` rather than
in place, is what Mosaic GPU's CPU interpreter can run in jax 0.11.2, so the
same source is tested on the CPU and compiled on the GPU
(shared/mosaic-gpu-primer.md §4).

Status: checked in the interpreter (race detector on) and lowered for an
abstract H100; **not yet run on the GPU**, so ``backend="auto"`` does not pick
it. Segment ids are not supported.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from flashjax.checks import Plan
from flashjax.config import MOSAIC_BLOCK_Q as BLOCK_Q
from flashjax.config import MOSAIC_COMPUTE_WGS as COMPUTE_WGS
from flashjax.config import mosaic_block_kv
from pallas_kernels import common

STAGES = 2          # K/V tiles in flight


def fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, q_smem, k_smem, v_smem,
               p_smem, lse_smem, q_barrier, k_full, v_full, kv_free, *,
               plan: Plan, block_kv: int, num_kv_blocks: int,
               needs_mask: bool):
  # q_ref/o_ref: [batch, seq_q, heads, d]; k_ref/v_ref: [batch, seq_kv, kv_heads,
  # d]; lse_ref: [batch, heads, seq_q]. q_smem holds Q, then O, per compute
  # warpgroup; k_smem/v_smem are STAGES slots; k_full/v_full[slot] complete when
  # a tile has landed, kv_free[slot] when both compute warpgroups are done with it.
  b, h, wg = (lax.axis_index(n) for n in ("batch", "heads", "wg"))
  cta_start = lax.axis_index("q_tile") * (COMPUTE_WGS * BLOCK_Q)
  kv_head = lax.div(h, jnp.int32(plan.group))
  dtype = q_ref.dtype
  head_dim = q_ref.shape[-1]
  # K/V tiles any row of this CTA can see: the rest are skipped, not computed.
  lo, hi = plan.mask.kv_block_range(cta_start, COMPUTE_WGS * BLOCK_Q, block_kv,
                                    num_kv_blocks)

  @pl.when(wg == COMPUTE_WGS)
  def _producer():
    plgpu.set_max_registers(40, action="decrease")

    def load(j, _):
      slot = lax.rem(j - lo, STAGES)
      # Reuse a slot only after both compute warpgroups released it.
      @pl.when(j - lo >= STAGES)
      def _():
        plgpu.barrier_wait(kv_free.at[slot])
      rows = pl.ds(j * block_kv, block_kv)
      plgpu.copy_gmem_to_smem(k_ref.at[b, rows, kv_head], k_smem.at[slot],
                              k_full.at[slot])
      plgpu.copy_gmem_to_smem(v_ref.at[b, rows, kv_head], v_smem.at[slot],
                              v_full.at[slot])
    lax.fori_loop(lo, hi, load, None)

    # Observe the releases not yet waited for, so every phase is consumed.
    def drain(j, _):
      plgpu.barrier_wait(kv_free.at[lax.rem(j - lo, STAGES)])
    lax.fori_loop(jnp.maximum(lo, hi - STAGES), hi, drain, None)

  @pl.when(wg < COMPUTE_WGS)
  def _consumer():
    plgpu.set_max_registers(232, action="increase")
    q_start = cta_start + wg * BLOCK_Q
    q_tile, p_tile = q_smem.at[wg], p_smem.at[wg]
    plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(q_start, BLOCK_Q), h], q_tile,
                            q_barrier.at[wg])
    plgpu.barrier_wait(q_barrier.at[wg])

    def step(j, carry):
      acc, m, l = carry
      slot = lax.rem(j - lo, STAGES)
      plgpu.barrier_wait(k_full.at[slot])

      def qk(acc_ref):
        plgpu.wgmma(acc_ref, q_tile, k_smem.at[slot].T)
        return acc_ref[...]
      # S = scale · Q Kᵀ (log2 units; softcap: c · tanh(scale · Q Kᵀ / c))
      qk = pl.run_scoped(qk, plgpu.ACC((BLOCK_Q, block_kv), jnp.float32))
      if plan.softcap is None:
        s = qk * (plan.scale * common.LOG2E)
      else:
        s = jnp.tanh(qk * (plan.scale / plan.softcap)) * (
            plan.softcap * common.LOG2E)
      if needs_mask:
        # Index tiles in the accumulator's own register layout.
        iota = functools.partial(plgpu.broadcasted_iota, jnp.int32,
                                 (BLOCK_Q, block_kv), layout=plgpu.Layout.WGMMA)
        s = jnp.where(plan.mask.predicate(q_start + iota(0),
                                          j * block_kv + iota(1)), s, -jnp.inf)
      # P = exp2(S - m_new), l_new = alpha · l + rowsum(P)
      p, m, l, alpha = common.online_softmax_step(s, m, l)
      # acc = alpha · acc + P V   (P through shared memory: an SS wgmma)
      p_tile[...] = p.astype(dtype)
      plgpu.commit_smem()
      plgpu.barrier_wait(v_full.at[slot])

      def pv(acc_ref):
        plgpu.wgmma(acc_ref, p_tile, v_smem.at[slot])
        return acc_ref[...]
      pv = pl.run_scoped(pv, plgpu.ACC((BLOCK_Q, head_dim), jnp.float32))
      plgpu.barrier_arrive(kv_free.at[slot])
      return acc * lax.broadcast_in_dim(alpha, acc.shape, [0]) + pv, m, l

    acc, m, l = lax.fori_loop(lo, hi, step, (
        jnp.zeros((BLOCK_Q, head_dim), jnp.float32),
        jnp.full((BLOCK_Q,), -jnp.inf, jnp.float32),
        jnp.zeros((BLOCK_Q,), jnp.float32)))
    # O = acc / l, L = m + log l; O goes out through Q's shared memory.
    o, lse = common.finalize(acc, m, l)
    q_tile[...] = o.astype(dtype)
    lse_smem.at[wg][...] = lse
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(q_tile, o_ref.at[b, pl.ds(q_start, BLOCK_Q), h])
    plgpu.copy_smem_to_gmem(lse_smem.at[wg],
                            lse_ref.at[b, h, pl.ds(q_start, BLOCK_Q)])
    plgpu.wait_smem_to_gmem(0)


def forward(plan: Plan, q, k, v):
  """Run the Hopper forward on padded inputs.

  Args:
    q: ``[batch, seq_q, num_q_heads, head_dim]``, bf16/f16, seq_q a multiple of
      ``2 · BLOCK_Q``, head_dim 64 or 128.
    k, v: ``[batch, seq_kv, num_kv_heads, head_dim]``, seq_kv a multiple of
      :func:`flashjax.config.mosaic_block_kv`.

  Returns:
    O like q, and L (natural log, float32) ``[batch, num_q_heads, seq_q]``.
  """
  batch, seq_q, num_heads, head_dim = q.shape
  seq_kv = k.shape[1]
  bkv = mosaic_block_kv(head_dim)
  kernel = functools.partial(fwd_kernel, plan=plan, block_kv=bkv,
                             num_kv_blocks=seq_kv // bkv,
                             needs_mask=not plan.mask.is_trivial(seq_kv))
  interpret = plgpu.InterpretGPUParams(detect_races=True) if plan.interpret \
      else None
  return plgpu.kernel(
      kernel,
      grid=(num_heads, seq_q // (COMPUTE_WGS * BLOCK_Q), batch),
      grid_names=("heads", "q_tile", "batch"),
      num_threads=COMPUTE_WGS + 1, thread_name="wg",
      out_type=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                jax.ShapeDtypeStruct((batch, num_heads, seq_q), jnp.float32)],
      scratch_types=(
          plgpu.SMEM((COMPUTE_WGS, BLOCK_Q, head_dim), q.dtype),
          plgpu.SMEM((STAGES, bkv, head_dim), q.dtype),
          plgpu.SMEM((STAGES, bkv, head_dim), q.dtype),
          plgpu.SMEM((COMPUTE_WGS, BLOCK_Q, bkv), q.dtype),
          plgpu.SMEM((COMPUTE_WGS, BLOCK_Q), jnp.float32),
          plgpu.Barrier(num_barriers=COMPUTE_WGS),
          plgpu.Barrier(num_barriers=STAGES),
          plgpu.Barrier(num_barriers=STAGES),
          plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=STAGES)),
      compiler_params=plgpu.CompilerParams(approx_math=True),
      interpret=interpret,
  )(q, k, v)
