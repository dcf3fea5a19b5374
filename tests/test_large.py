"""Long sequences (4k-24k) on the GPU: the compiled kernels against the f32 reference.

These shapes take minutes in interpret mode, so they run only where JAX sees a
GPU; CI (CPU) covers the same code paths at small shapes in test_attention.py.
"""

from __future__ import annotations

import jax
import pytest

from harness import BACKENDS, Case, check_backend
from test_fp8 import check_fp8_forward

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason="long sequences run on the GPU only")


@pytest.mark.parametrize("case", [
    Case(dtype="bfloat16", batch=1, seq_q=4096, seq_kv=4096, num_q_heads=8,
         num_kv_heads=2, head_dim=128, causal=True),
    Case(dtype="bfloat16", batch=1, seq_q=6000, seq_kv=6000, num_q_heads=4,
         num_kv_heads=2, head_dim=64, causal=True),
    Case(dtype="float16", batch=2, seq_q=5000, seq_kv=5000, num_q_heads=4,
         num_kv_heads=4, head_dim=128, causal=True, segments="packed"),
    Case(dtype="float16", batch=1, seq_q=8192, seq_kv=8192, num_q_heads=4,
         num_kv_heads=4, head_dim=64),
    # non-causal d 128, 426 query tiles: Stream-K cuts 30 of the last rounds'
    Case(dtype="bfloat16", batch=1, seq_q=9000, seq_kv=9000, num_q_heads=6,
         num_kv_heads=2, head_dim=128, segments="padded"),
    Case(dtype="bfloat16", batch=1, seq_q=16384, seq_kv=16384, num_q_heads=2,
         num_kv_heads=1, head_dim=128, causal=True, segments="packed"),
    # d 64 causal from 16k keys: the fused backward with dQ's columns split
    Case(dtype="bfloat16", batch=1, seq_q=16384, seq_kv=16384, num_q_heads=2,
         num_kv_heads=1, head_dim=64, causal=True),
    # causal 4k at d 64 (Stream-K on the paired grid from 4k keys, v28):
    # 144 mirrored pairs over 132 CTAs
    Case(dtype="float16", batch=1, seq_q=4096, seq_kv=4096, num_q_heads=9,
         num_kv_heads=3, head_dim=64, causal=True),
    # causal 8k: 288 mirrored pairs of query tiles, Stream-K splits 156
    Case(dtype="bfloat16", batch=1, seq_q=8192, seq_kv=8192, num_q_heads=9,
         num_kv_heads=3, head_dim=64, causal=True),
    # causal d 64 beyond 16k keys, one head (the f32 reference's N x N
    # arrays), the last query and key tiles partial: 24000 on the paired grid
    # with Stream-K (188 query tiles, v29), 20000 one tile a CTA (157)
    Case(dtype="bfloat16", batch=1, seq_q=24000, seq_kv=24000, num_q_heads=1,
         num_kv_heads=1, head_dim=64, causal=True),
    Case(dtype="float16", batch=1, seq_q=20000, seq_kv=20000, num_q_heads=1,
         num_kv_heads=1, head_dim=64, causal=True),
    Case(dtype="float32", batch=1, seq_q=4099, seq_kv=4099, num_q_heads=2,
         num_kv_heads=2, head_dim=64, window=(512, 0)),
    Case(dtype="float16", batch=1, seq_q=12000, seq_kv=12000, num_q_heads=2,
         num_kv_heads=2, head_dim=128, causal=True, softcap=30.0),
], ids=lambda c: c.id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequences(case, backend):
  check_backend(case, backend)


def test_long_causal_fp8_forward():
  """The Hopper FP8 forward, causal at 5000 keys: query tiles in mirrored
  pairs on the persistent grid (the default up to 12k keys), per-head
  scales, GQA."""
  check_fp8_forward("float8_e4m3fn", True, (1, 5000, 5000, 4, 2, 128), True,
                    "mosaic")
