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
from jax.experimental.mosaic.gpu import utils as mgpu_utils
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


# The first id of our named hardware barriers: Mosaic GPU itself uses 0 and one
# per warpgroup (1..3 here).
_NAMED_BARRIER_BASE = 4


def _named_barrier(op: str, barrier_id, num_threads: int):
  """``bar.{op} barrier_id, num_threads`` (op: "arrive" or "sync") by every
  thread of the calling warpgroup; ``barrier_id`` an int32 scalar."""
  @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WG_SPLAT,))
  def run(_, idx):
    mgpu_utils.inline_ptx(f"bar.{op} $0, {num_threads};",
                           idx.registers[()], convergent=True)
  run(barrier_id)


@dataclasses.dataclass(frozen=True)
class PingPong:
  """FlashAttention 3's ping-pong between the two compute warpgroups: ``wg``
  calls ``signal()`` once its Q Kᵀ wgmma is issued (the other warpgroup may
  now issue its P V) and ``wait()`` before its own P V (until the other has
  issued its next Q Kᵀ), so one warpgroup's softmax runs while the other's
  matmuls hold the tensor cores. Warpgroup 1 starts with a ``wait()``,
  warpgroup 0 ends with a ``signal()``; a signal is never two ahead of its
  wait.

  Compiled (``mbarriers=None``): two named hardware barriers, one per waiting
  warpgroup (``bar.arrive``/``bar.sync`` over both warpgroups' threads), as
  FlashAttention 3 and tokamax do. The Mosaic GPU interpreter cannot run
  inline PTX, so there ``mbarriers`` (``Barrier(num_barriers=2)``) carry the
  same protocol, which its race and deadlock checks then cover.
  """

  wg: object
  mbarriers: object = None

  def signal(self):
    if self.mbarriers is None:
      _named_barrier("arrive", _NAMED_BARRIER_BASE + 1 - self.wg,
                     COMPUTE_WGS * 128)
    else:
      plgpu.barrier_arrive(self.mbarriers.at[1 - self.wg])

  def wait(self):
    if self.mbarriers is None:
      _named_barrier("sync", _NAMED_BARRIER_BASE + self.wg, COMPUTE_WGS * 128)
    else:
      plgpu.barrier_wait(self.mbarriers.at[self.wg])


def compiler_params(plan):
  """The Hopper kernels' compiler parameters.

  ``approx_math``: ``exp2`` as ``ex2.approx``. No reduction scratch: the row
  max/sum of the accumulator layout stay within a warp, and the 2 KiB keep 3
  stages of 128-row K/V tiles at head_dim 128 in shared memory (as tokamax's
  kernel does). No automatic barriers (``bar.sync`` of the warpgroup around
  every shared-memory store and TMA issue): no thread reads and writes the
  same shared memory (Q/O, K/V, dQ/dK/dV tiles are written by TMA or read
  only by wgmma), and a tile a thread stores for a wgmma (FP8's P) is fenced
  by ``commit_smem``, whose warpgroup barrier orders it; the wgmma that read
  it before was awaited by every warp of the warpgroup.
  """
  return plgpu.CompilerParams(approx_math=True, reduction_scratch_bytes=0,
                              unsafe_no_auto_barriers=not plan.interpret)


def query_tile_index(mask, num_tiles: int, name: str = "q_tile"):
  """The grid index of a CTA's query tile. Under a causal mask the last query
  tiles see the most keys: the index runs backwards so that they start first
  and the short ones fill the last wave."""
  i = lax.axis_index(name)
  return num_tiles - 1 - i if mask.causal else i


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
