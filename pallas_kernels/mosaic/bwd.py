"""Hopper flash-attention backward (FlashAttention 2/3, Algorithm 2), Mosaic GPU.

Two kernels on :func:`pipeline.streamed_loop`, each compute warpgroup owning
``BLOCK_Q`` rows of what it writes:

* dQ: owns Q, dO, L, D rows; streams the K/V tiles those rows can see.
  S = Q Kᵀ, P = exp2(S - L), dP = dO Vᵀ, dS = P ∘ (dP - D), dQ += dS K.
* dK/dV: owns K, V rows; streams Q, dO, L, D tiles of every query head of its
  GQA group that can see them. Sᵀ = K Qᵀ, Pᵀ = exp2(Sᵀ - L), dV += Pᵀ dO,
  dPᵀ = V dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ - D), dK += dSᵀ Q.

P and dS are the register operands of the wgmmas that consume them (RS), with
the forward's interpreter fallback (:func:`pipeline.mma_acc`).
``MosaicBlocks(persistent=True)`` in ``mosaic_bwd``: as the forward's, one CTA
per SM walks each kernel's output tiles (:class:`pipeline.Tiles`), banded
masks' tiles in mirrored pairs.

``MosaicBlocks(fused_dq=True)`` (FlashAttention 3's backward): no dQ kernel.
The dK/dV kernel also computes dQ += dS K per step, 5 matmuls per tile pair
instead of 7, dSᵀ going through shared memory (double-buffered by step
parity) as the transposed operand. At d 128 the warpgroups share their dSᵀ
(a barrier per buffer) and each takes half of dQ's columns over both
warpgroups' keys; at d 64 each takes all columns over its own keys, or,
with ``split_dq``, half of them as at d 128, which halves the dQ traffic
(:meth:`flashjax.config.MosaicBlocks.dq_columns`). The float32 result is
reduce-added into a zeroed dQ buffer by TMA; XLA scales and casts it after.
Mosaic GPU's interpreter has no TMA reduction, so there each key tile writes
its own dQ part (per warpgroup) and XLA sums the parts: the one place the
two forms differ.

``MosaicBlocks(deferred_waits=True)`` (compiled): the dK/dV step awaits its
products once, at its end, so dV's product runs while dSᵀ is computed and
dK's while dQ's is issued (FlashAttention 3's order); the interpreter runs
the plain order. ``MosaicBlocks(intra_wg_overlap=True)``: the dQ kernel's
step j issues S_j and dP_j with dQ += dS_{j-1} K_{j-1} and computes dS_j
while the last runs (K's slot released a step late; dS carried in
registers, in the interpreter kept in shared memory), as the forward does
with P V. Both are lowered for CUDA, (the overlap) run in the interpreter with the
race detector, and pass compiled on the H200 (tests/test_mosaic.py).

``MosaicBlocks(fold_stats=True)``: the S and dP accumulators start at
``-L2 / u`` and ``-D`` (:func:`_starts`) rather than zero, so L and D (in
the dK/dV kernel, column vectors of 16 registers a thread each) are not live
while P and dS are computed, and no subtraction runs per entry.

``MosaicBlocks(step_descriptors=True)``: the dK/dV kernel indexes its owned
K and V tiles through an optimization barrier in each step
(:func:`_in_step`), so LLVM computes their wgmma descriptors there; without
it they are hoisted out of the step loops (24 of 64 bits a loop at d 128,
with K's for the fused dQ product), and the fused causal kernel spilled them
(benchmarks/ptx_descriptors.py; with it 16 bytes instead of 460).

``MosaicBlocks(owned_registers=True)`` (compiled): each kernel loads the
tiles it owns into registers once, as the register operands of the products
that read them every step: K and V in the dK/dV kernel, Q and dO in the dQ
kernel. d 64 non-causal forward+backward 1.2-2.4% faster in two processes
(results/raw/opts-owned-registers-session37-h200.md,
confirm-owned-registers-short-session40-h200.md): the default of d 64's
non-causal fused kernel since v27. Slower causal (2-3%) and at d 128
(forward+backward about 50% longer with the fused kernel: there the two
owned tiles' 64 registers a thread join the 192 of the float32
accumulators in flight, dK's and dV's 128 and Sᵀ's and dPᵀ's 64: 256
against the 232 allowed, so it must spill; docs/hopper-notes.md).

``MosaicBlocks(stream_k=True)`` (the fused kernel on the persistent grid,
no band): as the forward's, the last rounds' key tiles are split by query
steps where whole tiles leave the last round partly idle; a cut tile's two
parts write their float32 dK and dV apart (through the dQ tile's shared
memory), and :func:`merge` sums them in place after the kernel. Written
to recover the one-tile grid's last wave (4096 key tiles are 31.03 waves on
132 SMs); with carried slots it gains at d 64 non-causal 4k only, not in
every process, and loses elsewhere (thirty-fourth session): off.

Defaults (:func:`flashjax.config.default_config`): fused at d 128
non-causal and causal from 8k keys (there with 240 registers a compute
thread), at d 64 non-causal from 4k keys and causal from 16k (dQ's columns
split), two kernels elsewhere; the fused kernel streams its query tiles
through 3 stages at d 128 (causal too since v24, once re-timed without
spills: results/raw/confirm-bwd-stages-session32-h200.md), 5 at d 64
non-causal and 2 at d 64 causal, the two kernels through 2; deferred
waits and folded statistics at d 128 (the latter cut the fused kernel's
spills from 92 to 16 bytes, results/raw/opts-fold-h200.md), and
``step_descriptors`` in its fused kernel (results/raw/confirm-v19-h200.md),
L in log2 units from XLA and the owned tiles in registers in d 64's
fused non-causal kernel, one barrier for a step's streamed tiles
(``shared_full``) there (v30) and in d 128's fused kernel (v31); the dQ
overlap off (slower in every tuned case on the H200) and the persistent
grid off (it gained nothing on the H100).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from flashjax.checks import Plan
from flashjax.config import MOSAIC_BLOCK_Q as BLOCK_Q
from flashjax.config import MOSAIC_COMPUTE_WGS as COMPUTE_WGS
from flashjax.config import MosaicBlocks
from pallas_kernels import common
from pallas_kernels.mosaic import pipeline

ROW, COL = pipeline.ROW, pipeline.COL


def _scores(plan: Plan, qk):
  """(S in log2 units, t = tanh(...) or None) from the raw Q·Kᵀ tile."""
  return common.logits(qk, scale=plan.scale, softcap=plan.softcap)


def _starts(plan: Plan, lse2, delta, shape, dim: int):
  """The S and dP accumulators' starting values under ``fold_stats``: S's
  ``-L2 / u`` (:func:`common.recompute_unit`; None under a softcap) and dP's
  ``-D``, the row (dQ) or column (dK/dV) vectors spread along ``dim``. The
  accumulators then hold ``S2 - L2`` (once scaled by u) and ``dP - D``: the
  vectors die when the step's products are issued, and no subtraction runs
  per entry. (None, None) with the option off. Under ``lse_log2``,
  ``lse2`` is that start already (:func:`_folds_lse`)."""
  if not plan.config.mosaic_bwd.fold_stats:
    return None, None
  unit = common.recompute_unit(plan.scale, plan.softcap)
  spread = lambda x: lax.broadcast_in_dim(x, shape, [dim])
  if unit is not None and not _folds_lse(plan):
    lse2 = _s_start(lse2, unit)
  return None if unit is None else spread(lse2), spread(-delta)


def _s_start(lse2, unit: float):
  """S's accumulator start -L2 / u from L2 (:func:`_starts`)."""
  return lse2 * (-1.0 / unit)


