"""The warp-specialised tile loop shared by the Hopper kernels.

A CTA has ``COMPUTE_WGS`` compute warpgroups and one producer warpgroup. Each
compute warpgroup owns one tile of rows (Q in the forward and dQ kernels, K/V
in dK/dV) and all of them walk the same range ``[lo, hi)`` of streamed tiles
(K/V, or Q/dO/L/D). The producer streams those into ``stages`` shared-memory
slots with TMA: ``full[slot]`` completes when a stream's tile has landed,
``free[slot]`` (``COMPUTE_WGS`` arrivals) when every compute warpgroup is done
with it. Streams may share a ``free`` barrier or have their own (the forward
frees K's slot as soon as S = Q Kᵀ is read, so the producer refills it while
P V still reads V). Each waiter observes every phase of the barriers it waits
on (the producer drains each ``free`` at the end), as the Mosaic GPU
interpreter checks.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from flashjax.config import MOSAIC_BLOCK_Q
from flashjax.config import MOSAIC_COMPUTE_WGS as COMPUTE_WGS

ROW = plgpu.Layout.WGMMA.reduce(1)      # a value per accumulator row
COL = plgpu.Layout.WGMMA.reduce(0)      # a value per accumulator column


@dataclasses.dataclass(frozen=True)
class Stream:
  """One streamed operand: ``src(j)`` is the GMEM view of tile j; ``smem`` has
  one slot per stage (its leading axis); ``full`` and ``free`` one barrier per
  stage (``free`` may be shared with other streams)."""

  src: Callable
  smem: object
  full: object
  free: object


@dataclasses.dataclass(frozen=True)
class Sync:
  """What a step does with its slot: ``wait(i)`` before it reads stream i's
  tile, ``release(i)`` (optional, at the step's top level) once it no longer
  reads it; the loop releases what the step did not."""

  wait: Callable
  release: Callable


def _distinct(barriers):
  out = []
  for b in barriers:
    if not any(b is o for o in out):
      out.append(b)
  return out


def streamed_loop(*, wg, lo, hi, streams, init, step, finish, full=None):
  """Run the producer and the compute warpgroups over tiles ``[lo, hi)``.

  ``init()`` (compute warpgroups, before the loop) returns the carry;
  ``step(j, slot, sync, carry, masked)`` returns the next carry (``sync``: a
  :class:`Sync` for the slot); ``finish(carry)`` writes the results.
  ``full = (a, b)``: the calling warpgroup's tiles in ``[a, b)`` have no
  masked entry and are stepped with ``masked=False``, the others with
  ``masked=True``; ``full=None``: no tile needs the mask.
  """
  stages = streams[0].smem.shape[0]
  frees = _distinct([stream.free for stream in streams])

  @pl.when(wg == COMPUTE_WGS)
  def _producer():
    plgpu.set_max_registers(40, action="decrease")

    def load(j, _):
      slot = lax.rem(j - lo, stages)
      for free in frees:
        # Reuse a slot only after every compute warpgroup released it.
        @pl.when(j - lo >= stages)
        def _():
          plgpu.barrier_wait(free.at[slot])
        for stream in streams:
          if stream.free is free:
            plgpu.copy_gmem_to_smem(stream.src(j), stream.smem.at[slot],
                                    stream.full.at[slot])
    lax.fori_loop(lo, hi, load, None)

    # Observe the releases not yet waited for, so every phase is consumed.
    for free in frees:
      def drain(j, _, free=free):
        plgpu.barrier_wait(free.at[lax.rem(j - lo, stages)])
      lax.fori_loop(jnp.maximum(lo, hi - stages), hi, drain, None)

  @pl.when(wg < COMPUTE_WGS)
  def _compute():
    plgpu.set_max_registers(232, action="increase")

    def loop(start, stop, carry, masked):
      def body(j, carry):
        slot = lax.rem(j - lo, stages)
        released = []

        def release(i):
          free = streams[i].free
          if not any(free is r for r in released):
            plgpu.barrier_arrive(free.at[slot])
            released.append(free)
        sync = Sync(
            wait=lambda i: plgpu.barrier_wait(streams[i].full.at[slot]),
            release=release)
        carry = step(j, slot, sync, carry, masked)
        for i in range(len(streams)):
          release(i)
        return carry
      return lax.fori_loop(start, stop, body, carry)

    carry = init()
    if full is None:
      carry = loop(lo, hi, carry, masked=False)
    else:
      # masked tiles before [a, b), the unmasked ones, masked tiles after
      a = jnp.clip(full[0], lo, hi)
      b = jnp.clip(full[1], a, hi)
      carry = loop(lo, a, carry, masked=True)
      carry = loop(a, b, carry, masked=False)
      carry = loop(b, hi, carry, masked=True)
    finish(carry)


def kv_loop(mask, *, wg, cta_start, k_ref, v_ref, k_smem, v_smem, k_full,
            v_full, k_free, v_free, batch, kv_head, block_kv: int,
            num_kv_blocks: int, init, step, finish,
            v_transposed: bool = False):
  """:func:`streamed_loop` over the K/V tiles (streams 0: K, 1: V) that some
  row of the CTA's ``COMPUTE_WGS · 64`` query rows from ``cta_start`` can see
  under ``mask`` (the forward and dQ kernels); the rest are skipped. Each
  compute warpgroup masks only the tiles its own 64 rows do not fully see.
  ``v_transposed``: V is ``[batch, kv_heads, d, seq_kv]`` (FP8) and its tiles
  ``[d, block_kv]``."""
  lo, hi = mask.kv_block_range(cta_start, COMPUTE_WGS * MOSAIC_BLOCK_Q,
                               block_kv, num_kv_blocks)
  full = (None if mask.is_trivial(num_kv_blocks * block_kv) else
          mask.kv_full_range(cta_start + wg * MOSAIC_BLOCK_Q, MOSAIC_BLOCK_Q,
                             block_kv))
  rows = lambda j: pl.ds(j * block_kv, block_kv)
  streamed_loop(
      wg=wg, lo=lo, hi=hi, init=init, step=step, finish=finish, full=full,
      streams=[Stream(lambda j: k_ref.at[batch, rows(j), kv_head], k_smem,
                      k_full, k_free),
               Stream(lambda j: v_ref.at[batch, kv_head, :, rows(j)]
                      if v_transposed else v_ref.at[batch, rows(j), kv_head],
                      v_smem, v_full, v_free)])


def load_owned(barrier, copies):
  """TMA ``copies`` ([(gmem, smem)]) on one barrier and wait for all of them."""
  for src, dst in copies:
    plgpu.copy_gmem_to_smem(src, dst, barrier)
  plgpu.barrier_wait(barrier)


def store(copies):
  """Registers -> SMEM -> GMEM for ``copies`` ([(value, smem, gmem)])."""
  for value, smem, _ in copies:
    smem[...] = value.astype(smem.dtype)
  plgpu.commit_smem()
  for _, smem, dst in copies:
    plgpu.copy_smem_to_gmem(smem, dst)
  plgpu.wait_smem_to_gmem(0)


def barriers(num_streams: int, stages: int, num_free: int = 1):
  """Scratch types of the loop's barriers: ``full`` per stream, then
  ``num_free`` ``free`` barriers."""
  return (*(plgpu.Barrier(num_barriers=stages) for _ in range(num_streams)),
          *(plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages)
            for _ in range(num_free)))


def wgmma_ss(a, b, shape):
  """``a @ b`` on the tensor cores, both operands in shared memory -> f32 regs."""
  def run(acc_ref):
    plgpu.wgmma(acc_ref, a, b)
    return acc_ref[...]
  return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def mma_acc(acc, a, b, a_smem=None, *, in_place: bool = True):
  """``acc + a @ b`` on the tensor cores: ``a`` a register array in the
  accumulator's layout (P or dS, 16-bit or FP8), ``b`` in shared memory,
  ``acc`` float32.

  ``a_smem=None``: ``a`` is the wgmma's register operand (FlashAttention 3's
  RS form; 16-bit, compiled only). Otherwise ``a`` goes through ``a_smem`` to
  an SS wgmma: what FP8 needs (jax 0.11.2 cannot relayout an accumulator into
  an 8-bit register operand) and what Mosaic GPU's CPU interpreter can run.
  ``in_place``: accumulate into ``acc`` (compiled); else add a fresh product
  to it (the interpreter cannot run an in-place accumulator).
  """
  if a_smem is not None:
    a_smem[...] = a
    plgpu.commit_smem()
    a = a_smem
  if not in_place:
    return acc + wgmma_ss(a, b, acc.shape)

  def run(acc_ref):
    plgpu.wgmma(acc_ref, a, b)
  return pl.run_state(run)(plgpu.ACC.init(acc))


def index_tiles(row_start, col_start, shape):
  """int32 row and column index tiles in the wgmma accumulator layout."""
  def iota(dim, start):
    return start + plgpu.broadcasted_iota(jnp.int32, shape, dim,
                                          layout=plgpu.Layout.WGMMA)
  return iota(0, row_start), iota(1, col_start)


def load_ids(row_ids, col_ids):
  """Segment ids of a tile's rows and columns (int32 GMEM refs) -> vectors in
  the accumulator's row and column layouts. Plain loads from global memory
  (Mosaic GPU optimises only shared-memory transfers), not TMA: the ids are
  small, and only masked steps read them."""
  return (plgpu.load(row_ids, layout=ROW, optimized=False),
          plgpu.load(col_ids, layout=COL, optimized=False))


def mask_scores(mask, s, row_start, col_start, ids=None, *,
                rows_are_keys=False):
  """``s`` with the entries ``mask`` hides set to -inf. The tile's rows start
  at index ``row_start``, its columns at ``col_start``; ``ids``: the rows' and
  the columns' segment ids (:func:`load_ids`), or None.
  ``rows_are_keys``: a ``[keys, queries]`` tile (dK/dV)."""
  rows, cols = index_tiles(row_start, col_start, s.shape)
  seg = () if ids is None else (
      lax.broadcast_in_dim(ids[0], s.shape, [0]),
      lax.broadcast_in_dim(ids[1], s.shape, [1]))
  if rows_are_keys:
    rows, cols, seg = cols, rows, seg[::-1]
  return jnp.where(mask.predicate(rows, cols, *seg), s, -jnp.inf)
