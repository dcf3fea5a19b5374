"""MaskSpec's tile ranges against the predicate, entry by entry."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flashjax.masks import MaskSpec

bound = st.one_of(st.none(), st.integers(0, 70))


@settings(max_examples=200, deadline=None)
@given(seq_q=st.integers(1, 200), seq_kv=st.integers(1, 200),
       causal=st.booleans(), window=st.one_of(st.none(), st.tuples(bound, bound)),
       block_q=st.sampled_from([16, 64, 128]),
       block_kv=st.sampled_from([16, 32, 128]))
def test_ranges_match_the_predicate(seq_q, seq_kv, causal, window, block_q,
                                    block_kv):
  spec = MaskSpec(seq_q, seq_kv, causal=causal, window=window)
  num_q = -(-seq_q // block_q)
  num_kv = -(-seq_kv // block_kv)
  shape = (num_q * block_q, num_kv * block_kv)
  visible = np.broadcast_to(spec.predicate(
      np.arange(shape[0], dtype=np.int32),
      np.arange(shape[1], dtype=np.int32)), shape)
  tiles = visible.reshape(num_q, block_q, num_kv, block_kv)
  any_visible = tiles.any(axis=(1, 3))
  all_visible = tiles.all(axis=(1, 3))
  for i in range(num_q):
    lo, hi = (int(x) for x in spec.kv_block_range(i * block_q, block_q,
                                                  block_kv, num_kv))
    # every tile with a visible entry is in [lo, hi)
    assert set(np.flatnonzero(any_visible[i])) <= set(range(lo, hi))
    a, b = (int(x) for x in spec.kv_full_range(i * block_q, block_q, block_kv))
    # [a, b) holds only fully visible tiles, and all of them
    assert set(range(max(a, 0), min(b, num_kv))) == set(
        np.flatnonzero(all_visible[i]))
  for j in range(num_kv):
    lo, hi = (int(x) for x in spec.q_block_range(j * block_kv, block_kv,
                                                 block_q, num_q))
    assert set(np.flatnonzero(any_visible[:, j])) <= set(range(lo, hi))
    a, b = (int(x) for x in spec.q_full_range(j * block_kv, block_kv, block_q))
    assert set(range(max(a, 0), min(b, num_q))) == set(
        np.flatnonzero(all_visible[:, j]))


def test_segments_have_no_full_tiles():
  spec = MaskSpec(128, 128, has_segments=True)
  a, b = spec.kv_full_range(0, 64, 64)
  assert b <= a
  a, b = spec.q_full_range(0, 64, 64)
  assert b <= a


def test_heavy_last_when_rows_see_more_keys_further_down():
  """Kernels run query tiles last-first exactly when a bound right of the
  diagonal makes the last rows see the most keys (and never fewer than the
  first row)."""
  for spec in (MaskSpec(64, 64, causal=True), MaskSpec(64, 96, window=(None, 3))):
    visible = spec.predicate(np.arange(64), np.arange(spec.seq_kv)).sum(1)
    assert spec.heavy_last and visible[-1] > visible[0]
  for spec in (MaskSpec(64, 64), MaskSpec(64, 64, window=(8, None))):
    assert not spec.heavy_last
