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
interpreter checks. A CTA computes one output tile, or (persistent, see
:class:`Tiles`) several in turn: the slots and barrier phases then run on
from one tile to the next, so the producer fetches the next tile's first K/V
while the compute warpgroups finish the current one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching
from jax import lax
from jax.experimental.mosaic import gpu as mgpu
from jax.experimental import pallas as pl
from jax.experimental.mosaic.gpu import utils as mgpu_utils
from jax.experimental.pallas import mosaic_gpu as plgpu

from flashjax.config import LAUNCH_REGISTERS, MOSAIC_BLOCK_Q
from flashjax.config import MOSAIC_COMPUTE_WGS as COMPUTE_WGS

ROW = plgpu.Layout.WGMMA.reduce(1)      # a value per accumulator row
COL = plgpu.Layout.WGMMA.reduce(0)      # a value per accumulator column


@dataclasses.dataclass(frozen=True)
class Stream:
  """One streamed operand: ``smem`` has one slot per stage (its leading axis);
  ``full`` and ``free`` one barrier per stage (either may be shared with
  other streams; a shared ``full`` counts an arrival per stream,
  :func:`barriers`, and a step waits on it once). ``lagged``: read until
  the next step (step j reads tile j - 1 too, awaited then with
  :attr:`Sync.wait_prev` if step j - 1 did not; the tile's last one is read
  by :attr:`Work.drain`), so its slot is released a step late; its ``free``
  and ``full`` are its own."""

  smem: object
  full: object
  free: object
  lagged: bool = False


@dataclasses.dataclass(frozen=True)
class Owned:
  """A tile each compute warpgroup reads for a whole output tile (the
  forward's Q), loaded by the producer: ``smem`` ``[COMPUTE_WGS, ...]``,
  ``full`` and ``free`` one barrier per warpgroup (``free``: one arrival).
  The producer loads a tile's Q after issuing its first K/V loads, once the
  warpgroup released the last one (:attr:`Sync.release_owned`, after its last
  Q Kᵀ), so on a persistent grid the next tile's Q lands while the current
  tile's last P V and epilogue run. A tile with no streamed step (all its
  K/V tiles masked) loads and frees none."""

  smem: object
  full: object
  free: object


@dataclasses.dataclass(frozen=True)
class Work:
  """What a CTA does for one output tile: walk streamed tiles ``[lo, hi)``,
  tile j of stream i read from ``srcs[i](j)`` (a GMEM view). ``init()``
  (compute warpgroups, before the loop) returns the carry; ``step(j, slot,
  sync, carry, masked)`` the next carry (``sync``: a :class:`Sync` for the
  slot); ``finish(carry)`` writes the results. ``full = (a, b)``: the calling
  warpgroup's tiles in ``[a, b)`` have no masked entry and are stepped with
  ``masked=False``, the others with ``masked=True``; ``full=None``: no tile
  needs the mask. ``first`` (optional, like ``step``): steps the first tile
  instead of ``step`` (masked if any tile may be); ``drain(carry, sync)``
  (with lagged streams): after the last step, when there was one, reads the
  lagged streams' last tile (``sync.wait_prev``) and returns the carry.
  ``owned_src(i)`` (with :class:`Owned`): the GMEM view of compute warpgroup
  i's owned tile."""

  lo: object
  hi: object
  srcs: tuple
  init: Callable
  step: Callable
  finish: Callable
  full: object = None
  first: Callable | None = None
  drain: Callable | None = None
  owned_src: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Sync:
  """What a step does with its slot: ``wait(i)`` (at the step's top level)
  before it reads stream i's tile, ``release(i)`` (optional, at the step's
  top level) once it no longer reads it; the loop releases what the step
  did not. ``count``: the CTA's steps before this one (over all its tiles),
  int32. For a lagged stream i,
  ``wait_prev(i)``/``release_prev(i)`` do the same for the previous step's
  slot ``prev`` (not in a tile's first step). ``release_owned()`` (with
  :class:`Owned`, at the step's top level): the warpgroup no longer reads its
  owned tile, if this is the tile's last step (else the loop calls it after
  the step). ``first``, ``last``: whether this is the tile's first or last
  step (bool scalars)."""

  wait: Callable
  release: Callable
  count: object
  wait_prev: Callable | None = None
  release_prev: Callable | None = None
  prev: object = None
  release_owned: Callable | None = None
  first: object = None
  last: object = None


def _distinct(barriers):
  out = []
  for b in barriers:
    if not any(b is o for o in out):
      out.append(b)
  return out


@dataclasses.dataclass(frozen=True)
class Part:
  """A Stream-K piece's share of its tile (:class:`StreamK`): streamed steps
  ``[lo, hi)`` (from the tile's first, which is its first K/V tile: the
  schedule is taken only where every tile's range starts at 0) and
  ``slot``, where its result goes: -1, the whole tile (the output itself);
  0 or 1, cut: this CTA's (``cta``) first or last piece, a row of the
  buffers of partial results. All int32 scalars."""

  lo: object
  hi: object
  slot: object
  cta: object


