"""One definition of attention masking, shared by the kernels and the reference.

A query row ``i`` (``0 <= i < seq_q``) may attend to key ``j`` (``0 <= j < seq_kv``) iff

* ``j < seq_kv`` (keys past the true length -- block padding -- never count),
* ``diag(i) - left <= j <= diag(i) + right`` where ``diag(i) = i + seq_kv - seq_q``:
  the diagonal is aligned to the *bottom right* as in FlashAttention 2, so with
  ``seq_q < seq_kv`` the last query sees every key. ``causal`` is ``right = 0``;
  a ``window=(left, right)`` bounds both sides; ``None`` means unbounded;
* ``q_segment_ids[i] == kv_segment_ids[j]`` when segment ids are given.

Three views of the same rule:

* :meth:`MaskSpec.predicate` -- the boolean tile for given query/key index vectors
  (kernels build the iotas, the reference passes ``arange``);
* :meth:`MaskSpec.kv_block_range` / :meth:`MaskSpec.q_block_range` -- the range of
  tiles that can hold a visible entry, so fully masked tiles are skipped, not computed;
  :meth:`MaskSpec.kv_full_range` / :meth:`MaskSpec.q_full_range` -- the tiles with
  no masked entry, which need no mask;
* :func:`dense` -- the full ``[batch, seq_q, seq_kv]`` boolean mask for the reference.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Static description of the mask (hashable, so it can be a jit static)."""

  seq_q: int
  seq_kv: int
  causal: bool = False
  window: tuple[int | None, int | None] | None = None
  has_segments: bool = False

  @property
  def offset(self) -> int:
    """``diag(i) = i + offset``: bottom-right alignment of the diagonal."""
    return self.seq_kv - self.seq_q

  @property
  def left(self) -> int | None:
    """How far left of the diagonal a query may look (None: unbounded)."""
    return None if self.window is None else self.window[0]

  @property
  def right(self) -> int | None:
    """How far right of the diagonal a query may look (None: unbounded)."""
    right = None if self.window is None else self.window[1]
    if self.causal:
      right = 0 if right is None else min(right, 0)
    return right

  @property
  def heavy_last(self) -> bool:
    """Whether later query tiles see more keys (a bound right of the diagonal,
    causal included): kernels then run their query tiles last-first, so the
    long ones start first and the short ones fill the last wave."""
    return self.right is not None

  @property
  def banded(self) -> bool:
    """Whether a bound left or right of the diagonal (causal included) makes
    a tile's work vary along the sequence."""
    return self.left is not None or self.right is not None

  def is_trivial(self, seq_kv_padded: int) -> bool:
    """True when every (row, key) pair of the padded problem is visible."""
    return (self.left is None and self.right is None and not self.has_segments
            and seq_kv_padded == self.seq_kv)

  def predicate(self, q_idx, k_idx, q_seg=None, kv_seg=None):
    """Visible-entry tile: ``q_idx [n]`` and ``k_idx [m]`` int32 -> bool ``[n, m]``.

    ``q_seg [n]`` / ``kv_seg [m]`` are the segment ids of those rows and keys
    (required iff ``has_segments``). All four may also come as full ``[n, m]``
    tiles (Mosaic GPU kernels build them in the matmul accumulator's register
    layout).
    """
    if q_idx.ndim == 1:
      q_idx, k_idx = q_idx[:, None], k_idx[None, :]
      if self.has_segments:
        q_seg, kv_seg = q_seg[:, None], kv_seg[None, :]
    visible = k_idx < self.seq_kv
    diag = q_idx + self.offset
    if self.right is not None:
      visible = visible & (k_idx <= diag + self.right)
    if self.left is not None:
      visible = visible & (k_idx >= diag - self.left)
    if self.has_segments:
      visible = visible & (q_seg == kv_seg)
    return visible

  def kv_block_range(self, q_start, block_q: int, block_kv: int,
                     num_kv_blocks: int):
    """KV tiles ``[lo, hi)`` that rows ``q_start .. q_start+block_q-1`` can see.

    ``q_start`` may be a traced int32 (a kernel's program id times
    ``block_q``); for a Python int the range is Python ints.
    """
    lo, hi = 0, num_kv_blocks
    if self.right is not None:
      # last visible key of the last row: q_start + block_q - 1 + offset + right
      last = q_start + (block_q - 1 + self.offset + self.right)
      hi = _minimum(hi, _cdiv_nonneg(last + 1, block_kv))
    if self.left is not None:
      # first visible key of the first row: q_start + offset - left
      first = q_start + (self.offset - self.left)
      lo = _div_nonneg(first, block_kv)
    return lo, hi

  def kv_full_range(self, q_start, block_q: int, block_kv: int):
    """KV tiles ``[lo, hi)`` every key of which rows ``q_start ..
    q_start+block_q-1`` all see (no entry masked), so a kernel can skip the
    mask there; ``hi <= lo`` when there is none. Segment ids can mask any
    entry: then the range is empty."""
    if self.has_segments:
      return 0, 0
    # every key of the tile is a real key (below the true length)
    hi = self.seq_kv // block_kv
    if self.right is not None:
      # the tile's last key is visible to the first row
      hi = jnp.minimum(hi, _div_nonneg(q_start + (self.offset + self.right + 1),
                                       block_kv))
    lo = 0
    if self.left is not None:
      # the tile's first key is visible to the last row
      lo = _cdiv_nonneg(q_start + (block_q - 1 + self.offset - self.left),
                        block_kv)
    return lo, hi

  def q_full_range(self, kv_start, block_kv: int, block_q: int):
    """Query tiles ``[lo, hi)`` every row of which sees every key ``kv_start ..
    kv_start+block_kv-1`` (the dK/dV kernels' view of :meth:`kv_full_range`);
    ``hi <= lo`` when there is none."""
    if self.has_segments:
      return 0, 0
    # row i sees key j iff j - offset - right <= i <= j - offset + left
    lo = 0
    if self.right is not None:
      # the tile's last key is visible to the first row
      lo = _cdiv_nonneg(kv_start + (block_kv - 1 - self.offset - self.right),
                        block_q)
    # no padded key in the tile (kv_start may be traced)
    hi = jnp.where(kv_start + block_kv <= self.seq_kv, jnp.iinfo(jnp.int32).max,
                   0)
    if self.left is not None:
      # the tile's first key is visible to the last row
      hi = jnp.minimum(hi, _div_nonneg(kv_start + (1 - self.offset + self.left),
                                       block_q))
    return lo, hi

  def q_block_range(self, kv_start, block_kv: int, block_q: int,
                    num_q_blocks: int):
    """Query tiles ``[lo, hi)`` whose rows can see keys ``kv_start .. +block_kv-1``."""
    # row i sees key j iff j - offset - right <= i <= j - offset + left
    lo, hi = 0, num_q_blocks
    if self.right is not None:
      first = kv_start - (self.offset + self.right)
      lo = _div_nonneg(first, block_q)
    if self.left is not None:
      last = kv_start + (block_kv - 1 - self.offset + self.left)
      hi = jnp.minimum(hi, _cdiv_nonneg(last + 1, block_q))
    return lo, hi


