"""Block sizes for the kernels: small frozen dataclasses that check themselves.

Nothing here is semantic (causal, window, ... live in :mod:`flashjax.masks`);
a config only says how the work is tiled.
"""

from __future__ import annotations

import dataclasses

# Shared memory a Hopper thread block may use (227 KiB); Triton reported 232448
# bytes available on the H100 (benchmarks/results/tests-h100-smem-failure.log,
# a run with an oversized float32 config).
SMEM_BYTES = 232448


def _is_pow2(n: int) -> bool:
  return n > 0 and (n & (n - 1)) == 0


@dataclasses.dataclass(frozen=True)
class Blocks:
  """One kernel's tiling: rows of Q and K/V per tile, Triton warps and stages."""

  block_q: int
  block_kv: int
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_kv"):
      value = getattr(self, name)
      if not (_is_pow2(value) and value >= 16):
        raise ValueError(f"Blocks.{name} must be a power of 2 >= 16 (tl.dot "
                         f"needs it), got {value}.")
    if self.num_warps not in (1, 2, 4, 8, 16):
      raise ValueError(f"Blocks.num_warps must be 1, 2, 4, 8 or 16, got "
                       f"{self.num_warps}.")
    if self.num_stages < 1:
      raise ValueError(f"Blocks.num_stages must be >= 1, got {self.num_stages}.")

  def smem_bytes(self, head_dim: int, itemsize: int) -> int:
    """Shared memory of the software pipeline: two streamed tiles (K and V, or
    Q and dO) per stage. Matches what Triton asked for on the H100 (f32, d 128,
    128×128, 3 stages: 393216 bytes)."""
    return 2 * self.num_stages * max(self.block_q, self.block_kv) * head_dim * itemsize

  def shrink_to_fit(self, head_dim: int, itemsize: int) -> "Blocks":
    """Drop stages (down to 2), then halve the tiles, until smem_bytes fits."""
    blocks = self
    while blocks.smem_bytes(head_dim, itemsize) > SMEM_BYTES:
      if blocks.num_stages > 2:
        blocks = dataclasses.replace(blocks, num_stages=blocks.num_stages - 1)
      elif max(blocks.block_q, blocks.block_kv) > 16:
        blocks = dataclasses.replace(blocks, block_q=max(16, blocks.block_q // 2),
                                     block_kv=max(16, blocks.block_kv // 2))
      else:
        blocks = dataclasses.replace(blocks, num_stages=1)
        break
    return blocks

  def fit(self, seq_q: int, seq_kv: int) -> "Blocks":
    """Shrink the blocks for short sequences (never below 16: tl.dot's minimum)."""
    return dataclasses.replace(
        self,
        block_q=min(self.block_q, max(16, next_pow2(seq_q))),
        block_kv=min(self.block_kv, max(16, next_pow2(seq_kv))))


# Mosaic GPU (Hopper) kernels: each compute warpgroup owns 64 rows (the wgmma
# M), two compute warpgroups per CTA, plus one producer warpgroup.
MOSAIC_BLOCK_Q = 64
MOSAIC_COMPUTE_WGS = 2
# Registers a thread of the Hopper kernels' CTAs (the compute warpgroups and
# the producer, 128 threads each) starts with: the SM's 65536 shared out,
# rounded down to a multiple of 8 (168; ncu reports it), which ``setmaxnreg``
# moves from the producer warpgroup to the compute ones.
LAUNCH_REGISTERS = 65536 // ((MOSAIC_COMPUTE_WGS + 1) * 128) // 8 * 8
# Head dims (padded) the Hopper forward takes; its backward takes the first
# two (at d 256 its dK and dV accumulators alone would need 256 registers a
# thread), d 256's gradients come from the portable backward. "auto" picks
# the Hopper forward at d 256 only once it has run compiled on a GPU.
MOSAIC_HEAD_DIMS = (64, 128, 256)
MOSAIC_BWD_HEAD_DIMS = (64, 128)
MOSAIC_AUTO_HEAD_DIMS = (64, 128)


@dataclasses.dataclass(frozen=True)
class MosaicBlocks:
  """Tiling and options of one pass of the Hopper kernels: ``Config.mosaic``
  the forward's, ``Config.mosaic_bwd`` the dQ and dK/dV kernels'. Brackets
  say which kernels an option changes; :func:`default_config` picks them,
  and docs/defaults.md gives the runs behind each default and each option
  left off, with their figures and raw files.

  Tiling:

  - ``block_kv``: rows of each streamed K/V tile (forward, dQ): 64, 128 or
    256, a wgmma N.
  - ``block_q_dkv``: rows of each streamed query tile (dK/dV): 64 or 128.
  - ``stages``: shared-memory slots a stream, at least 2.
  - ``persistent``: one CTA per SM walks the output tiles (the forward's
    and dQ's query tiles, dK/dV's key tiles), so a tile's epilogue and the
    next one's first loads overlap compute; under a banded mask the query
    tiles go in mirrored pairs, equal work a pair.
  - ``stream_k`` (persistent, no band; forward, fused backward): where
    whole tiles leave the last round partly idle, the last rounds' tiles
    are split by steps so every CTA runs as many (Stream-K's hybrid,
    :class:`pallas_kernels.mosaic.pipeline.StreamK`); a cut tile's two
    parts are merged after the kernel (:func:`pallas_kernels.mosaic.fwd.
    merge`, :func:`pallas_kernels.mosaic.bwd.merge`).
  - ``multicast`` (forward, persistent, no band): CTAs in clusters of two
    take neighbouring query tiles of one head and walk its K/V tiles in
    step, each tile loaded once for both, half by each CTA's TMA into both
    CTAs' shared memory (FlashAttention 3's cluster at d >= 128, 16-bit,
    non-causal): half the L2 reads a step. Where a head's query tiles do
    not pair up, the grid stays unclustered; with ``stream_k`` a unit is a
    cluster's pair of tiles.
  - ``compute_registers``: each compute thread's registers, taken from the
    producer warpgroup's (``setmaxnreg``; 240 leaves it 24, FlashAttention
    3's split).

  Schedules (FlashAttention 3's, and others):

  - ``fused_dq`` (backward): one kernel for dK, dV and dQ, dQ reduce-added
    in float32 per step (5 matmuls a tile pair instead of 7; dQ's sum
    order then varies from run to run).
  - ``split_dq`` (fused backward): below d 128 too, the two warpgroups
    share their dSᵀ and each takes half of dQ's columns over both
    warpgroups' keys (:meth:`dq_columns`), which halves the float32 dQ
    reduce-added a step.
  - ``deferred_waits`` (dK/dV, compiled): the step awaits its products
    once, at its end, so dV's product runs while dSᵀ is computed and dK's
    while dQ's is issued (the interpreter runs the plain order).
  - ``intra_wg_overlap`` (forward, dQ): each step issues S_j = Q K_jᵀ (and
    dP_j) with the previous step's P V (dS K) and computes P_j (dS_j)
    while that runs; V's (K's) slot is released a step late.
  - ``prefetch_q`` (forward): the producer loads each tile's Q, the next
    tile's once the compute warpgroups issued their last Q Kᵀ, and O goes
    out through its own shared-memory tile, its store left in flight.
  - ``early_handover`` (forward, without the overlap): the ping-pong hands
    over when a tile's last P V is issued, so one warpgroup's epilogue
    overlaps the other's last P V and first Q Kᵀ.
  - ``shared_full``: a step's streamed tiles (dK/dV's Q, dO, L and D; the
    dQ kernel's and the forward's K and V, not with their overlap) land on
    one barrier a stage, awaited once a step, where each had its own.

  Registers and instructions:

  - ``fold_stats`` (backward): the S and dP accumulators start at
    ``-L2 / u`` and ``-D`` (:func:`pallas_kernels.mosaic.bwd._starts`), so
    the statistics are not live while P and dS are computed, and no
    subtraction runs per entry.
  - ``lse_log2`` (backward): the kernels take L already in log2 units,
    converted once by XLA (with ``fold_stats``, S's start -L2 / u), instead
    of converting each L tile they load.
  - ``index_vectors``: under a banded mask a masked step's row and column
    indices are vectors broadcast over the other axis, not an iota per
    entry (:func:`pallas_kernels.mosaic.pipeline.index_tiles`): fewer index
    registers live.
  - ``step_descriptors`` (dK/dV): the owned K and V tiles are indexed
    through an optimization barrier in each step
    (:func:`pallas_kernels.mosaic.bwd._in_step`), so their wgmma
    descriptors are computed there, not hoisted and held across the loop.
  - ``carry_slots``: the step loops carry their pipeline slot instead of
    dividing the CTA's step count by the stages each step (which, where
    the count does not start at a constant, LLVM did in 64 bits, off
    ptxas's uniform datapath).
  - ``owned_registers`` (compiled): the tiles a compute warpgroup owns (the
    forward's Q; dK/dV's K and V; dQ's Q and dO) are loaded once into
    registers as the register operands of the products that read them
    every step (the interpreter, which has no register operand, runs the
    shared-memory form).

  Accuracy:

  - ``consistent_delta`` (two-kernel backward): as the portable backward
    does, the dQ kernel runs first, sums each row of G = P ∘ (dP - D) and
    of P'K (P' = P times a softcap's factor: one more product a step),
    takes dQ with D + each row's excess over dL (dQ - excess ⊗ P'K) and
    hands the dK/dV kernel D + excess: gradients with a D consistent with
    the backward's own P (the margin cases of the README's Status). Not
    with ``fused_dq``.
  - ``o_residual`` (forward, 16-bit; when differentiated): the forward also
    writes O's rounding residual r = O32 - round(O32) in O's dtype, and the
    backward takes D = rowsum(dO ∘ (O + r)), the unrounded O's: the same
    margin cases without a cost in the backward (one more tile stored in
    the forward's epilogue, one more residual of O's size kept for the
    backward). Any backward tiling, fused included."""

  block_kv: int = 64
  stages: int = 2
  block_q_dkv: int = 64
  persistent: bool = False
  fused_dq: bool = False
  deferred_waits: bool = False
  intra_wg_overlap: bool = False
  prefetch_q: bool = False
  early_handover: bool = False
  compute_registers: int = 232
  fold_stats: bool = False
  split_dq: bool = False
  index_vectors: bool = False
  step_descriptors: bool = False
  stream_k: bool = False
  carry_slots: bool = False
  lse_log2: bool = False
  owned_registers: bool = False
  consistent_delta: bool = False
  shared_full: bool = False
  o_residual: bool = False
  multicast: bool = False

  def __post_init__(self):
    if self.block_kv not in (64, 128, 256):
      raise ValueError(f"MosaicBlocks.block_kv must be 64, 128 or 256 (a wgmma "
                       f"N), got {self.block_kv}.")
    if self.block_q_dkv not in (64, 128):
      raise ValueError(f"MosaicBlocks.block_q_dkv must be 64 or 128, got "
                       f"{self.block_q_dkv}.")
    if self.stages < 2:
      raise ValueError(f"MosaicBlocks.stages must be >= 2, got {self.stages}.")
    if self.consistent_delta and self.fused_dq:
      raise ValueError("MosaicBlocks.consistent_delta needs the two-kernel "
                       "backward (its dQ kernel first), got fused_dq=True.")
    # the producer keeps at least 24 (setmaxnreg takes multiples of 8)
    most = ((MOSAIC_COMPUTE_WGS + 1) * LAUNCH_REGISTERS - 24) // MOSAIC_COMPUTE_WGS
    if (self.compute_registers % 8 or
        not LAUNCH_REGISTERS <= self.compute_registers <= most):
      raise ValueError(
          f"MosaicBlocks.compute_registers must be a multiple of 8 from "
          f"{LAUNCH_REGISTERS} to {most}, got {self.compute_registers}.")

  def smem_bytes(self, head_dim: int, itemsize: int, backward: bool = False,
                 fp8: bool = False, fp8_qk: bool = True) -> int:
    """Shared memory of the forward kernel, or (``backward``) the larger of the
    dQ and dK/dV kernels, compiled: owned tiles (Q, with O written over it
    unless ``prefetch_q`` gives O its own, and ``o_residual``'s r; Q and
    dO; K and V) and the
    streamed stages (P and dS stay in registers; the
    1-D L/D tiles and barriers fit in the slack). ``itemsize``: the inputs'
    bytes; ``fp8``: the FP8 forward (1-byte Q, K, V, and an O tile of
    ``itemsize`` bytes of its own; with ``fp8_qk=False`` Q and K keep
    ``itemsize`` bytes)."""
    rows, wgs = MOSAIC_BLOCK_Q, MOSAIC_COMPUTE_WGS
    if fp8:
      qk_bytes = 1 if fp8_qk else itemsize
      return (wgs * rows * head_dim * (qk_bytes + itemsize)
              + self.stages * self.block_kv * head_dim * (qk_bytes + 1))
    if not backward:
      return ((1 + self.prefetch_q + self.o_residual) * wgs * rows * head_dim
              + self.stages * 2 * self.block_kv * head_dim) * itemsize
    if not self.fused_dq:      # the larger of the dQ and dK/dV kernels
      streamed = max(self.block_kv, self.block_q_dkv)
      return (2 * wgs * rows * head_dim
              + self.stages * 2 * streamed * head_dim) * itemsize
    # one kernel: dK/dV's, plus dSᵀ of both warpgroups, double-buffered, and
    # each warpgroup's float32 share of a dQ tile
    return ((2 * wgs * rows * head_dim
             + self.stages * 2 * self.block_q_dkv * head_dim
             + 2 * wgs * rows * self.block_q_dkv) * itemsize
            + wgs * self.block_q_dkv * self.dq_columns(head_dim) * 4)

  def summary(self) -> str:
    """The tiling and the options that are on, as :func:`flashjax.explain`
    prints them: ``block_kv=128 stages=2 block_q_dkv=64
    compute_registers=232 with persistent, prefetch_q``."""
    values = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]
    on = [name for name, value in values if value is True]
    return " ".join(f"{name}={value}" for name, value in values
                    if not isinstance(value, bool)) + (
                        f" with {', '.join(on)}" if on else "")

  def dq_columns(self, head_dim: int) -> int:
    """dQ columns per warpgroup in the fused backward: at d >= 128 (or with
    ``split_dq``) the two warpgroups share their dSᵀ and each takes a half
    of the columns over both warpgroups' keys (one 128-key reduction per
    tile); otherwise each takes all of them over its own 64 keys (two
    64-key reductions per tile)."""
    if head_dim >= 128 or self.split_dq:
      return head_dim // MOSAIC_COMPUTE_WGS
    return head_dim


@dataclasses.dataclass(frozen=True)
class Config:
  """Tiling of the portable forward kernel and of its two backward kernels
  (dQ, dK/dV), and of the Hopper kernels (``backend="mosaic"``): ``mosaic``
  for the forward, ``mosaic_bwd`` for dQ and dK/dV."""

  fwd: Blocks
  bwd: Blocks
  mosaic: MosaicBlocks = MosaicBlocks()
  mosaic_bwd: MosaicBlocks = MosaicBlocks()


def next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def padded_head_dim(head_dim: int) -> int:
  """The head dim the kernels see: the next power of 2, at least 16 (tl.dot)."""
  return max(16, next_pow2(head_dim))


def default_config(head_dim: int, itemsize: int = 2, *, causal: bool = False,
                   fp8: bool = False, fp8_qk: bool = True,
                   banded: bool | None = None,
                   seq_kv: int | None = None,
                   seq_q: int | None = None,
                   deterministic: bool = False) -> Config:
  """Per-head-dim defaults.

  ``head_dim`` is the padded (power of 2) head dim the kernels see,
  ``itemsize`` the input dtype's bytes (of the 16-bit inputs under an FP8
  policy); ``causal`` and ``fp8`` (an FP8 forward; ``fp8_qk=False``: only P
  and V in FP8) pick the Hopper forward's tiling; ``banded`` (default:
  ``causal``): whether a causal or window bound makes the query tiles' work
  unequal, which keeps the forward off the persistent grid (mirrored pairs
  excepted: causal up to 12k keys, FP8 16k, 16-bit d 64 beyond where
  Stream-K splits the pairs); ``seq_kv`` picks the causal Hopper forward's
  K/V tile and grid and the backward's kernels (None: the causal forward's
  grid as beyond 16k keys, the FP8 causal forward's K/V tile as below 2k
  keys, the backward as below 4k keys), ``seq_q`` (default ``seq_kv``)
  whether 16-bit d 64's causal query tiles pair up evenly there;
  ``deterministic``: the Hopper backward as two kernels (dQ; dK/dV) where
  it would fuse dQ into the dK/dV kernel, whose float32 reduce-adds into
  dQ land in an order that varies from run to run. The
  16-bit choices for 64 and 128 are the fastest of
  benchmarks/tune_blocks.py on the H100 (bf16, batch 4 × seq 4096, causal
  and not); wider dtypes shrink the portable kernels' tiles until their
  pipeline's shared memory fits.
  """
  if head_dim <= 64:
    # fwd 64×64 was fastest non-causal (1.51 ms) and within 3% causal; bwd 64×64
    # with 4 warps beat every 8-warp config by ≥1.2× (results/tune-h100.json).
    config = Config(fwd=Blocks(64, 64, num_warps=4, num_stages=3),
                    bwd=Blocks(64, 64, num_warps=4, num_stages=2))
  elif head_dim <= 128:
    # fwd 128×128 / 8 warps fastest non-causal (1.25 ms), 3% off causal's best.
    config = Config(fwd=Blocks(128, 128, num_warps=8, num_stages=3),
                    bwd=Blocks(64, 64, num_warps=4, num_stages=2))
  else:
    # d = 256 (not tuned): smaller tiles keep the accumulators in registers.
    config = Config(fwd=Blocks(64, 32, num_warps=8, num_stages=2),
                    bwd=Blocks(32, 32, num_warps=8, num_stages=1))
  # The Hopper kernels: each choice below is the faster side of a run on
  # the H100 or H200 against the alternatives (tune_blocks.py --backend
  # mosaic, then bench_attention.py options, one process each); the runs,
  # with their figures and raw files: docs/defaults.md.
  # Forward K/V tiles: 256 rows at d 64 (128 when causal below 4k keys,
  # where the diagonal tile masks more of a larger tile), 128 at d 128; FP8
  # 256 (causal below 2k keys: 128), 128 when K stays 16-bit.
  short = causal and seq_kv is not None and seq_kv < 4096
  # d 256 (untuned): 64-row K/V tiles, and O written over Q's tile (no
  # prefetch) without O's rounding residual (the portable backward corrects
  # D itself): Q and two stages of K and V take 192 of the 227 KiB
  wide = head_dim > 128
  # causal on the persistent grid (mirrored pairs of query tiles): equal
  # work a pair; up to 12k keys, FP8 up to 16k (beyond, one tile a CTA
  # won); 16-bit d 64 also beyond where Stream-K splits the pairs
  # (self-attention, an even number of 128-row query tiles: every pair the
  # same steps): 0.94-0.98x one tile a CTA's time at 16k / 24k / 32k, where
  # the pairs without it took 1.02x at 16k (forty-sixth session)
  seq_q = seq_kv if seq_q is None else seq_q
  cta_rows = MOSAIC_COMPUTE_WGS * MOSAIC_BLOCK_Q
  split_pairs = (head_dim <= 64 and not fp8 and seq_q == seq_kv
                 and seq_q is not None and -(-seq_q // cta_rows) % 2 == 0)
  paired = causal and seq_kv is not None and (
      seq_kv <= (16384 if fp8 and fp8_qk else 12288) or split_pairs)
  if wide:
    fwd_kv = 64
  elif fp8 and not fp8_qk:
    # P and V in FP8, K in 16 bits: 256-row tiles do not fit (untuned)
    fwd_kv = 128
  elif fp8:
    # causal from 2k keys 256 rows too, with index vectors (below)
    fwd_kv = 128 if causal and (seq_kv is None or seq_kv < 2048) else 256
  else:
    fwd_kv = 256 if head_dim <= 64 and not short else 128
  # Forward options: Q prefetched by the producer everywhere; the
  # persistent grid without a band (and paired, above); on one tile a CTA
  # the 16-bit early hand-over, or at d 128 causal (above 12k keys) the
  # intra-warpgroup overlap instead; Stream-K's split of the last rounds
  # from 2k keys without a band, on the paired grid from 8k (16-bit d 64:
  # from 4k); index vectors in the FP8 forward's masked steps at 256-key
  # tiles (the 16-bit forward spills nothing with iotas and keeps them).
  # O's rounding residual for the backward's D in every 16-bit forward (the
  # margin cases; 0-4% of forward+backward, thirty-ninth session). Q as the
  # register operand of S = Q Kᵀ in the 16-bit d 128 forward without a band
  # from 4k keys (1.4-2.5% at 16k and 0.6-4.3% at 4k in four processes;
  # 2k either way).
  banded = causal if banded is None else banded
  persistent = not banded or paired
  overlap = (causal and not persistent and head_dim > 64 and not fp8
             and not wide)
  long_kv = seq_kv is None or seq_kv >= 4096
  paired_stream_k = paired and seq_kv >= (
      4096 if head_dim <= 64 and not fp8 else 8192)
  mosaic = MosaicBlocks(block_kv=fwd_kv, stages=2, persistent=persistent,
                        prefetch_q=not wide, intra_wg_overlap=overlap,
                        early_handover=not persistent and not fp8
                        and not overlap,
                        index_vectors=fp8 and fwd_kv > 128,
                        stream_k=(not banded and (seq_kv is None
                                                  or seq_kv >= 2048))
                        or paired_stream_k,
                        o_residual=not fp8 and not wide,
                        owned_registers=(head_dim > 64 and not banded
                                         and not fp8 and long_kv
                                         and not wide))
  # Backward: fused (dQ in the dK/dV kernel) at d 128 non-causal, causal
  # from 8k keys (240 registers a compute thread), d 64 from 4k keys
  # non-causal and 16k causal (dQ's columns split between the
  # warpgroups); two kernels elsewhere. Deferred waits and folded
  # statistics at d 128, step descriptors in its fused kernel; index
  # vectors in every masked step; L in log2 units from XLA at d 64
  # non-causal; the fused kernel's query tiles in 3 stages at d 128, 5 at
  # d 64 non-causal, 2 at d 64 causal (the two kernels: 2). d 64's fused
  # non-causal kernel reads its owned K and V tiles as register operands
  # (1.2-2.4% faster in two processes; slower causal and at d 128) and
  # awaits a step's streamed tiles on one barrier (shared_full: 1.6-4.8%
  # at 4k-16k, bf16 and fp16, two processes, forty-eighth session; with
  # the two kernels at 2k within noise, not taken there), as does d 128's
  # fused kernel (shared_full, forty-ninth session: causal 8k 5-7%, 16k
  # -1 to +6%; non-causal 2k-16k 1-5%, 16k once -1.8%; d 64's fused causal
  # kernel -1 to +2%, not taken).
  split = (head_dim <= 64 and seq_kv is not None and not deterministic and
           seq_kv >= (16384 if causal else 4096))
  long_causal = (head_dim > 64 and causal and seq_kv is not None and
                 seq_kv >= 8192)
  fused = not deterministic and (
      (head_dim > 64 and not causal) or split or long_causal)
  lse_log2 = head_dim <= 64 and not causal
  if not fused:
    stages = 2
  elif head_dim > 64:
    stages = 3
  else:
    stages = 2 if causal else 5
  mosaic_bwd = MosaicBlocks(block_kv=128, stages=stages,
                            block_q_dkv=64, fused_dq=fused, split_dq=split,
                            deferred_waits=head_dim > 64,
                            fold_stats=head_dim > 64, index_vectors=True,
                            compute_registers=(240 if fused and long_causal
                                               else 232),
                            step_descriptors=fused and head_dim > 64,
                            lse_log2=lse_log2,
                            owned_registers=split and not causal,
                            shared_full=fused and not (split and causal))
  return Config(fwd=config.fwd.shrink_to_fit(head_dim, itemsize),
                bwd=config.bwd.shrink_to_fit(head_dim, itemsize), mosaic=mosaic,
                mosaic_bwd=mosaic_bwd)