def _folds_lse(plan: Plan) -> bool:
  """Whether XLA hands the kernels S's start -L2 / u (:func:`_starts`) in
  place of L: under ``lse_log2`` with the folded statistics (and no
  softcap), where the kernels use L only for that start."""
  blocks = plan.config.mosaic_bwd
  return blocks.lse_log2 and blocks.fold_stats and (
      common.recompute_unit(plan.scale, plan.softcap) is not None)


def _in_step(plan: Plan, index):
  """A warpgroup's index into an owned shared-memory tile, as a step uses
  it: under ``step_descriptors`` through an optimization barrier (an empty
  volatile asm), so LLVM computes the wgmma descriptors of the tile it
  indexes in the step rather than hoisting them before the loop, where they
  stayed live across it (64 bits each; the fused causal kernel reloaded 12
  of them from local memory each step, twenty-fourth session)."""
  if not plan.config.mosaic_bwd.step_descriptors:
    return index
  return lax.optimization_barrier(jnp.asarray(index, jnp.int32))


def _lse2(plan: Plan, lse):
  """L in log2 units (rows that see no key as +inf) from a loaded L tile:
  converted here, or (``lse_log2``) by XLA before the kernel (there, with
  the folded statistics, S's start instead: :func:`_folds_lse`)."""
  if plan.config.mosaic_bwd.lse_log2:
    return lse
  return common.lse_log2_for_recompute(lse)


def _probabilities(plan: Plan, acc, s_start, lse2, dim: int, mask):
  """``(P, t)``: P = exp2(S2 - L2) from S's accumulator, which started at
  ``s_start`` (:func:`_starts`) or at zero; t as :func:`_scores`'s. ``mask``
  sets the invisible entries of S2 - L2 to -inf."""
  if s_start is not None:
    x, t = acc * common.recompute_unit(plan.scale, plan.softcap), None
  else:
    s, t = _scores(plan, acc)
    x = s - lax.broadcast_in_dim(lse2, acc.shape, [dim])
  return jnp.exp2(mask(x)), t


def _grad_scores(p, dp, dp_start, delta, t, dim: int):
  """dS = P ∘ (dP - D) (w.r.t. the raw scores under a softcap), dP's
  accumulator having started at ``dp_start`` (-D) or at zero."""
  if dp_start is None:
    dp = dp - lax.broadcast_in_dim(delta, dp.shape, [dim])
  return common.softcap_grad(p * dp, t)


def kernel_names(blocks: MosaicBlocks) -> tuple[str, ...]:
  """The backward's kernel names (in profiles and Nsight, suffixed
  ``_mosaic_gpu_kernel``): dK/dV's, then dQ's unless ``fused_dq``."""
  return ("flashjax_dkdv_dq",) if blocks.fused_dq else ("flashjax_dkdv",
                                                         "flashjax_dq")


class _DqCarry(NamedTuple):
  """The dQ kernel's carry: dQ's accumulator, the rows' L (log2 units) and
  D, read once; (overlap, dS a register operand) the last step's dS; (the
  compiled ``owned_registers``) Q and dO in registers; (``consistent_delta``)
  the rows' sums of G = P ∘ (dP - D) and the sum of P'K (P' = P times a
  softcap's factor). Unused fields are None."""
  dq: object
  lse2: object
  delta: object
  ds: object = None
  owned: object = None
  g_sum: object = None
  pk: object = None


def dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_refs,
              dlse_ref, dq_ref, excess_ref, q_smem, do_smem, lse_smem,
              delta_smem, dlse_smem, ds_smem, k_smem, v_smem, owned_barrier,
              k_full, v_full, k_free, v_free, *, plan: Plan, block_kv: int,
              num_kv_blocks: int, tiles: pipeline.Tiles, overlap: bool):
  # tiles: the CTA's (head, query tile, batch) tiles. overlap: step j issues
  # S_j, dP_j and dQ += dS_{j-1} K_{j-1} together and computes dS_j while
  # the last runs (K's slot then released a step late).
  # dlse_ref (consistent_delta): None, or dL, float32 [batch, heads,
  # seq_q], 0 where a row sees no key; excess_ref: float32 [batch, heads,
  # seq_q], each row's rowsum(G) - dL, or None; dlse_smem: dL's row tile.
  wg = lax.axis_index("wg")
  head_dim = q_ref.shape[-1]
  q_tile, do_tile = q_smem.at[wg], do_smem.at[wg]
  ds_tile = None if ds_smem is None else ds_smem.at[wg]
  # the owned Q and dO as the register operands of S's and dP's products
  # (compiled)
  in_registers = plan.config.mosaic_bwd.owned_registers and not plan.interpret

  def work(index):
    h, tile, b = index
    cta_start = pipeline.heavy_first(plan.mask, tile, tiles.grid[1]) * (
        COMPUTE_WGS * BLOCK_Q)
    q_start = cta_start + wg * BLOCK_Q
    kv_head = lax.div(h, jnp.int32(plan.group))
    rows = pl.ds(q_start, BLOCK_Q)

    def init():
      pipeline.load_owned(owned_barrier.at[wg], [
          (q_ref.at[b, rows, h], q_tile), (do_ref.at[b, rows, h], do_tile),
          (lse_ref.at[b, h, rows], lse_smem.at[wg]),
          (delta_ref.at[b, h, rows], delta_smem.at[wg]),
          *([(dlse_ref.at[b, h, rows], dlse_smem.at[wg])]
            if dlse_ref is not None else [])])
      ds = None
      if overlap and ds_tile is None:
        ds = plgpu.layout_cast(jnp.zeros(shape, q_ref.dtype),
                               plgpu.Layout.WGMMA)
      owned = (pipeline.register_operands(q_tile, do_tile) if in_registers
               else None)
      return _DqCarry(
          jnp.zeros((BLOCK_Q, head_dim), jnp.float32),
          _lse2(plan, plgpu.load(lse_smem.at[wg], layout=ROW)),
          plgpu.load(delta_smem.at[wg], layout=ROW), ds, owned,
          *((jnp.zeros((BLOCK_Q,), jnp.float32),
             jnp.zeros((BLOCK_Q, head_dim), jnp.float32))
            if dlse_ref is not None else ()))

    def operands(carry):
      # Q and dO as the A operands of S's and dP's products: in registers
      # (owned_registers) or their tiles
      return carry.owned or (q_tile, do_tile)

    shape = (BLOCK_Q, block_kv)

    def ids_of(j, masked):
      # segment ids of the rows and of tile j (first: latency behind the
      # K wait)
      return None if not masked or seg_refs is None else pipeline.load_ids(
          seg_refs[0].at[b, rows], seg_refs[1].at[b, pl.ds(j * block_kv,
                                                            block_kv)])

    def probabilities(j, acc, lse2, s_start, ids, masked):
      # S = scale · Q Kᵀ (log2 units), invisible entries -inf; P = exp2(S - L)
      mask = lambda x: pipeline.mask_scores(
          plan.mask, x, q_start, j * block_kv, ids,
          vectors=plan.config.mosaic_bwd.index_vectors) if masked else x
      return _probabilities(plan, acc, s_start, lse2, 0, mask)

    def grad_scores(p, t, dp, dp_start, carry):
      # G = P ∘ (dP - D); dS = G (· the softcap's factor), rounded for the dQ
      # product; (consistent_delta) the rows' sums of G go on, and P' = P
      # (· that factor), rounded for P'K's product: dS with D + e is dS - e P'
      g = _grad_scores(p, dp, dp_start, carry.delta, None, 0)
      ds = common.softcap_grad(g, t).astype(q_ref.dtype)
      if carry.g_sum is None:
        return ds, None, None
      return (ds, carry.g_sum + jnp.sum(g, axis=1),
              common.softcap_grad(p, t).astype(q_ref.dtype))

    def add_pk(carry, p_factor, k_tile):
      # (consistent_delta) P'K += P' K, P' through ds_tile in the interpreter
      if p_factor is None:
        return carry.pk
      return pipeline.mma_acc(carry.pk, p_factor, k_tile, ds_tile,
                              in_place=not plan.interpret)

    def scores_and_grads(j, slot, sync, carry, ids, masked):
      # Q Kᵀ and dP = dO Vᵀ issued together: P is computed while dP runs
      q, do = operands(carry)
      starts = _starts(plan, carry.lse2, carry.delta, shape, 0)
      (p, t), dp = pipeline.wgmma_ss_pair(
          (q, k_smem.at[slot].T, shape), (do, v_smem.at[slot].T, shape),
          lambda acc: probabilities(j, acc, carry.lse2, starts[0], ids,
                                    masked),
          starts, in_place=not plan.interpret)
      sync.release(1)                    # V's slot can be refilled
      return grad_scores(p, t, dp, starts[1], carry)

    def tile_grads(j, slot, sync, carry, masked):
      # dS of tile j, its K and V awaited
      ids = ids_of(j, masked)
      sync.wait(0)
      sync.wait(1)
      return scores_and_grads(j, slot, sync, carry, ids, masked)

    def step(j, slot, sync, carry, masked):
      ds, g_sum, p_factor = tile_grads(j, slot, sync, carry, masked)
      pk = add_pk(carry, p_factor, k_smem.at[slot])
      # dQ += dS K
      dq = pipeline.mma_acc(carry.dq, ds, k_smem.at[slot], ds_tile,
                            in_place=not plan.interpret)
      return carry._replace(dq=dq, g_sum=g_sum, pk=pk)

    # overlap: dS_{j-1} is carried (registers) or kept in ds_tile (the
    # interpreter) until step j issues dQ += dS_{j-1} K_{j-1}
    keep = functools.partial(pipeline.carried, tile=ds_tile)

    def first_step(j, slot, sync, carry, masked):
      ds, g_sum, p_factor = tile_grads(j, slot, sync, carry, masked)
      pk = add_pk(carry, p_factor, k_smem.at[slot])   # before keep's store
      return carry._replace(ds=keep(ds), g_sum=g_sum, pk=pk)

    def overlapped_step(j, slot, sync, carry, masked):
      dq = carry.dq
      ids = ids_of(j, masked)
      sync.wait(0)
      sync.wait(1)
      ds_operand = ds_tile if ds_tile is not None else carry.ds
      k_prev = k_smem.at[sync.prev]
      if plan.interpret:   # no in-place accumulator: the products in turn
        dq = dq + pipeline.wgmma_ss(ds_operand, k_prev, dq.shape)
        ds, g_sum, p_factor = scores_and_grads(j, slot, sync, carry, ids,
                                               masked)
      else:
        s_start, dp_start = _starts(plan, carry.lse2, carry.delta, shape, 0)
        q, do = operands(carry)

        def run(dq_acc, s_acc, dp_acc):
          # S_j, dP_j and dQ += dS_{j-1} K_{j-1} issued together; P_j is
          # computed while dP_j runs, dS_j while dQ's product does
          pipeline.start_accs((dq_acc, s_acc, dp_acc), (dq, s_start, dp_start))
          plgpu.wgmma(s_acc, q, k_smem.at[slot].T)
          plgpu.wgmma(dp_acc, do, v_smem.at[slot].T)
          plgpu.wgmma(dq_acc, ds_operand, k_prev)
          p, t = probabilities(
              j, plgpu.wgmma_accumulator_load(s_acc, wait_n=2), carry.lse2,
              s_start, ids, masked)
          dp = plgpu.wgmma_accumulator_load(dp_acc, wait_n=1)
          sync.release(1)                # V's slot can be refilled
          ds, g_sum, p_factor = grad_scores(p, t, dp, dp_start, carry)
          return plgpu.wgmma_accumulator_load(dq_acc), ds, g_sum, p_factor
        dq, ds, g_sum, p_factor = pl.run_scoped(
            run, plgpu.ACC(dq.shape, jnp.float32),
            plgpu.ACC(shape, jnp.float32), plgpu.ACC(shape, jnp.float32))
      # K_j's slot is held until the next step (lagged); before keep's store
      pk = add_pk(carry, p_factor, k_smem.at[slot])
      return carry._replace(dq=dq, ds=keep(ds), g_sum=g_sum, pk=pk)

    def drain(carry, sync):
      # dQ += dS K of the last tile
      dq = pipeline.mma_acc(
          carry.dq, ds_tile if ds_tile is not None else carry.ds,
          k_smem.at[sync.prev], in_place=not plan.interpret)
      return carry._replace(dq=dq)

    def finish(carry):
      dq, stores = carry.dq, []
      if dlse_ref is not None:
        # rowsum(G) is dL exactly (0 where a row sees no key), but D from the
        # rounded O misses rowsum(P ∘ dP) by a little: the excess, which the
        # dK/dV kernel adds to D; dQ with D + excess is dQ - excess ⊗ P'K
        excess = carry.g_sum - plgpu.load(dlse_smem.at[wg], layout=ROW)
        dq = dq - lax.broadcast_in_dim(excess, dq.shape, [0]) * carry.pk
        # through L's tile, read into registers at init
        stores.append((excess, lse_smem.at[wg], excess_ref.at[b, h, rows]))
      pipeline.store([(dq * plan.scale, q_tile, dq_ref.at[b, rows, h]),
                      *stores])

    w = pipeline.kv_work(
        plan.mask, cta_start=cta_start, k_ref=k_ref, v_ref=v_ref,
        batch=b, kv_head=kv_head, block_kv=block_kv,
        num_kv_blocks=num_kv_blocks, init=init, step=step, finish=finish)
    if not overlap:
      return w
    return dataclasses.replace(w, first=first_step, step=overlapped_step,
                               drain=drain)

  k_full, v_full = pipeline.fulls(k_full, v_full)    # (shared_full) one
  pipeline.streamed_loop(
      wg=wg, tiles=tiles, work=work,
      streams=[pipeline.Stream(k_smem, k_full, k_free, lagged=overlap),
               pipeline.Stream(v_smem, v_full, v_free)],
      compute_registers=plan.config.mosaic_bwd.compute_registers,
      carry_slots=plan.config.mosaic_bwd.carry_slots)


def dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_refs,
                dq_ref, dk_ref, dv_ref, part_refs, k_smem, v_smem, pt_smem,
                q_smem, do_smem, lse_smem, delta_smem, owned_barrier, q_full,
                do_full, lse_full, delta_full, q_free, ds_smem, dq_smem,
                ds_ready, *,
                plan: Plan, block_q: int, num_q_blocks: int, needs_mask: bool,
                tiles: pipeline.Tiles, deferred_waits: bool):
  # k_ref/v_ref/dk_ref/dv_ref: [batch, seq_kv, kv_heads, d]; q_ref/do_ref:
  # [batch, seq_q, heads, d]; lse_ref/delta_ref: [batch, heads, seq_q] (L in
  # log2 units under lse_log2). Each compute warpgroup owns BLOCK_Q keys; the
  # streamed query tiles have block_q rows. tiles: the CTA's (kv head, key
  # tile, batch) tiles.
  # Fused dQ (dq_ref not None): dq_ref float32 [parts, batch, seq_q, heads, d],
  # dQ's unscaled sum; compiled, parts = 1 and every CTA reduce-adds into it;
  # in the interpreter (no TMA reduction) each (key tile, warpgroup) writes
  # its own part.
  # ds_smem [2, 2, BLOCK_Q, block_q]: both warpgroups' dSᵀ, by step parity;
  # dq_smem [2, block_q, MosaicBlocks.dq_columns(d)] float32; ds_ready (when
  # shared): a barrier per parity, and one for the end of a tile.
  # part_refs: None, or (fused, tiles.stream_k) the cut tiles' parts' dK and
  # dV, float32 [ctas, 2, COMPUTE_WGS · BLOCK_Q, d], stored through dq_smem.
  wg = lax.axis_index("wg")
  head_dim = k_ref.shape[-1]
  width = plan.config.mosaic_bwd.dq_columns(head_dim)
  shared = width < head_dim        # dSᵀ goes to both warpgroups' products
  # the step's products awaited once at its end (compiled), or each in turn
  deferred = deferred_waits and not plan.interpret
  # the owned K and V as the register operands of Sᵀ's and dPᵀ's products
  # (compiled)
  in_registers = plan.config.mosaic_bwd.owned_registers and not plan.interpret
  k_tile, v_tile = k_smem.at[wg], v_smem.at[wg]
  pt_tile = None if pt_smem is None else pt_smem.at[wg]

  def work(index, part=None):
    kv_head, tile, b = index
    cta_start = tile * (COMPUTE_WGS * BLOCK_Q)
    kv_start = cta_start + wg * BLOCK_Q
    rows = pl.ds(kv_start, BLOCK_Q)
    # Query tiles [q_lo, q_hi) of each of the group's heads can see this CTA's
    # keys; the loop runs over (query tile, head in group) pairs, heads fastest,
    # so the tiles this warpgroup's keys fully see are one range of j.
    q_lo, q_hi = plan.mask.q_block_range(cta_start, COMPUTE_WGS * BLOCK_Q,
                                         block_q, num_q_blocks)

    def head_and_tile(j):
      t = lax.div(j, jnp.int32(plan.group))
      return kv_head * plan.group + (j - t * plan.group), q_lo + t

    def full_range():
      a, b = plan.mask.q_full_range(kv_start, BLOCK_Q, block_q)
      return tuple((jnp.clip(x, q_lo, q_hi) - q_lo) * plan.group
                   for x in (a, b))

    def init():
      pipeline.load_owned(owned_barrier.at[wg],
                          [(k_ref.at[b, rows, kv_head], k_tile),
                           (v_ref.at[b, rows, kv_head], v_tile)])
      zeros = jnp.zeros((BLOCK_Q, head_dim), jnp.float32)
      if not in_registers:
        return zeros, zeros
      return zeros, zeros, *pipeline.register_operands(k_tile, v_tile)

    def share_ds(dst, count):
      # this warpgroup's dSᵀ for the dQ product(s)
      ds_smem.at[lax.rem(count, 2), wg][...] = dst.astype(ds_smem.dtype)
      plgpu.commit_smem()
      if shared:
        plgpu.barrier_arrive(ds_ready.at[lax.rem(count, 2)])

    def add_dq(head, i, count, acc_ref=None):
      # dQ[i] += dS K, this warpgroup's share of the columns (over both
      # warpgroups' keys when shared); then reduce-added (float32) into dq_ref.
      # acc_ref: a zeroed accumulator to issue into (else a scoped one)
      parity = lax.rem(count, 2)
      cols = pl.ds(wg * width, width) if shared else pl.ds(0, width)
      if shared:
        plgpu.barrier_wait(ds_ready.at[parity])     # both dSᵀ are in
      products = [(ds_smem.at[parity, g].T,
                   k_smem.at[_in_step(plan, g), :, cols])
                  for g in (range(COMPUTE_WGS) if shared else [wg])]
      if plan.interpret:     # no accumulating wgmma there: add the products
        dq = sum(pipeline.wgmma_ss(a, b_, (block_q, width))
                 for a, b_ in products)
      else:
        def product(acc_ref):
          for a, b_ in products:
            plgpu.wgmma(acc_ref, a, b_)
          return plgpu.wgmma_accumulator_load(acc_ref)
        dq = (product(acc_ref) if acc_ref is not None else
              pl.run_scoped(product, plgpu.ACC((block_q, width), jnp.float32)))
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)   # last step's copy
      dq_smem.at[wg][...] = dq
      plgpu.commit_smem()
      part = tile * COMPUTE_WGS + wg if plan.interpret else 0
      plgpu.copy_smem_to_gmem(
          dq_smem.at[wg],
          dq_ref.at[part, b, pl.ds(i * block_q, block_q), head, cols],
          reduction_op=None if plan.interpret else "add")

    def step(j, slot, sync, carry, masked):
      dk, dv, *owned = carry
      shape = (BLOCK_Q, block_q)              # [keys, queries]
      # the owned K and V: in registers, or the tiles as this step indexes
      # them (_in_step)
      k_tile, v_tile = owned or (x.at[_in_step(plan, wg)]
                                 for x in (k_smem, v_smem))
      head, i = head_and_tile(j)
      # segment ids of the rows (keys) and of query tile i (first: latency
      # behind the waits)
      ids = None if not masked or seg_refs is None else pipeline.load_ids(
          seg_refs[1].at[b, rows], seg_refs[0].at[b, pl.ds(i * block_q,
                                                            block_q)])
      for stream in range(4):
        sync.wait(stream)
      lse2 = _lse2(plan, plgpu.load(lse_smem.at[slot], layout=COL))
      delta = plgpu.load(delta_smem.at[slot], layout=COL)
      q_slot, do_slot = q_smem.at[slot], do_smem.at[slot]
      st_start, dpt_start = _starts(plan, lse2, delta, shape, 1)

      def probabilities(acc):
        # Sᵀ = scale · K Qᵀ (log2 units), invisible entries -inf;
        # Pᵀ = exp2(Sᵀ - L)
        mask = lambda x: pipeline.mask_scores(
            plan.mask, x, kv_start, i * block_q, ids, rows_are_keys=True,
            vectors=plan.config.mosaic_bwd.index_vectors) if masked else x
        return _probabilities(plan, acc, st_start, lse2, 1, mask)

      def grad_scores(pt, dpt, t):
        # dSᵀ = Pᵀ ∘ (dPᵀ - D)
        return _grad_scores(pt, dpt, dpt_start, delta, t, 1)

      if deferred:
        def products(accs):
          dv_acc, dk_acc, st_acc, dpt_acc, *dq_acc = accs
          # K Qᵀ and dPᵀ = V dOᵀ issued together: Pᵀ is computed while dPᵀ
          # runs
          plgpu.wgmma(st_acc, k_tile, q_slot.T)
          plgpu.wgmma(dpt_acc, v_tile, do_slot.T)
          pt, t = probabilities(
              plgpu.wgmma_accumulator_load(st_acc, wait_n=1))
          # dV += Pᵀ dO, in flight while dSᵀ is computed (wait for dPᵀ only)
          plgpu.wgmma(dv_acc, pt.astype(q_ref.dtype), do_slot)
          dst = grad_scores(
              pt, plgpu.wgmma_accumulator_load(dpt_acc, wait_n=1), t)
          if dq_ref is not None:
            share_ds(dst, sync.count)
          # dK += dSᵀ Q, in flight while dQ's product is issued
          plgpu.wgmma(dk_acc, dst.astype(q_ref.dtype), q_slot)
          if dq_ref is not None:
            add_dq(head, i, sync.count, dq_acc[0])

        zeros = lambda shape: plgpu.layout_cast(
            jnp.zeros(shape, jnp.float32), plgpu.Layout.WGMMA)
        accs = [dv, dk, *(zeros(shape) if x is None else x
                          for x in (st_start, dpt_start))]
        if dq_ref is not None:
          accs.append(zeros((block_q, width)))
        dv, dk, *_ = pl.run_state(products)(
            tuple(plgpu.ACC.init(x) for x in accs))
        return dk, dv, *owned

      # K Qᵀ and dPᵀ = V dOᵀ issued together: Pᵀ is computed while dPᵀ runs
      (pt, t), dpt = pipeline.wgmma_ss_pair(
          (k_tile, q_slot.T, shape), (v_tile, do_slot.T, shape),
          probabilities, (st_start, dpt_start), in_place=not plan.interpret)
      # dV += Pᵀ dO
      dv = pipeline.mma_acc(dv, pt.astype(q_ref.dtype), do_slot, pt_tile,
                            in_place=not plan.interpret)
      dst = grad_scores(pt, dpt, t)
      if dq_ref is not None:
        share_ds(dst, sync.count)
      # dK += dSᵀ Q   (SS form: dSᵀ reuses Pᵀ's buffer, its wgmma has
      # completed)
      dk = pipeline.mma_acc(dk, dst.astype(q_ref.dtype), q_slot, pt_tile,
                            in_place=not plan.interpret)
      if dq_ref is not None:
        # dQ += dS K (FlashAttention 3's fused backward)
        add_dq(head, i, sync.count)
      return dk, dv, *owned

    def finish(carry):
      dk, dv = carry[:2]
      if dq_ref is not None and shared:
        # the other warpgroup's last dQ product reads this one's K: both done
        # before K's buffer takes dK
        plgpu.barrier_arrive(ds_ready.at[2])
        plgpu.barrier_wait(ds_ready.at[2])
      dk = dk * plan.scale
      outs = [(dk, k_tile, dk_ref.at[b, rows, kv_head]),
              (dv, v_tile, dv_ref.at[b, rows, kv_head])]
      if part is None:
        pipeline.store(outs)
        return
      pl.when(part.slot < 0)(lambda: pipeline.store(outs))

      @pl.when(part.slot >= 0)
      def _():
        # a Stream-K part of a cut tile: its float32 sums to its slot of the
        # parts, through this warpgroup's dQ tile, a column block at a time
        at = (part.cta, part.slot, pl.ds(wg * BLOCK_Q, BLOCK_Q))
        for value, part_ref in zip((dk, dv), part_refs):
          for c in range(0, head_dim, width):
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            dq_smem.at[wg, pl.ds(0, BLOCK_Q)][...] = value[:, c:c + width]
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(dq_smem.at[wg, pl.ds(0, BLOCK_Q)],
                                    part_ref.at[(*at, pl.ds(c, width))])
        plgpu.wait_smem_to_gmem(0)

    def tile_of(j):
      head, i = head_and_tile(j)
      return head, pl.ds(i * block_q, block_q)

    return pipeline.Work(
        lo=0 if part is None else part.lo,
        hi=plan.group * (q_hi - q_lo) if part is None else part.hi,
        init=init, step=step,
        finish=finish, full=full_range() if needs_mask else None,
        srcs=(lambda j: q_ref.at[b, tile_of(j)[1], tile_of(j)[0]],
              lambda j: do_ref.at[b, tile_of(j)[1], tile_of(j)[0]],
              lambda j: lse_ref.at[b, tile_of(j)[0], tile_of(j)[1]],
              lambda j: delta_ref.at[b, tile_of(j)[0], tile_of(j)[1]]))

  # (shared_full) one barrier for all four
  q_full, do_full, lse_full, delta_full = pipeline.fulls(
      q_full, do_full, lse_full, delta_full)
  pipeline.streamed_loop(
      wg=wg, tiles=tiles, work=work,
      # one release for all four: Q and dO are read until the step's end
      streams=[pipeline.Stream(q_smem, q_full, q_free),
               pipeline.Stream(do_smem, do_full, q_free),
               pipeline.Stream(lse_smem, lse_full, q_free),
               pipeline.Stream(delta_smem, delta_full, q_free)],
      compute_registers=plan.config.mosaic_bwd.compute_registers,
      carry_slots=plan.config.mosaic_bwd.carry_slots)


