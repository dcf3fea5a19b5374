"""Bad input raises ValueError/TypeError at trace time, naming what was wrong."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import flashjax
from flashjax import Blocks


def _qkv(b=2, sq=16, skv=16, hq=4, hk=2, d=32, dtype=jnp.float32):
  return (jax.ShapeDtypeStruct((b, sq, hq, d), dtype),
          jax.ShapeDtypeStruct((b, skv, hk, d), dtype),
          jax.ShapeDtypeStruct((b, skv, hk, d), dtype))


def _ids(*shape, dtype=jnp.int32):
  return jax.ShapeDtypeStruct(shape, dtype)


q, k, v = _qkv()
BAD = [
    # (q, k, v, kwargs, exception, message fragment)
    ((jax.ShapeDtypeStruct((16, 4, 32), jnp.float32), k, v), {}, ValueError,
     r"q must have rank 4 \[batch, seq_q, num_q_heads, head_dim\], got shape \(16, 4, 32\)"),
    ((q, jax.ShapeDtypeStruct((2, 16, 2, 32, 1), jnp.float32), v), {},
     ValueError, "k must have rank 4"),
    ((q, k, jax.ShapeDtypeStruct((2, 17, 2, 32), jnp.float32)), {}, ValueError,
     r"k and v must have the same shape .* k \(2, 16, 2, 32\) and v \(2, 17, 2, 32\)"),
    (_qkv(hq=4, hk=3), {}, ValueError,
     r"num_q_heads \(4, .*\) must be a multiple of num_kv_heads \(3"),
    ((jax.ShapeDtypeStruct((3, 16, 4, 32), jnp.float32), k, v), {}, ValueError,
     "same batch size"),
    ((q, *_qkv(d=64)[1:]), {}, ValueError, "same head_dim"),
    (_qkv(d=36), {}, ValueError, "head_dim must be a multiple of 8 and at most 256, got 36"),
    (_qkv(d=512), {}, ValueError, "at most 256, got 512"),
    ((q, *_qkv(dtype=jnp.bfloat16)[1:]), {}, TypeError,
     "q, k and v must have the same dtype, got q float32, k bfloat16, v bfloat16"),
    (_qkv(dtype=jnp.int32), {}, TypeError, r"dtype must be one of .*got int32"),
    (_qkv(dtype=jnp.float8_e4m3fn), {}, ValueError,
     "q_descale is required with FP8 inputs"),
    ((q, k, v), {"q_segment_ids": _ids(2, 15)}, ValueError,
     r"q_segment_ids must have shape \[batch, seq\] = \(2, 16\), got \(2, 15\)"),
    ((q, k, v), {"q_segment_ids": _ids(2, 16, dtype=jnp.float32)}, TypeError,
     "q_segment_ids must have an integer dtype, got float32"),
    ((q, k, v), {"kv_segment_ids": _ids(2, 16)}, ValueError,
     "kv_segment_ids was given without q_segment_ids"),
    (_qkv(sq=8), {"q_segment_ids": _ids(2, 8)}, ValueError,
     r"kv_segment_ids is required when seq_q \(8\) != seq_kv \(16\)"),
    (_qkv(sq=8), {"q_segment_ids": _ids(2, 8), "kv_segment_ids": _ids(2, 8)},
     ValueError, r"kv_segment_ids must have shape \[batch, seq\] = \(2, 16\)"),
    ((q, k, v), {"segment_ids": _ids(2, 15)}, ValueError,
     r"segment_ids must have shape \[batch, seq\] = \(2, 16\), got \(2, 15\)"),
    ((q, k, v), {"segment_ids": _ids(2, 16, dtype=jnp.float32)}, TypeError,
     "segment_ids must have an integer dtype, got float32"),
    ((q, k, v), {"segment_ids": _ids(2, 16), "q_segment_ids": _ids(2, 16)},
     ValueError, "pass it alone, or q_segment_ids"),
    (_qkv(sq=8), {"segment_ids": _ids(2, 8)}, ValueError,
     r"segment_ids needs seq_q == seq_kv .*got q \(2, 8, 4, 32\) and k "
     r"\(2, 16, 2, 32\)"),
    ((q, k, v), {"window": (-1, 0)}, ValueError,
     r"window left must be an int >= 0 or None .*got -1"),
    ((q, k, v), {"window": 5}, ValueError, r"window must be a \(left, right\) pair"),
    ((q, k, v), {"softcap": -1.0}, ValueError, "softcap must be a positive"),
    ((q, k, v), {"scale": float("nan")}, ValueError, "scale must be a finite"),
    ((q, k, v), {"backend": "cuda"}, ValueError, "backend must be one of"),
    ((q, k, v), {"config": {"block_q": 64}}, TypeError,
     "config must be a flashjax.Config"),
    ((q, k, v), {"deterministic": 1}, TypeError,
     "deterministic must be True or False, got 1"),
    (_qkv(d=128, dtype=jnp.bfloat16),
     {"deterministic": True, "backend": "mosaic",
      "config": flashjax.default_config(128)}, ValueError,
     r"deterministic=True needs the two-kernel Hopper backward, got a config "
     r"with mosaic_bwd.fused_dq=True"),
]


@pytest.mark.parametrize("args,kwargs,exc,match", BAD,
                         ids=[m[:40] for *_, m in BAD])
def test_bad_input_raises_at_trace_time(args, kwargs, exc, match):
  with pytest.raises(exc, match=match):
    # eval_shape traces without running anything: the error is a trace-time one.
    jax.eval_shape(lambda *a: flashjax.attention(*a, **kwargs), *args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_q=48, block_kv=64), "block_q must be a power of 2 >= 16"),
    (dict(block_q=64, block_kv=8), "block_kv must be a power of 2 >= 16"),
    (dict(block_q=64, block_kv=64, num_warps=3), "num_warps"),
    (dict(block_q=64, block_kv=64, num_stages=0), "num_stages"),
])
def test_bad_blocks(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Blocks(**kwargs)


def test_non_array_named():
  with pytest.raises(TypeError, match="q must be an array, got str"):
    flashjax.attention("not an array", jnp.ones((1, 8, 1, 8)),
                       jnp.ones((1, 8, 1, 8)))


def test_forward_mode_is_refused():
  q = jnp.ones((1, 8, 1, 8))
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jvp(flashjax.attention, (q, q, q), (q, q, q))


def test_config_that_overflows_shared_memory_is_refused():
  big = flashjax.Config(fwd=Blocks(128, 128, num_warps=8, num_stages=3),
                        bwd=Blocks(64, 64))
  q = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.float32)
  with pytest.raises(ValueError, match=r"config.fwd = .* needs about 384 KiB "
                     r"of shared memory for head_dim 128 .* float32"):
    jax.eval_shape(lambda q: flashjax.attention(q, q, q, config=big), q)


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("itemsize", [2, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_default_configs_fit_shared_memory(head_dim, itemsize, causal):
  config = flashjax.default_config(head_dim, itemsize, causal=causal)
  needs = [config.fwd.smem_bytes(head_dim, itemsize),
           config.bwd.smem_bytes(head_dim, itemsize)]
  if itemsize == 2 and head_dim in flashjax.config.MOSAIC_HEAD_DIMS:
    # the shapes backend="mosaic" takes, 16-bit and FP8 (its backward: d 64
    # and 128)
    fp8 = flashjax.default_config(head_dim, causal=causal, fp8=True)
    needs += [config.mosaic.smem_bytes(head_dim, 2),
              fp8.mosaic.smem_bytes(head_dim, 2, fp8=True)]
    if head_dim in flashjax.config.MOSAIC_BWD_HEAD_DIMS:
      needs.append(config.mosaic_bwd.smem_bytes(head_dim, 2, backward=True))
  for need in needs:
    assert need <= flashjax.config.SMEM_BYTES


@pytest.mark.parametrize("head_dim,fold", [(64, False), (128, True)])
@pytest.mark.parametrize("causal", [False, True])
def test_backward_folds_stats_at_d128(head_dim, fold, causal):
  """The Hopper backward's S and dP accumulators start at -L2/u and -D at
  d 128, where it took the spills from 92 to 16 bytes and forward+backward
  from 14.70 to 13.69 ms at 16k; at d 64 it lost 2-3%
  (benchmarks/results/raw/opts-fold-h200.md)."""
  config = flashjax.default_config(head_dim, causal=causal)
  assert config.mosaic_bwd.fold_stats is fold


@pytest.mark.parametrize("causal,window,seq_kv,persistent", [
    (False, None, 300, True), (False, (None, None), 300, True),
    (True, None, 300, True), (True, None, 4096, True),
    (True, None, 8192, True), (True, None, 12288, True),
    (True, None, 20000, False),
    (True, None, 16384, False), (True, None, 32768, False),
    (False, (None, 3), 300, False), (False, (128, 0), 300, False),
    (False, (64, None), 300, False)])
def test_persistent_forwards_by_default(causal, window, seq_kv, persistent):
  """The default Hopper forward walks its tiles on a persistent grid without
  a band and, causal, in mirrored pairs of query tiles up to 12k keys (FP8
  up to 16k); above that causal, and with a window, one tile per CTA, but
  16-bit d 64 self-attention stays paired where Stream-K splits the pairs
  (an even number of 128-row query tiles; v29). Q is prefetched in all
  (benchmarks/results/raw/opts-prefetch-causal-h200.md,
  causal-long-session17-h200.md, causal-8k-h200.md, causal-12k-h200.md,
  confirm-d64-causal-long-fwd-session46-h100.md). Here Q has 150 rows, so
  the long cases are not self-attention."""
  from flashjax.checks import make_plan
  q = jnp.zeros((2, 150, 4, 64), jnp.bfloat16)
  k = jnp.zeros((2, seq_kv, 4, 64), jnp.bfloat16)
  plan, _, _ = make_plan(q, k, k, causal=causal, window=window,
                         backend="mosaic")
  assert plan.config.mosaic.persistent is persistent
  assert plan.config.mosaic.prefetch_q
  # causal takes 128-row tiles below 4k
  # (benchmarks/results/raw/tune-short-h200.json)
  assert plan.config.mosaic.block_kv == (128 if causal and seq_kv < 4096
                                         else 256)
  # d 128, causal: mirrored pairs up to 12k keys; the FP8 forward up to 16k
  # (benchmarks/results/raw/confirm-fp8-causal-256-16k-session31-h200.md)
  if causal:
    d128 = flashjax.default_config(128, causal=True, seq_kv=seq_kv)
    assert d128.mosaic.persistent is (seq_kv <= 12288)
    # 16-bit d 64 self-attention: paired beyond 12k keys where the query
    # tiles pair up evenly (16384 and 32768: 128 and 256 tiles; 20000: 157)
    d64 = flashjax.default_config(64, causal=True, seq_kv=seq_kv,
                                  seq_q=seq_kv)
    assert d64.mosaic.persistent is (seq_kv <= 12288 or seq_kv != 20000)
    fp8 = flashjax.default_config(64, causal=True, fp8=True, seq_kv=seq_kv)
    assert fp8.mosaic.persistent is (seq_kv <= 16384)
