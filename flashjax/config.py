"""Block sizes for the kernels: small frozen dataclasses that check themselves.

Nothing here is semantic (causal, window, ... live in :mod:`flashjax.masks`);
a config only says how the work is tiled.
"""

from __future__ import annotations

import dataclasses


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

  def fit(self, seq_q: int, seq_kv: int) -> "Blocks":
    """Shrink the blocks for short sequences (never below 16: tl.dot's minimum)."""
    return dataclasses.replace(
        self,
        block_q=min(self.block_q, max(16, next_pow2(seq_q))),
        block_kv=min(self.block_kv, max(16, next_pow2(seq_kv))))


@dataclasses.dataclass(frozen=True)
class Config:
  """Tiling of the forward kernel and of the two backward kernels (dQ, dK/dV)."""

  fwd: Blocks
  bwd: Blocks


def next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def default_config(head_dim: int) -> Config:
  """Per-head-dim defaults for the portable (Triton-lowered) kernels.

  ``head_dim`` is the padded (power of 2) head dim the kernels see. The choices
  for 64 and 128 are the fastest of benchmarks/tune_blocks.py on the H100
  (benchmarks/results/tune-h100.json: bf16, batch 4 × seq 4096, causal and not).
  """
  if head_dim <= 64:
    # fwd 64×64 was fastest non-causal (1.51 ms) and within 3% causal; bwd 64×64
    # with 4 warps beat every 8-warp config by ≥1.2×.
    return Config(fwd=Blocks(64, 64, num_warps=4, num_stages=3),
                  bwd=Blocks(64, 64, num_warps=4, num_stages=2))
  if head_dim <= 128:
    # fwd 128×128 / 8 warps fastest non-causal (1.25 ms), 3% off causal's best.
    return Config(fwd=Blocks(128, 128, num_warps=8, num_stages=3),
                  bwd=Blocks(64, 64, num_warps=4, num_stages=2))
  # d = 256 (not tuned): halve the tiles so Q, K, V and the accumulators fit in
  # shared memory and registers.
  return Config(fwd=Blocks(64, 32, num_warps=8, num_stages=2),
                bwd=Blocks(32, 32, num_warps=8, num_stages=1))