def _div_nonneg(x, d: int):
  """``max(x, 0) // d`` for traced or Python ints (lax.div truncates toward
  0); a Python int for a Python int."""
  if isinstance(x, int):
    return max(x, 0) // d
  return lax.div(jnp.maximum(x, 0), jnp.int32(d))


def _cdiv_nonneg(x, d: int):
  """``ceil(max(x, 0) / d)``."""
  return _div_nonneg(x + (d - 1), d) if isinstance(x, int) else lax.div(
      jnp.maximum(x, 0) + (d - 1), jnp.int32(d))


def _minimum(a, b):
  """``min(a, b)``: a Python int for Python ints, else traced."""
  return min(a, b) if isinstance(a, int) and isinstance(b, int) else \
      jnp.minimum(a, b)


def dense(spec: MaskSpec, q_segment_ids=None, kv_segment_ids=None):
  """The full mask, bool ``[batch or 1, seq_q, seq_kv]``, for the reference."""
  q_idx = jnp.arange(spec.seq_q, dtype=jnp.int32)
  k_idx = jnp.arange(spec.seq_kv, dtype=jnp.int32)
  if not spec.has_segments:
    return spec.predicate(q_idx, k_idx)[None]
  return jax.vmap(lambda qs, ks: spec.predicate(q_idx, k_idx, qs, ks))(
      q_segment_ids, kv_segment_ids)
