"""Hopper flash-attention forward (FlashAttention 3's layout), Pallas Mosaic GPU.

Each CTA owns ``2 · BLOCK_Q`` query rows: two compute warpgroups of
``BLOCK_Q`` rows each, plus one producer warpgroup that streams the K/V tiles
the CTA can see (causal/window tiles outside are skipped) through
:func:`pipeline.streamed_loop`. Both matmuls are wgmma: S = Q Kᵀ from shared
memory, and O += P V with P as the register operand, accumulated in place
(RS form). The two compute warpgroups ping-pong (:class:`pipeline.PingPong`),
so one warpgroup's softmax overlaps the other's matmuls (FlashAttention 3).

Mosaic GPU's CPU interpreter (jax 0.11.2) cannot run an RS wgmma or an
in-place accumulator; in interpret mode P goes through shared memory to an SS
wgmma instead (:func:`pipeline.mma_acc`), the one place the two forms differ
(shared/mosaic-gpu-primer.md §4). The RS form is lowered for CUDA in the tests
and run compiled on the H100.

FP8 (Q, K, V pre-quantised, or quantised by the ``fp8=True`` policy): the same
loop with the q·k descale folded into each row's unit and P scaled by the
format's largest value (both in the exponent's FMA, no multiply per entry,
:func:`common.online_softmax_step`; m stays in raw Q Kᵀ units, l sums the
scaled P, so O needs only V's descale), P rounded to FP8, and V transposed by
XLA to ``[batch, kv_heads, d, seq_kv]`` before the kernel (8-bit wgmma
operands must be K-major). P stays the register
operand: jax 0.11.2 cannot relayout the accumulator into the 8-bit operand
layout, so the accumulator's registers are read as that layout as they are
(:func:`pipeline.fp8_register_operand`), which permutes P's columns within
each 16, and the same transpose puts V's keys in that order
(:func:`common.fp8_pv_key_order`; the interpreter permutes P explicitly).
Under the policy's ``fp8_qk=False`` Q and K stay 16-bit: S is the 16-bit
wgmma and only P V runs in FP8 (no q·k descale).

``MosaicBlocks(persistent=True)`` (the default with no band, and causal
up to 12k keys, 16-bit d 64 beyond where Stream-K splits the pairs): one
CTA per SM walks the (head, query tile, batch) tiles, its K/V pipeline
running on from one tile to the next (:class:`pipeline.Tiles`); with a
band it takes query tiles in mirrored pairs, so every CTA gets the same
work. The two compute warpgroups mask the
same K/V tiles (:func:`pipeline.kv_work`): when they ran different steps
into the ping-pong's named barriers, the banded form did not finish on the
H200 (results/debug-hang-h200.md; fixed, results/raw/hang-check-session16-
h200.log).

``MosaicBlocks(prefetch_q=True)`` (the default): the producer warpgroup
loads each tile's Q too (:class:`pipeline.Owned`), the next tile's as soon
as both compute warpgroups have read their last S = Q Kᵀ, and O (and L)
leave through a tile of their own, the store left in flight until the next
one's (FlashAttention 3's epilogue), so on a persistent grid a tile's Q load
and O store overlap the neighbouring tiles' matmuls. On the H200 it took d
128 non-causal from 0.93 to 0.98× cuDNN at 4k and 0.98 to 1.09× at 1k
(results/raw/opts-prefetch-nc-h200.md).

``MosaicBlocks(early_handover=True)``: the ping-pong hands over when a
tile's last P V is issued (a predicated ``bar.arrive``) instead of after the
next tile's first Q Kᵀ, which then hands over nothing (but the CTA's very
first). Without it, a warpgroup's last P V of a tile waits until the other
has stored its O, waited for its next Q and issued its next Q Kᵀ, so the
tensor cores idle through each warpgroup's epilogue in turn, once per tile.

``MosaicBlocks(intra_wg_overlap=True)`` (FlashAttention 3's intra-warpgroup
overlap): step j issues S_j = Q K_jᵀ together with P_{j-1} V_{j-1} and
computes P_j while the latter runs; V is read one step late (a lagged
:class:`pipeline.Stream`), a tile's first step only computes P, its drain adds
the last P V; P is carried in registers (in the interpreter, kept in shared
memory). The ping-pong then hands over after each pair.

``MosaicBlocks(stream_k=True)`` (the default without a band from 2k keys,
causal from 8k): where whole units (query tiles, or on the causal paired
grid mirrored pairs of them) leave the persistent grid's last round partly
idle, the last rounds' units are split by K/V steps
(:class:`pipeline.StreamK`, :func:`stream_k`); a cut tile's two parts each
write their O and L to a buffer of parts, and :func:`merge` combines them in
place after the kernel. Non-causal 2-3% faster at 2k-16k
(results/raw/opts-stream-k-session28-h200.md,
opts-stream-k-2k-session29-h200.md), causal 0-5% at 8k-12k
(confirm-stream-k-causal-session29-h200.md).

``MosaicBlocks(multicast=True)`` (forty-third session; off: on an H100 it
gained 0.5-2.8% at 4k keys, nothing at 16k, and lost 11% at d 64 16k,
docs/defaults.md): on the persistent grid without a band, CTAs in clusters
of two take neighbouring query tiles of one head and walk its K/V tiles in
step, each tile loaded once for both, half by each CTA's TMA into both CTAs'
shared memory (:attr:`pipeline.Tiles.cluster`); a slot is refilled once
both CTAs' compute warpgroups released it (a cluster barrier).
FlashAttention 3's cluster at d >= 128 (16-bit, non-causal). With
Stream-K, a unit is the cluster's pair of tiles, each CTA its own part.

``MosaicBlocks(owned_registers=True)`` (compiled): Q is loaded into
registers at a tile's first step and S = Q Kᵀ issued with it as the register
operand (8-bit layout in FP8), so each step reads only K from shared memory.
Thirty-seventh session (results/raw/opts-owned-registers-{fwd,fp8}-
session37-h200.md): d 128 non-causal 1.6-1.9% faster, slower elsewhere, FP8
9-21% slower (it spills). Three more processes on an H100 (forty-fourth
session) agreed from 4k keys: the default there since v28 (16-bit d 128
without a band; docs/defaults.md).

Status: the core and FP8 test suites pass compiled on the H100 and H200 and
in the interpreter (race detector on); ``backend="auto"`` picks it on sm_90.
The banded persistent grid (mirrored pairs) is the default causal up to 12k
keys, 3-29% faster there than one tile a CTA
(results/raw/short-causal-h200.md, causal-long-session17-h200.md,
causal-8k-h200.md, causal-12k-h200.md), and beyond at 16-bit d 64 where
Stream-K splits the pairs (2-6% faster at 16k-32k,
confirm-d64-causal-long-fwd-session46-h100.md); windows keep one tile a
CTA (not timed). The intra-warpgroup overlap has run in the interpreter (race detector on) and compiled on the
H200 (``tests/test_mosaic.py``, ``tests/test_large.py``); it is the 16-bit
d 128 causal forward's above 12k keys (one tile a CTA: 6-7% faster at 16k
than the early hand-over, results/raw/confirm-overlap-session27-h200.md)
and off elsewhere: even non-causal, slower on the paired grid and in FP8
(results/raw/opts-overlap-session27-h200.md), 10-23% slower at d 64
(tenth session, results/tune-mosaic-fwd-h200.json).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from flashjax.checks import Plan
from flashjax.config import MOSAIC_BLOCK_Q as BLOCK_Q
from flashjax.config import MOSAIC_COMPUTE_WGS as COMPUTE_WGS
from pallas_kernels import common
from pallas_kernels.mosaic import pipeline


def kernel_name(fp8: bool) -> str:
  """The forward's kernel name (in profiles and Nsight, suffixed
  ``_mosaic_gpu_kernel``)."""
  return "flashjax_fwd_fp8" if fp8 else "flashjax_fwd"


def fwd_kernel(q_ref, k_ref, v_ref, seg_refs, descale_ref, o_ref, lse_ref,
               r_ref, part_refs, q_smem, o_smem, r_smem, k_smem, v_smem,
               p_smem, lse_smem, q_barriers, schedule, k_full, v_full,
               k_free, v_free, *,
               plan: Plan, block_kv: int, num_kv_blocks: int,
               tiles: pipeline.Tiles, overlap: bool, prefetch_q: bool,
               early_handover: bool):
  # q_ref/o_ref: [batch, seq_q, heads, d]; k_ref: [batch, seq_kv, kv_heads, d];
  # v_ref: like k_ref, or (FP8) [batch, kv_heads, d, seq_kv]; lse_ref: [batch,
  # heads, seq_q]; seg_refs: None or the int32 segment ids ([batch, seq_q],
  # [batch, seq_kv]); descale_ref: None or (FP8) float32 [heads, 2, BLOCK_Q],
  # each head's q·k descale and v descale, repeated per row. r_ref: None, or
  # (o_residual) O's rounding residual, like o_ref, through r_smem. part_refs:
  # None, or (Stream-K, tiles.stream_k) the cut tiles' parts' O [part_rows, 2,
  # COMPUTE_WGS · BLOCK_Q, d], L [part_rows, 2, COMPUTE_WGS · BLOCK_Q] and
  # (o_residual) r like O.
  # q_smem holds Q per compute warpgroup, and then O unless o_smem is given
  # (FP8: O is not in Q's dtype; prefetch_q: the next tile's Q may be landing
  # in q_smem); k_smem/v_smem are the streamed K/V slots;
  # p_smem: P's tile per warpgroup for an SS wgmma (the interpreter), None
  # when P is the register operand. tiles: the CTA's (head, query tile,
  # batch) tiles. overlap: FlashAttention 3's intra-warpgroup overlap (step j
  # issues S_j = Q K_jᵀ and P_{j-1} V_{j-1} together and computes P_j while
  # P_{j-1} V_{j-1} runs; V is read one step late). q_barriers: each
  # warpgroup's Q barrier (it loads its own Q), or (prefetch_q: the producer
  # loads Q, :class:`pipeline.Owned`) the pair (full, free). early_handover:
  # the ping-pong hands over at a tile's last P V (not with overlap).
  wg = lax.axis_index("wg")
  fp8 = plan.fp8
  head_dim = q_ref.shape[-1]
  q_tile = q_smem.at[wg]
  o_tile = (q_smem if o_smem is None else o_smem).at[wg]
  p_tile = None if p_smem is None else p_smem.at[wg]
  # FP8: P comes out of the softmax scaled by the format's largest value
  p_dtype, p_scale = ((fp8, common.fp8_p_scale(fp8)) if fp8 else
                      (q_ref.dtype, 1.0))
  # S2 = x · unit (FP8: the q·k descale folded in per row)
  unit = functools.partial(common.fwd_unit, plan.scale, plan.softcap)
  # one warpgroup's softmax overlaps the other's matmuls (FlashAttention 3)
  pingpong = pipeline.PingPong(wg, schedule)
  # Q as the register operand of S = Q Kᵀ (compiled), loaded at a tile's
  # first step
  in_registers = plan.config.mosaic.owned_registers and not plan.interpret

  def work(index, part=None):
    h, q_tile_index, b = index
    cta_start = pipeline.heavy_first(plan.mask, q_tile_index,
                                     tiles.grid[1]) * (COMPUTE_WGS * BLOCK_Q)
    q_start = cta_start + wg * BLOCK_Q
    kv_head = lax.div(h, jnp.int32(plan.group))
    rows = pl.ds(q_start, BLOCK_Q)

    def descale(i):
      # FP8: row i of this head's descales, in the accumulator's row layout
      return plgpu.load(descale_ref.at[h, i], layout=pipeline.ROW,
                        optimized=False)

    def init():
      if not prefetch_q:
        pipeline.load_owned(q_barriers.at[wg], [(q_ref.at[b, rows, h], q_tile)])
      # carry: acc, m, l, FP8's q·k descale per row (loaded once), (overlap,
      # P a register operand) the last step's P, and (owned_registers) Q,
      # zeros until the tile's first step loads it
      p = q = None
      if overlap and p_tile is None:
        p = plgpu.layout_cast(jnp.zeros((BLOCK_Q, block_kv), p_dtype),
                              pipeline.operand_layout(p_dtype))
      if in_registers:
        q = plgpu.layout_cast(jnp.zeros((BLOCK_Q, head_dim), q_ref.dtype),
                              pipeline.operand_layout(q_ref.dtype))
      return (jnp.zeros((BLOCK_Q, head_dim), jnp.float32),
              jnp.full((BLOCK_Q,), -jnp.inf, jnp.float32),
              jnp.zeros((BLOCK_Q,), jnp.float32),
              descale(0) if fp8 and plan.fp8_qk else None, p, q)

    def ids_of(j, masked):
      # segment ids of the rows and of tile j, read first so that their latency
      # hides behind the wait for K and the Q Kᵀ wgmma
      return None if not masked or seg_refs is None else pipeline.load_ids(
          seg_refs[0].at[b, rows], seg_refs[1].at[b, pl.ds(j * block_kv,
                                                            block_kv)])

    def softmax(s, j, m, l, qk_descale, ids, masked):
      # S = Q Kᵀ -> P (float32; :func:`rounded` for the P V product), m, l,
      # alpha
      # logits, S2 = x · unit (softcap: c · tanh(scale · Q Kᵀ / c))
      s = common.fwd_logits(s, scale=plan.scale, softcap=plan.softcap,
                            qk_descale=qk_descale)
      if masked:
        s = pipeline.mask_scores(plan.mask, s, q_start, j * block_kv, ids,
                                 vectors=plan.config.mosaic.index_vectors)
      # P = exp2(S - m_new) (FP8: · p_scale), l_new = alpha · l + rowsum(P)
      return common.online_softmax_step(s, m, l, unit(qk_descale), p_scale)

    def rounded(p):
      # P for the P V product: 16-bit, or FP8's scaled P, rounded to FP8 by
      # :func:`pv_operand` (Mosaic GPU has no optimisation barrier over 8-bit
      # registers)
      return p if fp8 else p.astype(p_dtype)

    def pv_operand(p):
      # P as the P V wgmma's A operand, from :func:`rounded`'s P. FP8: its
      # columns in V's key order (common.fp8_pv_key_order), by reading the
      # registers as the 8-bit layout (compiled) or by permuting them.
      p = p.astype(p_dtype)
      if not fp8:
        return p
      if plan.interpret:
        return common.fp8_pv_key_order(p, axis=1)
      return pipeline.fp8_register_operand(p)

    def rescale(acc, alpha):
      return acc * lax.broadcast_in_dim(alpha, acc.shape, [0])

    def v_operand(slot):
      # FP8: V's tile is [d, block_kv], K-major as wgmma needs
      return v_smem.at[slot].T if fp8 else v_smem.at[slot]

    def qk(slot, q, handover=None):
      # S = Q Kᵀ (q: Q's registers, or None: its tile); while it runs, the
      # other warpgroup may issue its P V (handover: a bool scalar, if it may)
      def run(acc_ref):
        plgpu.wgmma(acc_ref, q_tile if q is None else q, k_smem.at[slot].T)
        pingpong.signal(when=handover)
        return acc_ref[...]
      return pl.run_scoped(run, plgpu.ACC((BLOCK_Q, block_kv), jnp.float32))

    def step(j, slot, sync, carry, masked):
      acc, m, l, qk_descale, _, q = carry
      ids = ids_of(j, masked)
      sync.wait(0)
      # early_handover: a tile's first Q Kᵀ does not hand over (the last
      # tile's last P V did), except the CTA's very first
      handover = (jnp.logical_or(jnp.logical_not(sync.first), sync.count == 0)
                  if early_handover else None)
      s = qk(slot, q, handover=handover)
      sync.release(0)                    # K's slot can be refilled
      sync.release_owned()               # (prefetch_q) and, last, Q's
      p, m, l, alpha = softmax(s, j, m, l, qk_descale, ids, masked)
      acc = rescale(acc, alpha)
      # the softmax is done before the hand-over (the order matters for speed,
      # as in JAX's attention_mgpu)
      acc, m, l, p = lax.optimization_barrier((acc, m, l, rounded(p)))
      sync.wait(1)
      pingpong.wait()                    # the other's Q Kᵀ is issued
      # acc += P V (early_handover: the tile's last one hands over as soon as
      # it is issued, so the other warpgroup's last P V follows it and each
      # warpgroup's epilogue overlaps the other's matmuls)
      acc = pipeline.mma_acc(
          acc, pv_operand(p), v_operand(slot), p_tile,
          in_place=not plan.interpret,
          issued=(lambda: pingpong.signal(when=sync.last))
          if early_handover else None)
      return acc, m, l, qk_descale, None, q

    # overlap: P_{j-1} is carried (registers) or kept in p_tile (the
    # interpreter) until step j issues P_{j-1} V_{j-1}
    def keep(p):
      return pipeline.carried(pv_operand(p), p_tile)

    def first_step(j, slot, sync, carry, masked):
      acc, m, l, qk_descale, _, q = carry
      ids = ids_of(j, masked)
      sync.wait(0)
      pingpong.wait()
      s = qk(slot, q)
      sync.release(0)
      sync.release_owned()
      p, m, l, _ = softmax(s, j, m, l, qk_descale, ids, masked)
      # acc is 0: no rescale
      return acc, m, l, qk_descale, keep(rounded(p)), q

    def overlapped_step(j, slot, sync, carry, masked):
      acc, m, l, qk_descale, p_prev, q = carry
      ids = ids_of(j, masked)
      sync.wait(0)
      sync.wait_prev(1)
      pingpong.wait()                    # the other has issued its pair
      p_operand = p_tile if p_tile is not None else p_prev
      if plan.interpret:   # no in-place accumulator: the products in turn
        s = qk(slot, q)
        acc = acc + pipeline.wgmma_ss(p_operand, v_operand(sync.prev),
                                      acc.shape)
        sync.release(0)
        sync.release_owned()
        p, m, l, alpha = softmax(s, j, m, l, qk_descale, ids, masked)
        p = rounded(p)
      else:
        def run(acc_ref, s_ref):
          # S_j = Q K_jᵀ and acc += P_{j-1} V_{j-1} issued together; P_j is
          # computed while the latter runs
          acc_ref[...] = acc
          plgpu.wgmma(s_ref, q_tile if q is None else q, k_smem.at[slot].T)
          plgpu.wgmma(acc_ref, p_operand, v_operand(sync.prev))
          pingpong.signal()
          s = plgpu.wgmma_accumulator_load(s_ref, wait_n=1)
          sync.release(0)                # K's slot can be refilled
          sync.release_owned()
          p, m_new, l_new, alpha = softmax(s, j, m, l, qk_descale, ids, masked)
          return (plgpu.wgmma_accumulator_load(acc_ref), rounded(p), m_new,
                  l_new, alpha)
        acc, p, m, l, alpha = pl.run_scoped(
            run, plgpu.ACC(acc.shape, jnp.float32),
            plgpu.ACC((BLOCK_Q, block_kv), jnp.float32))
      sync.release_prev(1)               # V_{j-1}'s slot can be refilled
      return rescale(acc, alpha), m, l, qk_descale, keep(p), q

    def drain(carry, sync):
      # acc += P V of the last tile
      acc, m, l, qk_descale, p_prev, q = carry
      sync.wait_prev(1)
      acc = pipeline.mma_acc(acc, p_tile if p_tile is not None else p_prev,
                             v_operand(sync.prev), in_place=not plan.interpret)
      return acc, m, l, qk_descale, p_prev, q

    def finish(carry):
      # O = acc / l (FP8: · v descale), L = m + log l; O goes out
      # through shared memory.
      o, lse = common.finalize(*carry[:3], unit(carry[3]), p_scale)
      if fp8:
        o = o * lax.broadcast_in_dim(descale(1), o.shape, [0])
      copies = [(o, o_tile, o_ref.at[b, rows, h]),
                (lse, lse_smem.at[wg], lse_ref.at[b, h, rows])]
      if r_ref is not None:
        # o_residual: what rounding O drops, so that the backward's D =
        # rowsum(dO ∘ (O + r)) is the unrounded O's
        copies.append((common.rounding_residual(o, o_ref.dtype),
                       r_smem.at[wg], r_ref.at[b, rows, h]))
      # a Stream-K unit's part of a cut tile: to the parts' row of its slot
      elsewhere = None
      if part is not None:
        at = (part.cta, jnp.maximum(part.slot, 0), pl.ds(wg * BLOCK_Q, BLOCK_Q))
        elsewhere = (part.slot >= 0, [ref.at[at] for ref in part_refs])
      pipeline.store(copies, wait=not prefetch_q, elsewhere=elsewhere)

    w = pipeline.kv_work(
        plan.mask, cta_start=cta_start, k_ref=k_ref, v_ref=v_ref,
        batch=b, kv_head=kv_head, block_kv=block_kv,
        num_kv_blocks=num_kv_blocks, init=init, step=step, finish=finish,
        v_transposed=bool(fp8))
    if part is not None:
      w = dataclasses.replace(w, lo=jnp.maximum(w.lo, part.lo),
                              hi=jnp.minimum(w.hi, part.hi))
    if prefetch_q:
      w = dataclasses.replace(w, owned_src=lambda i: q_ref.at[
          b, pl.ds(cta_start + i * BLOCK_Q, BLOCK_Q), h])
    if overlap:
      w = dataclasses.replace(w, first=first_step, step=overlapped_step,
                              drain=drain)
    if not in_registers:
      return w

    def load_q(j, slot, sync, carry, masked, first=w.first or w.step):
      # the tile's first step: Q into registers (prefetch_q: the producer's
      # copy has landed), then the step
      q, = pipeline.register_operands(q_tile)
      return first(j, slot, sync, (*carry[:-1], q), masked)
    return dataclasses.replace(w, first=load_q)

  k_full, v_full = pipeline.fulls(k_full, v_full)    # (shared_full) one
  pipeline.streamed_loop(
      wg=wg, tiles=tiles, work=work,
      streams=[pipeline.Stream(k_smem, k_full, k_free),
               pipeline.Stream(v_smem, v_full, v_free, lagged=overlap)],
      # Plain order (P V after the other's Q Kᵀ): warpgroup 1 starts half a
      # step behind, warpgroup 0 ends half a step on. Overlap (each step
      # issues its pair after the other's): warpgroup 1 lets warpgroup 0 go
      # first, which takes that hand-over back at the end.
      start=lambda: pl.when(wg == 1)(
          pingpong.signal if overlap else pingpong.wait),
      end=functools.partial(end, wg, pingpong, overlap, prefetch_q,
                            early_handover),
      compute_registers=plan.config.mosaic.compute_registers,
      owned=pipeline.Owned(q_smem, *q_barriers) if prefetch_q else None,
      carry_slots=plan.config.mosaic.carry_slots)


def end(wg, pingpong, overlap: bool, prefetch_q: bool, early_handover: bool,
        total):
  """A compute warpgroup's last act after ``total`` steps: warpgroup 0 takes
  the ping-pong's last hand-over back (:func:`fwd_kernel`'s ``start``; with
  ``early_handover`` each warpgroup's steps hand over once more than they
  wait, so warpgroup 0 ends with a wait, or with no step a signal); with
  ``prefetch_q`` each waits for its last O store, left in flight."""
  if overlap:
    pl.when(wg == 0)(pingpong.wait)
  elif early_handover:
    pl.when((wg == 0) & (total > 0))(pingpong.wait)
    pl.when((wg == 0) & (total == 0))(pingpong.signal)
  else:
    pl.when(wg == 0)(pingpong.signal)
  if prefetch_q:
    plgpu.wait_smem_to_gmem(0)


def forward(plan: Plan, q, k, v, q_segment_ids=None, kv_segment_ids=None,
            descale=None, residual: bool = False):
  """Run the Hopper forward on padded inputs.

  Args:
    q: ``[batch, seq_q, num_q_heads, head_dim]``, bf16/f16 (or FP8 under
      ``plan.fp8``), seq_q a multiple of ``2 · BLOCK_Q``, head_dim 64, 128
      or 256.
    k, v: ``[batch, seq_kv, num_kv_heads, head_dim]``, q's dtype, seq_kv a
      multiple of ``plan.config.mosaic.block_kv``.
    q_segment_ids, kv_segment_ids: int32 ``[batch, seq_q]`` /
      ``[batch, seq_kv]``, or None.
    descale: FP8 only: float32 ``[num_q_heads, 4]``, each query head's q, k
      and v descales (:func:`flashjax.checks.check_descales`).
    residual: also return O's rounding residual r (16-bit only;
      ``MosaicBlocks.o_residual``): ``O + r`` is the float32 O before
      rounding, to about twice O's bits.

  FP8: wgmma takes 8-bit operands only K-major, so the kernel reads V as
  ``[batch, kv_heads, d, seq_kv]``, its keys in
  :func:`common.fp8_pv_key_order`: given so under ``plan.v_key_major``
  (:func:`flashjax.fp8.quantize_v`, the transpose in the quantisation's pass),
  else transposed by XLA before the kernel (one pass over V; under the
  ``fp8=True`` policy it fuses with the quantisation).

  Returns:
    O ``[batch, seq_q, num_q_heads, head_dim]`` in ``plan.dtype``, L
    (natural log, float32) ``[batch, num_q_heads, seq_q]``, and with
    ``residual`` r like O.
  """
  batch, seq_q, num_heads, head_dim = q.shape
  if residual and plan.fp8:
    raise ValueError("O's rounding residual is the 16-bit forward's only.")
  seq_kv = k.shape[1]
  blocks = plan.config.mosaic
  bkv, stages = blocks.block_kv, blocks.stages
  tiles = output_tiles(plan, num_heads, seq_q, batch, seq_kv)
  sk = tiles.stream_k
  kernel = functools.partial(fwd_kernel, plan=plan, block_kv=bkv,
                             num_kv_blocks=seq_kv // bkv, tiles=tiles,
                             overlap=blocks.intra_wg_overlap,
                             prefetch_q=blocks.prefetch_q,
                             early_handover=blocks.early_handover
                             and not blocks.intra_wg_overlap)
  interpret = plgpu.InterpretGPUParams(detect_races=True) if plan.interpret \
      else None
  fp8 = plan.fp8
  if fp8 and not plan.v_key_major:
    v = common.fp8_v_key_major(v)
  if fp8:
    descale = jnp.broadcast_to(
        jnp.stack([descale[:, 0] * descale[:, 1],
                   descale[:, 2]],
                  axis=1)[:, :, None], (num_heads, 2, BLOCK_Q))
  v_tile = (head_dim, bkv) if fp8 else (bkv, head_dim)
  rows = COMPUTE_WGS * BLOCK_Q
  o_type = jax.ShapeDtypeStruct(q.shape, plan.dtype)
  o_part = jax.ShapeDtypeStruct((sk.part_rows, 2, rows, head_dim),
                                plan.dtype) if sk else None
  parts = None if sk is None else (
      o_part, jax.ShapeDtypeStruct((sk.part_rows, 2, rows), jnp.float32),
      *[o_part] * residual)
  o_tile = plgpu.SMEM((COMPUTE_WGS, BLOCK_Q, head_dim), plan.dtype)
  o, lse, r, parts = plgpu.kernel(
      kernel,
      **tiles.launch(plan),
      num_threads=COMPUTE_WGS + 1, thread_name="wg",
      out_type=[o_type,
                jax.ShapeDtypeStruct((batch, num_heads, seq_q), jnp.float32),
                o_type if residual else None, parts],
      scratch_types=(
          plgpu.SMEM((COMPUTE_WGS, BLOCK_Q, head_dim), q.dtype),
          o_tile if fp8 or blocks.prefetch_q else None,
          o_tile if residual else None,
          plgpu.SMEM((stages, bkv, head_dim), k.dtype),
          plgpu.SMEM((stages, *v_tile), v.dtype),
          plgpu.SMEM((COMPUTE_WGS, BLOCK_Q, bkv), fp8 or q.dtype)
          if plan.interpret else None,
          plgpu.SMEM((COMPUTE_WGS, BLOCK_Q), jnp.float32),
          (plgpu.Barrier(num_barriers=COMPUTE_WGS),
           plgpu.Barrier(num_barriers=COMPUTE_WGS)) if blocks.prefetch_q
          else plgpu.Barrier(num_barriers=COMPUTE_WGS),
          # the ping-pong's: named hardware barriers when compiled
          plgpu.Barrier(num_barriers=2) if plan.interpret else None,
          # shared_full: not with the overlap, whose V is read a step late
          *pipeline.barriers(num_streams=2, stages=stages, num_free=2,
                             shared_full=blocks.shared_full
                             and not blocks.intra_wg_overlap,
                             cluster=tiles.cluster)),
      compiler_params=pipeline.compiler_params(plan),
      interpret=interpret,
      kernel_name=kernel_name(fp8),
  )(q, k, v, (q_segment_ids, kv_segment_ids) if plan.mask.has_segments
      else None, descale if fp8 else None)
  outs = (o, lse, r) if residual else (o, lse)
  return outs if sk is None else merge(sk, plan.mask, outs, parts,
                                       interpret=plan.interpret)


def output_tiles(plan: Plan, num_heads: int, seq_q: int, batch: int,
                 seq_kv: int, with_stream_k: bool | None = None
                 ) -> pipeline.Tiles:
  """The forward's (head, query tile, batch) tiles over the padded lengths:
  persistent as ``plan.config.mosaic`` says, in clusters of two sharing
  their K/V tiles (``multicast``) where the grid is persistent, unbanded
  and each head's query tiles pair up, with Stream-K's schedule
  (:func:`stream_k`) where ``with_stream_k`` (default: the config's
  ``stream_k``) and the grid takes one."""
  blocks = plan.config.mosaic
  tiles = pipeline.Tiles.per_head(plan, num_heads, seq_q, batch,
                                  blocks.persistent)
  if (blocks.multicast and tiles.persistent and tiles.paired is None
      and not plan.mask.banded and tiles.grid[1] % 2 == 0):
    tiles = dataclasses.replace(tiles, cluster=2)
  if with_stream_k is None:
    with_stream_k = blocks.stream_k
  if not (with_stream_k and tiles.persistent):
    return tiles
  return dataclasses.replace(tiles, stream_k=stream_k(
      plan, tiles, blocks.block_kv, seq_kv // blocks.block_kv))


def stream_k(plan: Plan, tiles: pipeline.Tiles, block_kv: int,
             num_kv_blocks: int) -> pipeline.StreamK | None:
  """Stream-K's schedule of the forward's persistent grid (tiles of
  ``COMPUTE_WGS · BLOCK_Q`` query rows), or None. Without a band every tile
  has ``num_kv_blocks`` steps. Paired (a causal mask's mirrored query
  tiles), only where every pair has the same steps and every tile's K/V
  range starts at the first K/V tile (causal without a window's left edge,
  the diagonal on a K/V tile boundary: the benchmark's shapes)."""
  walk = tiles.walk()
  units = math.prod(walk)
  ctas = pipeline.num_ctas(plan, units, tiles.cluster)
  if tiles.paired is None:
    return pipeline.StreamK.of(units, ctas, num_kv_blocks, walk,
                               cluster=tiles.cluster)
  n, rows = tiles.grid[tiles.paired], COMPUTE_WGS * BLOCK_Q

  def kv_range(i):
    # tile i's K/V tiles, as the kernel's pipeline.kv_work takes them
    start = pipeline.heavy_first(plan.mask, i, n) * rows
    return plan.mask.kv_block_range(start, rows, block_kv, num_kv_blocks)
  ranges = [kv_range(i) for i in range(n)]     # Python ints
  pairs = {hi - lo + ranges[n - 1 - i][1] - ranges[n - 1 - i][0]
           for i, (lo, hi) in enumerate(ranges[:n // 2])}
  if n % 2 or len(pairs) != 1 or any(lo for lo, _ in ranges):
    return None
  return pipeline.StreamK.of(units, ctas, pairs.pop(), walk, tiles.paired,
                             first_steps=lambda i: kv_range(i)[1])


def merge(sk: pipeline.StreamK, mask, outs, parts, interpret: bool = False):
  """O and L (and O's rounding residual r) of the tiles Stream-K cut in two
  (:class:`pipeline.StreamK`), from their parts' (each normalised over its
  own keys, with its own L): L = log(exp L₁ + exp L₂), O = exp(L₁ - L) O₁ +
  exp(L₂ - L) O₂ in float32 (a part or row that saw no key: weight 0; with
  r, each part's O is O + r), written over those tiles' rows of ``outs`` =
  (o [batch, seq_q, heads, d], lse [batch, heads, seq_q][, r like o]) in
  place (aliased: nothing else of them is read or copied). One program per
  boundary between CTAs c and c + 1 (the Stream-K CTAs' last one has none),
  a Triton-lowered Pallas kernel. ``sk``'s units index the forward's
  (heads, query tiles, batch) grid, its query tiles in
  :func:`pipeline.heavy_first`'s order under ``mask``; ``parts`` = (o_part
  [sk.part_rows, 2, rows, d], lse_part [sk.part_rows, 2, rows][, r_part
  like o_part])."""
  rows = parts[0].shape[2]
  num_tiles = outs[0].shape[1] // rows

  def combine(part_refs, part_rows, index, out_refs):
    h, q_tile, b = index
    o_part_ref, lse_part_ref, *r_part_ref = part_refs
    first, second = part_rows

    def part_o(i, j):
      # part j of CTA i's O (+ r) in float32
      o = o_part_ref[i, j, :, :].astype(jnp.float32)
      for ref in r_part_ref:
        o = o + ref[i, j, :, :].astype(jnp.float32)
      return o
    # part 1: the tile's first keys, c's last unit; part 2: c + 1's first
    l1, l2 = lse_part_ref[first, 1, :], lse_part_ref[second, 0, :]
    top = jnp.maximum(l1, l2)
    seen = top > -jnp.inf
    l = jnp.where(seen, top + jnp.log(jnp.exp(l1 - top) + jnp.exp(l2 - top)),
                  -jnp.inf)
    w1 = jnp.where(l1 > -jnp.inf, jnp.exp(l1 - l), 0.0)
    w2 = jnp.where(l2 > -jnp.inf, jnp.exp(l2 - l), 0.0)
    o_cut = w1[:, None] * part_o(first, 1) + w2[:, None] * part_o(second, 0)
    at = pl.ds(pipeline.heavy_first(mask, q_tile, num_tiles) * rows, rows)
    o_ref, lse_ref, *r_ref = out_refs
    o_ref[b, at, h, :] = o_cut.astype(o_ref.dtype)
    lse_ref[b, h, at] = l
    if r_ref:
      r_ref[0][b, at, h, :] = common.rounding_residual(o_cut, o_ref.dtype)

  return tuple(pipeline.merge_cut(sk, combine, list(parts), list(outs),
                                  "flashjax_fwd_merge", interpret))