@dataclasses.dataclass(frozen=True)
class StreamK:
  """Stream-K's hybrid schedule (Osama et al., 2023) of ``units`` equal
  units of work of ``steps`` streamed steps each over ``ctas`` persistent
  CTAs: ``rounds`` data-parallel rounds (CTA c takes units c, c + ctas, ...,
  numbered as :func:`plgpu.nd_loop` walks ``walk``), then the rest, between
  ``ctas`` and ``2 · ctas`` units, split by steps: CTA c takes their steps
  ``[c · S // ctas, (c + 1) · S // ctas)`` in order (S: all their steps), so
  the CTAs finish within a step of each other, where whole units leave the
  last round partly idle (2048 tiles over 132 SMs: 15.5 rounds of work in
  16). A unit is an output tile, or (``paired``: the axis of
  :attr:`Tiles.paired`) a mirrored pair of query tiles, whose steps are the
  first tile's ``first_steps(i)`` (i: its index along that axis) and then
  its mirror's. A tile cut between CTAs c and c + 1 runs its first steps as
  c's last piece (slot 1) and the rest as c + 1's first (slot 0); each part
  writes its own O and L, which :func:`pallas_kernels.mosaic.fwd.merge`
  merges. ``cluster`` (:attr:`Tiles.cluster`): ``ctas`` counts clusters and
  a unit is a group of ``cluster`` tiles along ``walk``'s axis 1, of which
  the cluster's CTA of rank r (``rank``) takes tile r, all with the same
  steps; a part's row in the buffers of parts is ``c · cluster + r``
  (:attr:`Part.cta`)."""

  units: int
  ctas: int
  steps: int
  walk: tuple
  paired: int | None = None
  first_steps: Callable | None = dataclasses.field(default=None,
                                                   compare=False)
  cluster: int = 1

  @staticmethod
  def of(units: int, ctas: int, steps: int, walk: tuple | None = None,
         paired: int | None = None, first_steps=None,
         cluster: int = 1) -> "StreamK | None":
    """The schedule, or None where whole units already fill every round (or
    a unit has one step, or there are fewer units than CTAs). ``walk``:
    the grid of units (default ``(units,)``)."""
    if units < ctas or units % ctas == 0 or steps < 2:
      return None
    return StreamK(units, ctas, steps, walk or (units,), paired, first_steps,
                   cluster)

  @property
  def part_rows(self) -> int:
    """Rows of the buffers of parts: one per CTA (of every cluster)."""
    return self.ctas * self.cluster

  @property
  def rounds(self) -> int:
    return self.units // self.ctas - 1

  @property
  def halves(self) -> int:
    """Tiles a unit: 1, or 2 (a pair)."""
    return 1 if self.paired is None else 2

  def bounds(self, c):
    """CTA ``c``'s steps ``[start, end)`` of the split units (c an int or an
    int32 scalar)."""
    total = (self.units - self.rounds * self.ctas) * self.steps
    div = (lambda a, b: a // b) if isinstance(c, int) else lax.div
    return div(c * total, self.ctas), div((c + 1) * total, self.ctas)

  def index(self, unit, half=0, rank=0) -> tuple:
    """The grid index of ``unit``'s tile (``half`` 1: a pair's mirror;
    clustered, ``rank``'s tile of the group)."""
    index = unravel(unit, self.walk)
    if self.cluster > 1:
      return group_tile(index, self.cluster, rank)
    if self.paired is None:
      return index
    a, i = self.paired, index[self.paired]
    return (*index[:a], jnp.where(half == 0, i, 2 * self.walk[a] - 1 - i),
            *index[a + 1:])

  def split(self, unit):
    """Where ``unit``'s second tile starts among its steps (``steps``: it
    has none)."""
    if self.paired is None:
      return self.steps
    return self.first_steps(self.index(unit)[self.paired])

  def piece_of(self, x):
    """The piece (from the split units' first: a unit, or a pair's tile,
    ``2 · unit + half``) that split step ``x`` belongs to."""
    t = lax.div(x, self.steps)
    if self.paired is None:
      return t
    unit = self.rounds * self.ctas + t
    return 2 * t + (lax.rem(x, self.steps) >= self.split(unit)).astype(
        jnp.int32)

  def pieces(self, c, rank=0):
    """CTA ``c``'s pieces (a tile, or a pair's tile; clustered, cluster c's
    CTA of rank ``rank``): their count and ``piece(k) -> (index, Part)``,
    the k-th's grid index and share: the data-parallel rounds' whole units,
    then its steps ``[start, end)`` of the split units, each piece clipped
    to them (c, rank and k ints or int32 scalars)."""
    start, end = self.bounds(c)
    first, last = self.piece_of(start), self.piece_of(end - 1)
    whole = self.rounds * self.halves

    def piece(k):
      split = k >= whole
      p = first + k - whole
      if self.paired is None:           # a unit is a tile: one piece
        t, u, half = p, k, 0
      else:                             # a pair of tiles: two pieces
        t, u = lax.div(p, 2), lax.div(k, 2)
        half = jnp.where(split, lax.rem(p, 2), lax.rem(k, 2))
      unit = jnp.where(split, self.rounds * self.ctas + t, c + u * self.ctas)
      f = self.split(unit)
      n = f if self.paired is None else jnp.where(half == 0, f,
                                                  self.steps - f)

      def local(x):
        # split step x counted from the piece's tile's first step
        x = x - t * self.steps
        return x if self.paired is None else x - jnp.where(half == 0, 0, f)
      lo = jnp.where(split, jnp.maximum(local(start), 0), 0)
      hi = jnp.where(split, jnp.minimum(local(end), n), n)
      slot = jnp.where(lo > 0, 0, jnp.where(hi < n, 1, -1))
      return (self.index(unit, half, rank),
              Part(lo, hi, slot, c * self.cluster + rank))
    return whole + last - first + 1, piece

  def cut_after(self, c, rank=0):
    """``(cut, index)``: whether CTAs (clusters) c and c + 1 share a tile
    (clustered: a group, of which this is ``rank``'s tile), and its grid
    index (c and rank ints or int32 scalars)."""
    end = self.bounds(c)[1]
    t, o = lax.div(end, self.steps), lax.rem(end, self.steps)
    unit = self.rounds * self.ctas + t
    f = self.split(unit)
    return (o != 0) & (o != f), self.index(unit, (o > f).astype(jnp.int32),
                                           rank)

  def cut(self) -> list:
    """``(index, c)`` of each tile cut between CTAs (clusters) c and
    c + 1."""
    with jax.ensure_compile_time_eval():
      return [(tuple(int(x) for x in index), c) for c in range(self.ctas - 1)
              for r in range(self.cluster)
              for cut, index in [self.cut_after(c, r)] if cut]


def merge_cut(sk: StreamK, combine, parts, outs, name: str,
              interpret: bool = False):
  """``outs`` with the tiles Stream-K cut in two rewritten from their two
  parts, in place (aliased: nothing else of them is read or copied): one
  program per boundary between CTAs c and c + 1 (the last CTA has none; a
  cluster's: one per rank r), a Triton-lowered Pallas kernel named
  ``name``; where c and c + 1 share a tile, ``combine(part_refs, (first,
  second), index, out_refs)`` writes it from rows ``[first, 1]`` (its first
  steps, c's last unit) and ``[second, 0]`` of the ``parts``
  (``[sk.part_rows, 2, ...]`` each; first = c · cluster + r, second =
  first + cluster), ``index`` its grid index (:meth:`StreamK.cut_after`)."""
  n = len(parts)

  def kernel(*refs):
    part_refs, out_refs = refs[:n], refs[n + len(outs):]
    c = pl.program_id(0)
    if sk.cluster == 1:     # a 1-D grid: the unclustered merge as it was
      r, first = 0, c
    else:
      r = pl.program_id(1)
      first = c * sk.cluster + r
    cut, index = sk.cut_after(c, r)
    pl.when(cut)(lambda: combine(part_refs, (first, first + sk.cluster),
                                 index, out_refs))

  return pl.pallas_call(
      kernel, grid=(sk.ctas - 1, *[sk.cluster] * (sk.cluster > 1)),
      out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in outs],
      input_output_aliases={n + i: i for i in range(len(outs))},
      interpret=interpret, name=name)(*parts, *outs)


