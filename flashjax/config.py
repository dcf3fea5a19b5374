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
MOSAIC_HEAD_DIMS = (64, 128)


@dataclasses.dataclass(frozen=True)
class MosaicBlocks:
  """Tiling of one pass of the Hopper kernels: rows of each streamed K/V tile
  (forward, dQ), of each streamed query tile (dK/dV; the forward ignores it),
  the pipeline's stages, and ``persistent``: one CTA per SM walking the
  output tiles (the forward's and dQ's query tiles, dK/dV's key tiles), so a
  tile's epilogue and the next one's first loads overlap compute.
  ``fused_dq`` (backward): one kernel for dK, dV and dQ, dQ reduce-added in
  float32 per step (FlashAttention 3's 5 matmuls per tile pair instead of 7;
  dQ's sum order then varies from run to run). ``deferred_waits``
  (backward's dK/dV kernel, compiled): dV's product stays on the tensor cores
  while dSᵀ is computed, and dK's while (fused) dSᵀ is handed over and dQ's
  product issued; the step awaits them once, at its end (FlashAttention 3's
  order; the interpreter, which has no in-place accumulator, runs the step
  in the plain order). ``intra_wg_overlap`` (forward, and the backward's dQ
  kernel): each step issues S_j = Q K_jᵀ (and dP_j) together with the
  previous step's P V (dS K) and computes P_j (dS_j) while that runs
  (FlashAttention 3's intra-warpgroup overlap; V's (K's) slot is released a
  step late; the default in the 16-bit d 128 causal forward above 12k
  keys). ``prefetch_q`` (forward): the producer warpgroup loads each
  tile's Q (:class:`pallas_kernels.mosaic.pipeline.Owned`), the next tile's
  as soon as the compute warpgroups issued their last Q Kᵀ, and O goes out
  through its own shared-memory tile, its store left in flight; on a
  persistent grid the next tile's Q then lands while the current one's last
  P V and epilogue run. ``early_handover`` (forward, without the
  intra-warpgroup overlap): the compute warpgroups' ping-pong hands over
  when a tile's last P V is issued rather than after the next tile's first
  Q Kᵀ, so one warpgroup's epilogue (O's store, the next Q's wait) overlaps
  the other's last P V and first Q Kᵀ instead of holding it back (the
  default for the 16-bit forward on one tile a CTA but d 128 causal's,
  which overlaps; on the persistent grid it lost at d 64,
  results/raw/opts-handover-h200.md).
  ``compute_registers``:
  each compute thread's registers, taken from the producer warpgroup's
  (``setmaxnreg``; 240 leaves it 24, FlashAttention 3's split; on the H200
  forward+backward moved by -2.3% to +2.1%, results/raw/opts-registers-h200.md,
  so the default stays 232; 240 in d 128's fused causal backward; in the
  forward alone it is even at d 128 non-causal and loses elsewhere, up to
  1.9% at d 128 causal and 0.7-4.0% at d 64,
  results/raw/opts-fwd-registers-session26-h200.md; in the two-kernel
  backward alone even at d 128 causal and 1.2-1.8% behind at d 64,
  results/raw/opts-bwd-registers-session26-h200.md).
  ``fold_stats`` (backward): the S and dP accumulators start at ``-L2 / u``
  and ``-D`` (:func:`pallas_kernels.mosaic.bwd._starts`) instead of zero,
  so the per-row statistics (in the dK/dV kernel 16 registers each, a
  vector over the tile's queries) are not live while the step computes P
  and dS, and no subtraction runs per entry.
  ``split_dq`` (fused backward): below d 128 too, the two warpgroups share
  their dSᵀ and each takes half of dQ's columns over both warpgroups' keys
  (:meth:`dq_columns`; at d >= 128 the fused kernel always does),
  which halves the float32 dQ the kernel reduce-adds per step.
  ``index_vectors``: under a banded mask (causal or a window), a masked
  step's row and column index tiles are index vectors broadcast over the
  other axis rather than an iota per entry
  (:func:`pallas_kernels.mosaic.pipeline.index_tiles`; the same mask, fewer
  index registers live: the backward's spills go, and the FP8 forward's at
  256-key tiles; the default in both, the 16-bit forward keeps iotas).
  ``step_descriptors``
  (dK/dV kernel): the owned K and V tiles are indexed through an
  optimization barrier in each step (:func:`pallas_kernels.mosaic.bwd.
  _in_step`), so their wgmma descriptors are computed there instead of
  hoisted before the loop and held (or spilled) across it (the default in
  d 128's fused backward, where they had spilled).
  ``stream_k`` (forward, persistent without a band): where whole query
  tiles leave the grid's last round partly idle, the last rounds' tiles are
  split by K/V steps so every CTA runs the same number of steps (Stream-K's
  hybrid, :class:`pallas_kernels.mosaic.pipeline.StreamK`); a tile cut in
  two writes each part's O and L apart, and a small kernel merges them in
  place after the forward (:func:`pallas_kernels.mosaic.fwd.merge`; the
  default without a band from 2k keys, and causal from 8k keys on the
  paired grid, whose mirrored pairs are then split, where every pair has
  the same steps). In the fused backward on the persistent grid without a
  band (off by default), the last rounds' key tiles are split by query
  steps, a cut tile's two parts' float32 dK and dV summed after it
  (:func:`pallas_kernels.mosaic.bwd.merge`). With carried slots it gains
  at d 64 non-causal 4k only, and not in every process (thirty-fourth
  session, bf16 forward+backward ms against the default, H200,
  results/raw/opts-carry-slots-, confirm-stream-k-bwd[-short]-
  session34-h200.md): 4.507 vs 4.609 and 4.508 vs 4.656, then 4.577 vs
  4.628 (fp16 4.748 vs 4.734, 2k even); it loses at 8k (9.084 vs 8.960),
  16k (17.559 vs 17.341, 17.575 vs 17.272) and at d 128 (3.796 vs 3.646,
  14.146 vs 13.901).

  ``carry_slots``: the step loops carry their pipeline slot from step to
  step instead of dividing the CTA's step count by the stages each step.
  Where that count does not start at a constant (the persistent grid's
  later tiles), LLVM made it a 64-bit induction variable and divided it
  by 3 or 5 stages (PTX ``mul.hi.u64``), which took the step loop's slot
  and descriptor arithmetic off ptxas's uniform datapath: the persistent
  d 64 dK/dV kernel ran 37 more integer instructions a warp per step and
  lost 1-6% to one tile a CTA (thirty-third session,
  results/ncu-h200/ncu-bwd-persistent-source.md, results/raw/dump-split-
  tail[-slots]-sass-session33-cpu.md; a loop carrying its slot compiled
  to the one-tile loop's 469 instructions). On the persistent backward it
  gives that loop back (465 instructions, results/raw/dump-persistent-
  carry-ptx-session34-h200.tar.xz) but not the one-tile kernel's time
  (thirty-fourth session, bf16 forward+backward ms, persistent with / without
  carried slots / default, results/raw/opts-carry-slots-session34-h200.md):
  d 64 4k 4.669 / 4.781 / 4.609, 16k 18.547 / 18.290 / 17.341; d 128 4k
  3.733 / 3.683 / 3.646, 16k 14.225 / 13.943 / 13.901. Under Stream-K it
  gains 2-5% (d 64 4k / 8k / 16k 4.508 / 9.084 / 17.575 vs 4.735 / 9.307 /
  17.849, results/raw/confirm-stream-k-bwd-session34-h200.md).

  ``lse_log2`` (backward): the kernels take L already in log2 units (rows
  that see no key as +inf, :func:`pallas_kernels.common.
  lse_log2_for_recompute`), converted once by XLA before them, instead of
  converting each L tile they load: in d 64's dK/dV kernel that is 16
  FSETP, 16 FMUL and 32 FSEL a thread a step, 64 of its step loop's 469
  SASS instructions (results/raw/dump-split-tail-ptx-session33-h200.tar.xz,
  compiled here; thirty-fourth session). With ``fold_stats`` XLA hands
  them S's start -L2 / u instead, the only use they then make of L (d 128's
  folded loop converted and scaled each tile: 16 FSETP, 16 FSEL, 32 FMUL
  of 394, results/raw/dump-ptx-session25-h200.tar.xz). The defaults take
  it at d 64 non-causal, where it gained 1-2% (thirty-fifth session; the
  figures in docs/defaults.md).

  ``owned_registers`` (compiled): the tiles a compute warpgroup owns are
  loaded once into registers as the register operands (RS) of the products
  that read them every step, which then read only their other operand from
  shared memory: the forward's Q for S = Q Kᵀ (at a tile's first step, once
  it has landed), the dK/dV kernel's K and V for Sᵀ = K Qᵀ and dPᵀ = V dOᵀ,
  the dQ kernel's Q and dO for S = Q Kᵀ and dP = dO Vᵀ. A warpgroup's 64
  rows take 16 registers a thread at d 64, 32 at d 128 (FP8: half), and
  spare 8 KiB (16 KiB at d 128) of shared-memory reads per product and
  step. The interpreter, which has no register operand, runs the SS form.

  ``consistent_delta`` (backward, two kernels): as the portable backward
  does since the thirty-fourth session, the dQ kernel runs first and sums
  each row of G = P ∘ (dP - D) (dS before a softcap's factor), whose excess
  over dL is what D = rowsum(dO ∘ O) from the rounded O misses of the
  backward's own rowsum(P ∘ dP); it takes dQ as dS (K - k̄) (k̄ the keys'
  mean; not under a softcap) and hands the dK/dV kernel D + excess. The
  same gradients in exact arithmetic, closer to float32's where the keys
  share a direction (the margin case of the README's Status). The fused
  backward has no pass over the rows before dK/dV: not with ``fused_dq``.

  ``shared_full``: the streamed tiles of a step (the dK/dV kernel's Q, dO,
  L and D; the dQ kernel's and the forward's K and V, not with their
  overlap) land on one barrier a stage, which the step waits on once, where
  each had its own barrier, awaited in turn (four waits a step in the dK/dV
  kernel, at its start; ``try_wait`` spins, waiting on the long scoreboard,
  were 32% of its stall samples at d 64, results/ncu-h200/ncu-source-bwd.md).
  In the forward, S = Q Kᵀ then waits for V's tile too.

  ``persistent=True`` with a banded mask pairs each query tile with its
  mirror (equal work a CTA). It did not finish compiled on the H200 while
  the two compute warpgroups could mask different K/V tiles
  (benchmarks/results/debug-hang-h200.md); both now mask the same tiles
  and the cases that hung finish (results/raw/hang-check-session16-h200.log).
  The defaults take it causal up to 12k keys (the FP8 forward: 16k)."""

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
    unless ``prefetch_q`` gives O its own; Q and dO; K and V) and the
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
      return ((1 + self.prefetch_q) * wgs * rows * head_dim
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
                   seq_kv: int | None = None) -> Config:
  """Per-head-dim defaults.

  ``head_dim`` is the padded (power of 2) head dim the kernels see,
  ``itemsize`` the input dtype's bytes (of the 16-bit inputs under an FP8
  policy); ``causal`` and ``fp8`` (an FP8 forward; ``fp8_qk=False``: only P
  and V in FP8) pick the Hopper forward's tiling; ``banded`` (default:
  ``causal``): whether a causal or window bound makes the query tiles' work
  unequal, which keeps the forward off the persistent grid (causal up to 12k
  keys, FP8 16k, excepted: mirrored pairs); ``seq_kv`` picks the causal Hopper
  forward's K/V tile and grid and the backward's kernels (None: the causal
  forward's grid as beyond 16k keys, the FP8 causal forward's K/V tile as
  below 2k keys, the backward as below 4k keys). The
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
  # causal on the persistent grid (mirrored pairs of query tiles) up to 12k
  # keys, FP8 up to 16k: equal work a pair (beyond, one tile a CTA won)
  paired = (causal and seq_kv is not None
            and seq_kv <= (16384 if fp8 and fp8_qk else 12288))
  if fp8 and not fp8_qk:
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
  # from 2k keys without a band, from 8k on the paired grid; index vectors
  # in the FP8 forward's masked steps at 256-key tiles (the 16-bit forward
  # spills nothing with iotas and keeps them).
  banded = causal if banded is None else banded
  persistent = not banded or paired
  overlap = causal and not persistent and head_dim > 64 and not fp8
  mosaic = MosaicBlocks(block_kv=fwd_kv, stages=2, persistent=persistent,
                        prefetch_q=True, intra_wg_overlap=overlap,
                        early_handover=not persistent and not fp8
                        and not overlap,
                        index_vectors=fp8 and fwd_kv > 128,
                        stream_k=(not banded and (seq_kv is None
                                                  or seq_kv >= 2048))
                        or (paired and seq_kv >= 8192))
  # Backward: fused (dQ in the dK/dV kernel) at d 128 non-causal, causal
  # from 8k keys (240 registers a compute thread), d 64 from 4k keys
  # non-causal and 16k causal (dQ's columns split between the
  # warpgroups); two kernels elsewhere. Deferred waits and folded
  # statistics at d 128, step descriptors in its fused kernel; index
  # vectors in every masked step; L in log2 units from XLA at d 64
  # non-causal; the fused kernel's query tiles in 3 stages at d 128, 5 at
  # d 64 non-causal, 2 at d 64 causal (the two kernels: 2).
  split = (head_dim <= 64 and seq_kv is not None and
           seq_kv >= (16384 if causal else 4096))
  long_causal = (head_dim > 64 and causal and seq_kv is not None and
                 seq_kv >= 8192)
  fused = (head_dim > 64 and not causal) or split or long_causal
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
                            compute_registers=240 if long_causal else 232,
                            step_descriptors=fused and head_dim > 64,
                            lse_log2=lse_log2)
  return Config(fwd=config.fwd.shrink_to_fit(head_dim, itemsize),
                bwd=config.bwd.shrink_to_fit(head_dim, itemsize), mosaic=mosaic,
                mosaic_bwd=mosaic_bwd)