def backward(plan: Plan, q, k, v, q_segment_ids, kv_segment_ids, do, lse,
             delta, dlse):
  """dQ, dK, dV on padded inputs (layouts as the forward's; lse, delta and
  dlse float32 ``[batch, num_q_heads, seq_q]``, delta = rowsum(dO ∘ O) - dL,
  dlse = dL, read only under ``consistent_delta``; segment ids int32
  ``[batch, seq_q]`` / ``[batch, seq_kv]`` or None).
  Under ``jax.vmap`` a mapped axis is folded into the batch
  (:func:`pipeline.fold_vmap`: the fused form's ``pl.run_state`` has no
  batching rule)."""
  ids = ((q_segment_ids, kv_segment_ids) if plan.mask.has_segments else ())
  return pipeline.fold_vmap(functools.partial(_backward, plan))(
      q, k, v, do, lse, delta, dlse, *ids)


def _backward(plan: Plan, q, k, v, do, lse, delta, dlse, *ids):
  q_segment_ids, kv_segment_ids = ids or (None, None)
  batch, seq_q, num_heads, head_dim = q.shape
  _, seq_kv, num_kv_heads, _ = k.shape
  blocks = plan.config.mosaic_bwd
  bkv, stages, bq = blocks.block_kv, blocks.stages, blocks.block_q_dkv
  consistent = blocks.consistent_delta
  # (consistent_delta) dL, 0 where a row sees no key: read off L before any
  # conversion below
  dlse_seen = (common.consistent_delta_inputs(lse, dlse) if consistent
               else None)
  if blocks.lse_log2:
    # once here, not a tile a step: L2 (folded: S's start, -L2 / u)
    lse = common.lse_log2_for_recompute(lse)
    if _folds_lse(plan):
      lse = _s_start(lse, common.recompute_unit(plan.scale, plan.softcap))
  needs_mask = not plan.mask.is_trivial(seq_kv)
  seg_refs = ((q_segment_ids, kv_segment_ids) if plan.mask.has_segments
              else None)
  params = pipeline.compiler_params(plan)
  interpret = plgpu.InterpretGPUParams(detect_races=True) if plan.interpret \
      else None
  owned = lambda *shape_dtypes: [plgpu.SMEM((COMPUTE_WGS, *shape), dtype)
                                 for shape, dtype in shape_dtypes]
  streamed = lambda *shape_dtypes: [plgpu.SMEM((stages, *shape), dtype)
                                    for shape, dtype in shape_dtypes]
  # P/dS tiles in shared memory: the interpreter's SS form only (compiled, they
  # are the wgmmas' register operands)
  ds_or_pt = lambda shape: (plgpu.SMEM((COMPUTE_WGS, *shape), q.dtype)
                            if plan.interpret else None)

  dkdv_tiles = pipeline.Tiles.per_head(plan, num_kv_heads, seq_kv, batch,
                                       blocks.persistent)
  fused = blocks.fused_dq
  if blocks.stream_k and fused and dkdv_tiles.persistent and (
      not plan.mask.banded):
    # every key tile sees every query tile of its heads: equal steps
    units = math.prod(dkdv_tiles.grid)
    dkdv_tiles = dataclasses.replace(dkdv_tiles, stream_k=pipeline.StreamK.of(
        units, pipeline.num_ctas(plan, units), plan.group * seq_q // bq,
        dkdv_tiles.grid))
  sk = dkdv_tiles.stream_k
  part_type = None if sk is None else [
      jax.ShapeDtypeStruct((sk.part_rows, 2, COMPUTE_WGS * BLOCK_Q, head_dim),
                           jnp.float32)] * 2
  dkdv = plgpu.kernel(
      functools.partial(dkdv_kernel, plan=plan, block_q=bq,
                        num_q_blocks=seq_q // bq, needs_mask=needs_mask,
                        tiles=dkdv_tiles,
                        deferred_waits=blocks.deferred_waits),
      **dkdv_tiles.launch(plan),
      num_threads=COMPUTE_WGS + 1, thread_name="wg",
      out_type=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                jax.ShapeDtypeStruct(v.shape, v.dtype), part_type],
      scratch_types=(
          *owned(((BLOCK_Q, head_dim), k.dtype), ((BLOCK_Q, head_dim), v.dtype)),
          ds_or_pt((BLOCK_Q, bq)),
          *streamed(((bq, head_dim), q.dtype), ((bq, head_dim), q.dtype),
                    ((bq,), jnp.float32), ((bq,), jnp.float32)),
          plgpu.Barrier(num_arrivals=2, num_barriers=COMPUTE_WGS),
          *pipeline.barriers(num_streams=4, stages=stages,
                             shared_full=blocks.shared_full),
          *((plgpu.SMEM((2, COMPUTE_WGS, BLOCK_Q, bq), q.dtype),
             plgpu.SMEM((COMPUTE_WGS, bq, blocks.dq_columns(head_dim)),
                        jnp.float32),
             plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=3))
            if fused else (None, None, None))),
      compiler_params=params, interpret=interpret,
      kernel_name=kernel_names(blocks)[0])
  if fused:
    # dQ's float32 sum, zeroed, reduce-added into by the dK/dV kernel (in the
    # interpreter, one part per key tile and warpgroup, summed here); run_state
    # keeps the mutable buffer inside this computation
    # (Stream-K: the cut tiles' parts too; every buffer but dQ's is
    # overwritten whole, so XLA drops its zeros)
    def run(refs):
      dq_acc, *out_refs = refs
      dk, dv, parts = dkdv(q, k, v, do, lse, delta, seg_refs, dq_acc)
      for ref, x in zip(out_refs, [dk, dv, *(parts or [])]):
        ref[...] = x
    parts = dkdv_tiles.grid[1] * COMPUTE_WGS if plan.interpret else 1
    dq_acc, dk, dv, *parts = pl.run_state(run)((
        jnp.zeros((parts, *q.shape), jnp.float32), jnp.zeros_like(k),
        jnp.zeros_like(v), *(jnp.zeros(t.shape, t.dtype)
                             for t in part_type or [])))
    dq = (jnp.sum(dq_acc, axis=0) * plan.scale).astype(q.dtype)
    if sk is not None:
      dk, dv = merge(sk, dk, dv, *parts, interpret=plan.interpret)
    return dq, dk, dv
  dq_tiles = pipeline.Tiles.per_head(plan, num_heads, seq_q, batch,
                                     blocks.persistent)
  dq_call = plgpu.kernel(
      functools.partial(dq_kernel, plan=plan, block_kv=bkv,
                        num_kv_blocks=seq_kv // bkv, tiles=dq_tiles,
                        overlap=blocks.intra_wg_overlap),
      **dq_tiles.launch(plan),
      num_threads=COMPUTE_WGS + 1, thread_name="wg",
      out_type=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                jax.ShapeDtypeStruct(lse.shape, jnp.float32)
                if consistent else None],
      scratch_types=(
          *owned(((BLOCK_Q, head_dim), q.dtype), ((BLOCK_Q, head_dim), q.dtype),
                 ((BLOCK_Q,), jnp.float32), ((BLOCK_Q,), jnp.float32)),
          owned(((BLOCK_Q,), jnp.float32))[0] if consistent else None,
          ds_or_pt((BLOCK_Q, bkv)),
          *streamed(((bkv, head_dim), k.dtype), ((bkv, head_dim), v.dtype)),
          plgpu.Barrier(num_arrivals=4 + consistent,
                        num_barriers=COMPUTE_WGS),
          # shared_full: not with the overlap, whose K is read a step late
          *pipeline.barriers(num_streams=2, stages=stages, num_free=2,
                             shared_full=blocks.shared_full
                             and not blocks.intra_wg_overlap)),
      compiler_params=params, interpret=interpret,
      kernel_name=kernel_names(blocks)[1])
  if not consistent:
    dk, dv, _ = dkdv(q, k, v, do, lse, delta, seg_refs, None)
    dq, _ = dq_call(q, k, v, do, lse, delta, seg_refs, None)
    return dq, dk, dv
  # consistent_delta: dQ first, then dK/dV with D + each row's excess, a D
  # consistent with the backward's own P
  dq, excess = dq_call(q, k, v, do, lse, delta, seg_refs, dlse_seen)
  dk, dv, _ = dkdv(q, k, v, do, lse, delta + excess, seg_refs, None)
  return dq, dk, dv