def group_tile(index: tuple, cluster: int, rank) -> tuple:
  """The grid index of the tile that a cluster's CTA of rank ``rank`` takes
  of group ``index`` (a walk over groups of ``cluster`` tiles along axis
  1)."""
  h, t, *rest = index
  return (h, t * cluster + rank, *rest)


def unravel(tile, grid: tuple) -> tuple:
  """The index in ``grid`` of flat tile number ``tile`` (int32), in
  :func:`plgpu.nd_loop`'s order: the last axis fastest."""
  index = []
  for size in reversed(grid):
    index.append(lax.rem(tile, size))
    tile = lax.div(tile, size)
  return tuple(reversed(index))


@dataclasses.dataclass(frozen=True)
class Tiles:
  """The output tiles a CTA computes, as indices into ``grid`` (a tuple of
  sizes). ``persistent=False``: one tile, the kernel's grid position (the
  kernel's grid is ``grid``, named ``names``). ``persistent=True``: the
  kernel's grid is one CTA per SM (axis ``"sm"``) and each walks every
  ``num_sms``-th tile of ``grid`` (:func:`plgpu.nd_loop`), so one tile's
  epilogue and the next one's first loads overlap the compute. ``paired``
  (persistent only): an axis along which a tile's work changes linearly (a
  causal mask's query tiles grow, its key tiles shrink); the walk then takes
  its tiles in mirrored pairs (i, n-1-i), each pair the same work, so CTAs
  with a fixed share of the grid finish together (a fixed stride over unequal
  tiles leaves some CTAs with far more work than others). ``cluster``
  (persistent, not paired): CTAs a cluster (axis
  ``"cluster"``), which take ``cluster`` neighbouring tiles along axis 1 (the
  same head and batch) and walk the same streamed tiles in step, each
  loaded once for all of them (:func:`streamed_loop`; FlashAttention 3's
  TMA multicast); the kernel's grid is then one cluster per ``cluster`` SMs."""

  grid: tuple
  names: tuple
  persistent: bool = False
  paired: int | None = None
  stream_k: StreamK | None = None
  cluster: int = 1

  def __post_init__(self):
    if self.cluster > 1 and (not self.persistent or self.paired is not None
                             or self.grid[1] % self.cluster):
      raise ValueError(
          f"Tiles.cluster={self.cluster} needs a persistent grid, unpaired, "
          f"whose {self.grid[1]} tiles along axis 1 group by "
          f"{self.cluster}.")
    if self.stream_k is not None and self.stream_k.cluster != self.cluster:
      raise ValueError(f"Tiles.stream_k's cluster ({self.stream_k.cluster}) "
                       f"is not the grid's ({self.cluster}).")

  @property
  def collective(self) -> tuple | None:
    """The axes a streamed tile's load is multicast over, or None."""
    return ("cluster",) if self.cluster > 1 else None

  @staticmethod
  def per_head(plan, num_heads: int, seq: int, batch: int,
               persistent: bool) -> "Tiles":
    """A kernel's (head, tile, batch) output tiles of ``COMPUTE_WGS · 64``
    rows of ``seq``; a banded mask's tiles are walked in mirrored pairs."""
    return Tiles(grid=(num_heads, seq // (COMPUTE_WGS * MOSAIC_BLOCK_Q), batch),
                 names=("heads", "tile", "batch"), persistent=persistent,
                 paired=1 if plan.mask.banded else None)

  def launch(self, plan) -> dict:
    """The kernel's ``grid`` and ``grid_names``: the tiles themselves, or
    (persistent) one CTA per SM."""
    if not self.persistent:
      return dict(grid=self.grid, grid_names=self.names)
    launch = dict(grid=(num_ctas(plan, math.prod(self.walk()),
                                 self.cluster),), grid_names=("sm",))
    if self.cluster > 1:
      launch.update(cluster=(self.cluster,), cluster_names=("cluster",))
    return launch

  def walk(self) -> tuple:
    """The grid the CTAs (clusters) walk: ``grid``, (paired) its pairs, or
    (clustered) its groups of ``cluster`` tiles along axis 1."""
    if self.cluster > 1:
      return (self.grid[0], self.grid[1] // self.cluster, *self.grid[2:])
    if self.paired is None:
      return self.grid
    a = self.paired
    return (*self.grid[:a], (self.grid[a] + 1) // 2, *self.grid[a + 1:])

  def run(self, body):
    """``body(index, done) -> done'`` for each tile, ``done`` the streamed
    steps this CTA ran before (barrier phases and slots carry on from it);
    returns the CTA's total. With :attr:`stream_k`, ``body(index, done,
    part)`` for each unit, ``part`` its :class:`Part`."""
    if not self.persistent:
      return body(tuple(lax.axis_index(n) for n in self.names), jnp.int32(0))
    if self.stream_k is not None:
      return self._run_stream_k(body)
    walk = functools.partial(plgpu.nd_loop, collective_axes="sm",
                             init_carry=jnp.int32(0))
    if self.cluster > 1:
      return walk(self.walk())(lambda info, carry: body(group_tile(
          info.index, self.cluster, lax.axis_index("cluster")), carry))
    if self.paired is None:
      return walk(self.grid)(lambda info, carry: body(info.index, carry))
    a, n = self.paired, self.grid[self.paired]

    def pair(info, carry):
      # tile i, then its mirror (odd n: the middle tile is its own mirror,
      # run once), through one copy of ``body``: the kernel holds one tile's
      # code, not two
      i = info.index
      mirror = (*i[:a], n - 1 - i[a], *i[a + 1:])
      count = 2 if n % 2 == 0 else jnp.where(mirror[a] != i[a], 2, 1)

      def one(k, done):
        return body(tuple(jnp.where(k == 0, x, y) for x, y in zip(i, mirror)),
                    done)
      return lax.fori_loop(0, count, one, carry)
    return walk(self.walk())(pair)

  def _run_stream_k(self, body):
    rank = lax.axis_index("cluster") if self.cluster > 1 else 0
    count, piece = self.stream_k.pieces(lax.axis_index("sm"), rank)

    def run(k, done):
      index, part = piece(k)
      return body(index, done, part)
    return lax.fori_loop(0, count, run, jnp.int32(0))


def next_slot(slot, stages: int):
  """The slot after ``slot`` (int32) of ``stages``, without a division."""
  return jnp.where(slot == stages - 1, 0, slot + 1)


def streamed_loop(*, wg, tiles: Tiles, streams, work, compute_registers: int,
                  start=None, end=None, owned: Owned | None = None,
                  carry_slots: bool = False):
  """Run the producer and the compute warpgroups over the CTA's tiles:
  ``work(index)`` gives the :class:`Work` of tile ``index`` (``work(index,
  part)`` of a Stream-K unit, :attr:`Tiles.stream_k`); ``streams``
  the :class:`Stream` s it reads; ``owned``: an :class:`Owned` tile the
  producer loads too (else each warpgroup loads its own in ``init``).
  ``start()``/``end(total)``: run by each compute warpgroup before its
  first tile and after its last (``total``: the CTA's streamed steps,
  int32). ``compute_registers``: each compute thread's registers
  (``setmaxnreg``); the producer's threads get what is left of the CTA's
  (``LAUNCH_REGISTERS`` a thread). ``carry_slots``
  (:attr:`flashjax.config.MosaicBlocks.carry_slots`): the step loops carry
  their slot (:func:`next_slot`) instead of dividing the CTA's step count
  by the stages each step. Clustered (:attr:`Tiles.cluster`): the streamed
  tiles are multicast and each ``free`` must be :func:`barriers`'s cluster
  barrier, so a slot is refilled only once every CTA's compute warpgroups
  released it."""
  stages = streams[0].smem.shape[0]
  frees = _distinct([stream.free for stream in streams])

  @pl.when(wg == COMPUTE_WGS)
  def _producer():
    plgpu.set_max_registers(
        (COMPUTE_WGS + 1) * LAUNCH_REGISTERS
        - COMPUTE_WGS * compute_registers,
        action="decrease")

    def tile(index, done, part=None):
      w = work(index) if part is None else work(index, part)

      def load(j, carried):
        n = done + j - w.lo              # the CTA's step count
        slot = lax.rem(n, stages) if carried is None else carried
        for free in frees:
          # Reuse a slot only after every compute warpgroup released it.
          @pl.when(n >= stages)
          def _():
            plgpu.barrier_wait(free.at[slot])
          for stream, src in zip(streams, w.srcs):
            if stream.free is free:
              # (clustered) each CTA loads its share of the tile into every
              # CTA of the cluster, whose full barrier counts all of it
              plgpu.copy_gmem_to_smem(src(j), stream.smem.at[slot],
                                      stream.full.at[slot],
                                      collective_axes=tiles.collective)
        if owned is not None:
          @pl.when(j == w.lo)
          def _():
            # the tile's owned tiles, behind its first K/V
            for i in range(COMPUTE_WGS):
              @pl.when(done > 0)        # an earlier tile loaded one
              def _():
                plgpu.barrier_wait(owned.free.at[i])
              plgpu.copy_gmem_to_smem(w.owned_src(i), owned.smem.at[i],
                                      owned.full.at[i])
        return None if carried is None else next_slot(slot, stages)
      lax.fori_loop(w.lo, w.hi, load,
                    lax.rem(done, stages) if carry_slots else None)
      return done + jnp.maximum(w.hi - w.lo, 0)
    total = tiles.run(tile)

    # Observe the releases not yet waited for, so every phase is consumed.
    for free in frees:
      def drain(n, _, free=free):
        plgpu.barrier_wait(free.at[lax.rem(n, stages)])
      lax.fori_loop(jnp.maximum(0, total - stages), total, drain, None)
    if owned is not None:
      @pl.when(total > 0)
      def _():
        for i in range(COMPUTE_WGS):
          plgpu.barrier_wait(owned.free.at[i])

  @pl.when(wg < COMPUTE_WGS)
  def _compute():
    plgpu.set_max_registers(compute_registers, action="increase")

    def sync_at(count, step=True, first=False, last=False, slot=None):
      # the Sync of the CTA's step ``count``: the current slot's streams (not
      # the lagged ones) and the previous slot's lagged ones; ``step=False``:
      # only the latter (a tile's drain). ``first``, ``last``: the tile's
      # first or last step. ``slot``: count's slot, carried (carry_slots)
      if slot is None:
        slot = lax.rem(count, stages)
        prev = lax.rem(count + stages - 1, stages)
      else:
        prev = jnp.where(slot == 0, stages - 1, slot - 1)
      released, waited = [], []

      def wait(i):
        full = streams[i].full
        if not any(full is w for w in waited):
          plgpu.barrier_wait(full.at[slot])
          waited.append(full)

      def release(i, slot=slot):
        free = streams[i].free
        if not any(free is r for r in released):
          plgpu.barrier_arrive(free.at[slot])
          released.append(free)

      def release_owned():
        if owned is not None and not any(r is owned for r in released):
          pl.when(last)(lambda: plgpu.barrier_arrive(owned.free.at[wg]))
          released.append(owned)
      sync = Sync(
          wait=wait,
          release=release, count=count,
          wait_prev=lambda i: plgpu.barrier_wait(streams[i].full.at[prev]),
          release_prev=lambda i: release(i, prev), prev=prev,
          release_owned=release_owned, first=first, last=last)

      def release_rest(first):
        for i, stream in enumerate(streams):
          if not stream.lagged and step:
            release(i)
          elif stream.lagged and not first:
            release(i, prev)
        if step:
          release_owned()
      return slot, sync, release_rest

    def tile(index, done, part=None):
      w = work(index) if part is None else work(index, part)

      def loop(start, stop, carry, masked, first=False):
        step = w.first if first else w.step
        def body(j, state):
          carry, carried = state
          slot, sync, release_rest = sync_at(done + j - w.lo,
                                             first=j == w.lo,
                                             last=j == w.hi - 1, slot=carried)
          carry = step(j, slot, sync, carry, masked)
          release_rest(first)
          return carry, None if carried is None else next_slot(slot, stages)
        return lax.fori_loop(start, stop, body, (carry, lax.rem(
            done + start - w.lo, stages) if carry_slots else None))[0]

      carry = w.init()
      if owned is not None:
        pl.when(w.hi > w.lo)(lambda: plgpu.barrier_wait(owned.full.at[wg]))
      lo = w.lo
      if w.first is not None:
        # the first tile alone (masked if any tile may be), then the rest
        lo = jnp.minimum(w.lo + 1, w.hi)
        carry = loop(w.lo, lo, carry, masked=w.full is not None, first=True)
      if w.full is None:
        carry = loop(lo, w.hi, carry, masked=False)
      else:
        # masked tiles before [a, b), the unmasked ones, masked tiles after
        a = jnp.clip(w.full[0], lo, w.hi)
        b = jnp.clip(w.full[1], a, w.hi)
        carry = loop(lo, a, carry, masked=True)
        carry = loop(a, b, carry, masked=False)
        carry = loop(b, w.hi, carry, masked=True)
      if w.drain is not None:
        def drain(carry):
          # the lagged streams' slot of the tile's last step
          _, sync, release_rest = sync_at(done + w.hi - w.lo, step=False)
          carry = w.drain(carry, sync)
          release_rest(first=False)
          return carry
        carry = lax.cond(w.hi > w.lo, drain, lambda c: c, carry)
      w.finish(carry)
      return done + jnp.maximum(w.hi - w.lo, 0)
    if start is not None:
      start()
    total = tiles.run(tile)
    if end is not None:
      end(total)


def kv_work(mask, *, cta_start, k_ref, v_ref, batch, kv_head,
            block_kv: int, num_kv_blocks: int, init, step, finish,
            v_transposed: bool = False) -> Work:
  """The :class:`Work` of a query tile (the forward and dQ kernels; streams
  0: K, 1: V): the K/V tiles that some row of the CTA's ``COMPUTE_WGS · 64``
  query rows from ``cta_start`` can see under ``mask``; the rest are
  skipped. Tiles some row of the CTA does not fully see are masked, in both
  compute warpgroups alike, so at every step both run the same code (as
  FlashAttention 3's masking steps do): the forward's ping-pong meets at the
  same named-barrier instructions. Masking each warpgroup's 64 rows apart
  let them run different steps (one masked, one not) when a band's edge
  crossed a K/V tile boundary between the two warpgroups' rows (113 queries
  over 203 keys, causal), and the one causal forward seen not to finish on
  the H200 without spilling was such a case (results/debug-hang-h200.md).
  ``v_transposed``: V is ``[batch, kv_heads, d, seq_kv]`` (FP8) and its
  tiles ``[d, block_kv]``."""
  lo, hi = mask.kv_block_range(cta_start, COMPUTE_WGS * MOSAIC_BLOCK_Q,
                               block_kv, num_kv_blocks)
  full = (None if mask.is_trivial(num_kv_blocks * block_kv) else
          mask.kv_full_range(cta_start, COMPUTE_WGS * MOSAIC_BLOCK_Q,
                             block_kv))
  rows = lambda j: pl.ds(j * block_kv, block_kv)
  return Work(
      lo=lo, hi=hi, init=init, step=step, finish=finish, full=full,
      srcs=(lambda j: k_ref.at[batch, rows(j), kv_head],
            lambda j: v_ref.at[batch, kv_head, :, rows(j)] if v_transposed
            else v_ref.at[batch, rows(j), kv_head]))


# The first id of our named hardware barriers: Mosaic GPU itself uses 0 and one
# per warpgroup (1..3 here).
_NAMED_BARRIER_BASE = 4


def _named_barrier(op: str, barrier_id, num_threads: int, when=None):
  """``bar.{op} barrier_id, num_threads`` (op: "arrive" or "sync") by every
  thread of the calling warpgroup; ``barrier_id`` an int32 scalar. ``when``
  (a bool scalar, the same in every thread): the instruction is predicated
  on it, with no branch around it (it may sit between a wgmma and its
  wait)."""
  args = (barrier_id,) if when is None else (barrier_id, when)

  @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WG_SPLAT,) * len(args))
  def run(_, idx, *pred):
    mgpu_utils.inline_ptx(
        f"bar.{op} $0, {num_threads};", idx.registers[()],
        predicate=pred[0].registers[()] if pred else None, convergent=True)
  run(*args)


@dataclasses.dataclass(frozen=True)
class PingPong:
  """FlashAttention 3's ping-pong between the two compute warpgroups: ``wg``
  calls ``signal()`` once its Q Kᵀ wgmma is issued (the other warpgroup may
  now issue its P V) and ``wait()`` before its own P V (until the other has
  issued its next Q Kᵀ), so one warpgroup's softmax runs while the other's
  matmuls hold the tensor cores. Warpgroup 1 starts with a ``wait()``,
  warpgroup 0 ends with a ``signal()``, once per CTA: a persistent CTA's
  steps run on from one tile to the next, so a signal is never two ahead of
  its wait (both warpgroups walk the same tiles, empty ones included). The
  forward's ``early_handover`` moves each tile's first hand-over to the
  previous tile's last P V (:func:`pallas_kernels.mosaic.fwd.end` balances
  the count).

  Compiled (``mbarriers=None``): two named hardware barriers, one per waiting
  warpgroup (``bar.arrive``/``bar.sync`` over both warpgroups' threads), as
  FlashAttention 3 and tokamax do. The Mosaic GPU interpreter cannot run
  inline PTX, so there ``mbarriers`` (``Barrier(num_barriers=2)``) carry the
  same protocol, which its race and deadlock checks then cover.
  """

  wg: object
  mbarriers: object = None

  def signal(self, when=None):
    """Hand over; ``when`` (a bool scalar): only if it holds (compiled: a
    predicated ``bar.arrive``, no branch)."""
    if self.mbarriers is None:
      _named_barrier("arrive", _NAMED_BARRIER_BASE + 1 - self.wg,
                     COMPUTE_WGS * 128, when)
    elif when is None:
      plgpu.barrier_arrive(self.mbarriers.at[1 - self.wg])
    else:
      pl.when(when)(
          lambda: plgpu.barrier_arrive(self.mbarriers.at[1 - self.wg]))

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


def fold_vmap(fn):
  """``fn(*arrays)``, whose arrays and outputs all lead with the batch axis,
  made vmappable by folding a mapped axis into the batch (arrays not mapped
  are broadcast), so one launch covers the whole map."""
  @custom_batching.custom_vmap
  def folded(*args):
    return fn(*args)

  @folded.def_vmap
  def _rule(axis_size, in_batched, *args):
    args = [x if mapped else jnp.broadcast_to(x, (axis_size, *x.shape))
            for x, mapped in zip(args, in_batched)]
    outs = folded(*(x.reshape(-1, *x.shape[2:]) for x in args))
    outs = jax.tree.map(lambda y: y.reshape(axis_size, -1, *y.shape[1:]),
                        outs)
    return outs, jax.tree.map(lambda _: True, outs)
  return folded


def heavy_first(mask, i, num_tiles: int):
  """Query tile ``i`` of ``num_tiles`` in work order: backwards when the last
  query tiles see the most keys (:attr:`MaskSpec.heavy_last`)."""
  return num_tiles - 1 - i if mask.heavy_last else i


def num_ctas(plan, num_tiles: int, cluster: int = 1) -> int:
  """CTAs of a persistent kernel: one per SM, at most one per work item (a
  tile, or a pair of tiles), so that no CTA is idle; with ``cluster`` > 1,
  clusters of that many CTAs, one per ``cluster`` SMs, at most one per work
  item (a group of tiles). The interpreter runs 2, so that CTAs walk
  several tiles; lowering on a CPU for an abstract H100 takes the H100's
  132 SMs."""
  if plan.interpret:
    return min(2, num_tiles)
  device = jax.devices()[0]
  sms = device.core_count if device.platform == "gpu" else 132
  return min(sms // cluster, num_tiles)


def load_owned(barrier, copies):
  """TMA ``copies`` ([(gmem, smem)]) on one barrier and wait for all of them."""
  for src, dst in copies:
    plgpu.copy_gmem_to_smem(src, dst, barrier)
  plgpu.barrier_wait(barrier)


def store(copies, wait: bool = True, elsewhere=None):
  """Registers -> SMEM -> GMEM for ``copies`` ([(value, smem, gmem)]), waited
  for in full; ``wait=False``: left in flight (a persistent CTA goes on to its
  next tile), waiting first only until the previous store has read shared
  memory (as JAX's Hopper matmul does); the caller waits for the last one
  (``plgpu.wait_smem_to_gmem(0)``) before the kernel ends. The smem tiles
  must then be written by nothing else. ``elsewhere = (when, [gmem])``: where
  ``when`` (a bool scalar) holds, the copies go to those instead."""
  if not wait:
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
  for value, smem, _ in copies:
    smem[...] = value.astype(smem.dtype)
  plgpu.commit_smem()
  if elsewhere is None:
    for _, smem, dst in copies:
      plgpu.copy_smem_to_gmem(smem, dst)
  else:
    when, others = elsewhere
    for where, dsts in ((when, others),
                        (~when, [dst for *_, dst in copies])):
      @pl.when(where)
      def _(dsts=dsts):
        for (_, smem, _), dst in zip(copies, dsts):
          plgpu.copy_smem_to_gmem(smem, dst)
  if wait:
    plgpu.wait_smem_to_gmem(0)


def barriers(num_streams: int, stages: int, num_free: int = 1,
             shared_full: bool = False, cluster: int = 1):
  """Scratch types of the loop's barriers: ``full`` per stream (or,
  ``shared_full``, one for all, an arrival per stream's copy, and None for
  the others: :func:`fulls`), then ``num_free`` ``free`` barriers
  (``cluster`` > 1: cluster barriers, which each compute warpgroup's release
  arrives at in every CTA of the cluster)."""
  full = ([plgpu.Barrier(num_arrivals=num_streams, num_barriers=stages)]
          + [None] * (num_streams - 1) if shared_full else
          [plgpu.Barrier(num_barriers=stages) for _ in range(num_streams)])
  free = (functools.partial(plgpu.ClusterBarrier, collective_axes=("cluster",))
          if cluster > 1 else plgpu.Barrier)
  return (*full, *(free(num_arrivals=COMPUTE_WGS, num_barriers=stages)
                   for _ in range(num_free)))


def fulls(*refs):
  """The streams' ``full`` barriers as :func:`barriers` allocated them: each
  its own, or (a shared one) the first for every None."""
  return [refs[0] if ref is None else ref for ref in refs]


def wgmma_ss(a, b, shape):
  """``a @ b`` on the tensor cores, both operands in shared memory -> f32 regs."""
  def run(acc_ref):
    plgpu.wgmma(acc_ref, a, b)
    return acc_ref[...]
  return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def start_accs(refs, starts):
  """Writes each accumulator's starting value (None: it stays zero) into its
  scoped ``plgpu.ACC`` ref before the wgmmas accumulate onto it (compiled)."""
  for ref, start in zip(refs, starts):
    if start is not None:
      ref[...] = start


def wgmma_ss_pair(first, second, between, starts=(None, None), *,
                  in_place: bool = True):
  """Two products on the tensor cores, both operands in shared memory, issued
  back to back: ``between(x)`` runs on the first's result while the second is
  still in flight (FlashAttention 3's intra-warpgroup overlap). ``first``,
  ``second``: ``(a, b, shape)``. Returns ``(between(x1 + a1 @ b1), x2 + a2 @
  b2)``, float32, where ``starts = (x1, x2)`` are the accumulators' starting
  values (None: zeros), accumulated onto in place (``in_place``, compiled) or
  added after (the interpreter, which has no in-place accumulator)."""
  def plus(x, start):
    return x if in_place or start is None else x + start

  def run(x_ref, y_ref):
    if in_place:
      start_accs((x_ref, y_ref), starts)
    plgpu.wgmma(x_ref, first[0], first[1])
    plgpu.wgmma(y_ref, second[0], second[1])
    out = between(plus(plgpu.wgmma_accumulator_load(x_ref, wait_n=1),
                       starts[0]))
    return out, plus(y_ref[...], starts[1])
  return pl.run_scoped(run, plgpu.ACC(first[2], jnp.float32),
                       plgpu.ACC(second[2], jnp.float32))


def fp8_register_operand(p):
  """P (FP8, ``[64, n]`` in the accumulator's layout) as the 8-bit register
  operand of a wgmma, with no data moved: each thread's two 2-element vectors
  of 16 columns become one 4-element vector, which the 8-bit layout reads as
  columns in :func:`common.fp8_pv_key_order` (V's keys are put in that order
  before the kernel). jax 0.11.2 has no relayout from the accumulator's
  layout to the 8-bit one; FlashAttention 3 permutes bytes in registers
  instead."""
  @plgpu.inline_mgpu(
      arg_types=(plgpu.Layout.WGMMA,),
      return_type=plgpu.ShapeDtypeStruct(p.shape, p.dtype,
                                         layout=plgpu.Layout.WGMMA_8BIT))
  def regroup(_, x):
    # registers: [row tiles, 8-column tiles, ..., the two rows r and r + 8, ...]
    new = np.empty(mgpu.WGMMA_LAYOUT_8BIT.registers_shape(x.shape), object)
    for idx in np.ndindex(new.shape):
      pair = [x.registers[(idx[0], 2 * idx[1] + i, *idx[2:])] for i in (0, 1)]
      new[idx] = mgpu_utils.vector_concat(pair)
    return mgpu.FragmentedArray(_registers=new,
                                _layout=mgpu.WGMMA_LAYOUT_8BIT,
                                _is_signed=None)
  return regroup(p)


def operand_layout(dtype):
  """The layout of a wgmma's register operand of ``dtype``: the
  accumulator's, or for 8-bit operands the 8-bit one."""
  return (plgpu.Layout.WGMMA_8BIT if jnp.dtype(dtype).itemsize == 1
          else plgpu.Layout.WGMMA)


def register_operands(*tiles):
  """Shared-memory tiles loaded into registers as wgmma register operands
  (``MosaicBlocks(owned_registers=True)``, compiled)."""
  return tuple(plgpu.load(t, layout=operand_layout(t.dtype)) for t in tiles)


def carried(x, tile=None):
  """``x`` (P or dS) kept for the next step's product (the intra-warpgroup
  overlap): returned, to be carried in registers (compiled), or, given
  ``tile`` (the interpreter), stored there for the next step's SS wgmma and
  None carried."""
  if tile is None:
    return x
  tile[...] = x
  plgpu.commit_smem()
  return None


def mma_acc(acc, a, b, a_smem=None, *, in_place: bool = True, issued=None):
  """``acc + a @ b`` on the tensor cores: ``a`` a register array in the
  accumulator's layout (P or dS, 16-bit or FP8), ``b`` in shared memory,
  ``acc`` float32.

  ``a_smem=None``: ``a`` is the wgmma's register operand (FlashAttention 3's
  RS form; compiled only; FP8 through :func:`fp8_register_operand`).
  Otherwise ``a`` goes through ``a_smem`` to an SS wgmma, what Mosaic GPU's
  CPU interpreter can run.
  ``in_place``: accumulate into ``acc`` (compiled); else add a fresh product
  to it (the interpreter cannot run an in-place accumulator).
  ``issued()`` (optional): run once the product is issued, before it is
  awaited (the interpreter's SS form: after).
  """
  if a_smem is not None:
    a_smem[...] = a
    plgpu.commit_smem()
    a = a_smem
  if not in_place:
    acc = acc + wgmma_ss(a, b, acc.shape)
    if issued is not None:
      issued()
    return acc

  def run(acc_ref):
    plgpu.wgmma(acc_ref, a, b)
    if issued is not None:
      issued()
  return pl.run_state(run)(plgpu.ACC.init(acc))


def index_tiles(row_start, col_start, shape, vectors: bool = False):
  """int32 row and column index tiles in the wgmma accumulator layout: an
  iota per entry, or (``vectors``, :attr:`MosaicBlocks.index_vectors`) an
  index vector broadcast over the other axis, one index per row and per
  column a thread holds rather than one per entry (less index arithmetic in
  a masked step)."""
  def iota(dim, start):
    if not vectors:
      return start + plgpu.broadcasted_iota(jnp.int32, shape, dim,
                                            layout=plgpu.Layout.WGMMA)
    vector = start + plgpu.broadcasted_iota(jnp.int32, (shape[dim],), 0,
                                            layout=(ROW, COL)[dim])
    return lax.broadcast_in_dim(vector, shape, [dim])
  return iota(0, row_start), iota(1, col_start)


def load_ids(row_ids, col_ids):
  """Segment ids of a tile's rows and columns (int32 GMEM refs) -> vectors in
  the accumulator's row and column layouts. Plain loads from global memory
  (Mosaic GPU optimises only shared-memory transfers), not TMA: the ids are
  small, and only masked steps read them."""
  return (plgpu.load(row_ids, layout=ROW, optimized=False),
          plgpu.load(col_ids, layout=COL, optimized=False))


def mask_scores(mask, s, row_start, col_start, ids=None, *,
                rows_are_keys=False, vectors=False):
  """``s`` with the entries ``mask`` hides set to -inf. The tile's rows start
  at index ``row_start``, its columns at ``col_start``; ``ids``: the rows' and
  the columns' segment ids (:func:`load_ids`), or None.
  ``rows_are_keys``: a ``[keys, queries]`` tile (dK/dV); ``vectors``: the
  index tiles from broadcast vectors (:func:`index_tiles`) where the mask
  compares rows with columns (a band). A length or segment bound alone keeps
  the iotas: there the vector form does not lower (Mosaic GPU's layout
  search runs out of fuel; twenty-second session,
  results/raw/tests-session22-h200.log)."""
  rows, cols = index_tiles(row_start, col_start, s.shape,
                           vectors and mask.banded)
  seg = () if ids is None else (
      lax.broadcast_in_dim(ids[0], s.shape, [0]),
      lax.broadcast_in_dim(ids[1], s.shape, [1]))
  if rows_are_keys:
    rows, cols, seg = cols, rows, seg[::-1]
  return jnp.where(mask.predicate(rows, cols, *seg), s, -jnp.inf)