def merge(sk: pipeline.StreamK, dk, dv, dk_part, dv_part,
          interpret: bool = False):
  """dK and dV of the key tiles Stream-K cut in two (:class:`pipeline.
  StreamK` over the dK/dV kernel's (kv head, key tile, batch) tiles): the
  float32 sum of their parts, CTA c's last (slot 1) and c + 1's first
  (slot 0) of ``dk_part``/``dv_part`` ``[ctas, 2, COMPUTE_WGS · BLOCK_Q,
  d]``, written over those tiles' rows of ``dk``/``dv`` ``[batch, seq_kv,
  kv_heads, d]`` in place (:func:`pipeline.merge_cut`, as the forward's
  :func:`pallas_kernels.mosaic.fwd.merge`)."""
  rows = dk_part.shape[2]

  def combine(parts, part_rows, index, outs):
    h, tile, b = index
    at = pl.ds(tile * rows, rows)
    first, second = part_rows
    for part_ref, out_ref in zip(parts, outs):
      total = part_ref[first, 1, :, :] + part_ref[second, 0, :, :]
      out_ref[b, at, h, :] = total.astype(out_ref.dtype)

  return pipeline.merge_cut(sk, combine, [dk_part, dv_part], [dk, dv],
                            "flashjax_dkdv_merge", interpret)
