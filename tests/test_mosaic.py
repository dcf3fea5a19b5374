"""backend="mosaic": the Hopper kernels (Pallas Mosaic GPU), forward and backward.

On the CPU the kernel runs in Mosaic GPU's interpreter (TMA, barriers,
warpgroups; race detector on) and is lowered for CUDA against an abstract H100.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

import flashjax
from benchmarks import kernel_digest
from flashjax.config import MOSAIC_COMPUTE_WGS
from harness import FLOOR, Case, check_attention, max_err
from test_lowering import lower_for_h100

# test_attention.py runs the whole parity grid on backend="mosaic" too; these
# add the race detector's verdict on cases that reuse pipeline slots (more
# streamed tiles than pipeline stages) in every kernel. One batch element:
# a second adds CTAs like the first (the interpreter's time), no new
# interleaving within a CTA.
CASES = [
    Case(dtype="bfloat16", batch=1, seq_q=200, seq_kv=300, num_q_heads=4,
         num_kv_heads=2, head_dim=128, causal=True, window=(50, None)),
    # MQA; causal with seq_q > seq_kv leaves leading rows fully masked.
    Case(dtype="float16", batch=1, seq_q=390, seq_kv=140, num_q_heads=4,
         num_kv_heads=1, head_dim=64, causal=True),
    # packed segment ids, GQA, causal and a window: the case that hung the
    # interpreter on a 2-core host (tests/conftest.py).
    Case(dtype="bfloat16", batch=1, seq_q=333, seq_kv=333, num_q_heads=4,
         num_kv_heads=2, head_dim=128, causal=True, window=(40, 0),
         segments="packed"),
]


def skip_in_interpreter(why: str):
  """CI time (Mosaic GPU's interpreter takes 30-60 s a case on two cores):
  a case that adds little there is run compiled on a GPU only."""
  if jax.default_backend() != "gpu":
    pytest.skip(f"CI time: {why}; run compiled on a GPU")


# masked steps of every kind in few tiles (d 64, fast in the interpreter): a
# causal window with packed segments and GQA, odd lengths, fully masked rows
BANDED_PACKED = Case(dtype="float16", batch=1, seq_q=190, seq_kv=150,
                     num_q_heads=4, num_kv_heads=2, causal=True,
                     window=(60, 0), segments="packed")


def check_without_races(case, config, seed=0):
  """check_attention on backend="mosaic" with ``config`` (inputs from
  ``seed``); on the CPU also the interpreter's race detector's verdict."""
  if jax.default_backend() != "gpu":
    interpret_pallas_call.reset_gpu_interpret_mode_state()
  check_attention(case, backend="mosaic", config=config, seed=seed)
  if jax.default_backend() != "gpu":
    assert not interpret_pallas_call.get_races().races_found


def lowered_grad(config, head_dim, dtype, causal, seq=1000, batch=2,
                 heads=4):
  """The gradient of self-attention ``[batch, seq, heads, head_dim]`` under
  ``config`` on the Hopper kernels, lowered for CUDA against an abstract
  H100."""
  def loss(q):
    return jnp.sum(flashjax.attention(
        q, q, q, causal=causal, backend="mosaic", config=config,
        interpret=False).astype(jnp.float32))
  q = jax.ShapeDtypeStruct((batch, seq, heads, head_dim), jnp.dtype(dtype))
  return lower_for_h100(jax.grad(loss), q)


@contextlib.contextmanager
def merge_cuts(module, cluster=1):
  """The tiles Stream-K cut in each call of ``module.merge`` (the forward's
  or the backward's) while the block runs, as a list it yields; each call's
  schedule must have ``cluster`` CTAs a cluster."""
  cuts, merge = [], module.merge

  def counted(sk, *args, **kw):
    assert sk.cluster == cluster
    cuts.append(len(sk.cut()))
    return merge(sk, *args, **kw)
  module.merge = counted
  try:
    yield cuts
  finally:
    module.merge = merge


def grad_kernels(config, head_dim, dtype, causal, seq=1000):
  """Mosaic GPU kernels in :func:`lowered_grad` (the forward's and the
  backward's: 2 fused, 3 otherwise)."""
  return lowered_grad(config, head_dim, dtype, causal, seq).as_text().count(
      "custom_call @mosaic_gpu")


@pytest.mark.skipif(jax.default_backend() == "gpu",
                    reason="the race detector is part of the CPU interpreter")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_no_races_in_the_interpreter(case):
  check_without_races(case, config=None)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                    reason="counts the host threads through Linux's /proc")
def test_interpreter_has_a_host_thread_per_warpgroup():
  """tests/conftest.py sized XLA's CPU thread pool before JAX created it:
  a thread for each warpgroup of a cluster of two CTAs, and one more."""
  from conftest import INTERPRETER_THREADS
  jax.block_until_ready(jnp.ones(2) + 1)
  pool = [t for t in glob.glob("/proc/self/task/*/comm")
          if open(t).read().startswith("tf_XLAEigen")]
  assert INTERPRETER_THREADS == 2 * (MOSAIC_COMPUTE_WGS + 1) + 1
  assert len(pool) >= INTERPRETER_THREADS


@pytest.mark.parametrize("blocks,window", [
    (flashjax.MosaicBlocks(block_kv=64, stages=3), None),
    (flashjax.MosaicBlocks(block_kv=128, stages=2, block_q_dkv=128), (70, 0)),
    (flashjax.MosaicBlocks(block_kv=128, stages=2, block_q_dkv=128,
                           fused_dq=True), None),
], ids=["3-stages-64", "dkdv-128", "fused-dkdv-128"])
def test_other_tilings(blocks, window):
  """Non-default tilings at d 64: 3 pipeline stages with 64-row K/V tiles;
  128-row query tiles in dK/dV (GQA, with a window); and those fused with dQ
  (FlashAttention 3's d 64 backward tiling, timed by gpu_session.sh
  opts-bwd-d64). CI time: the first two compiled on a GPU only (3 stages
  run in the interpreter in the fused backward's cases; 128-row dK/dV tiles
  did not finish compiled in one window case in the eighth session and did
  in the fifteenth, results/debug-hang-h200.md), the fused one in the
  interpreter too, with its race detector."""
  if not blocks.fused_dq:
    skip_in_interpreter("non-default tilings")
  config = flashjax.default_config(64)
  config = flashjax.Config(fwd=config.fwd, bwd=config.bwd, mosaic=blocks,
                           mosaic_bwd=blocks)
  check_without_races(Case(dtype="float16", seq_q=250, seq_kv=330,
                           num_q_heads=4, num_kv_heads=2, causal=True,
                           window=window), config)


def test_causal_d64_tiles_by_length():
  """The causal d 64 forward takes 256-row K/V tiles from 4k keys and 128
  below (flashjax.default_config); the 4k tiling at a short causal shape
  (GQA, odd lengths), forward and gradients."""
  long, short = (flashjax.default_config(64, causal=True, seq_kv=n)
                 for n in (4096, 1024))
  assert (long.mosaic.block_kv, short.mosaic.block_kv) == (256, 128)
  check_attention(Case(dtype="bfloat16", batch=1, seq_q=200, seq_kv=333,
                       num_q_heads=4, num_kv_heads=2, causal=True),
                  backend="mosaic", config=long)


def test_d64_backward_by_length():
  """d 64's backward (flashjax.default_config by ``seq_kv``): two kernels
  below 4k keys (causal: below 16k, and without a length), then one fused
  kernel with dQ's columns split between the warpgroups, 5 stages
  non-causal (its owned K and V tiles as register operands, v27, and
  one barrier for a step's streamed tiles, v30), 2 causal. The non-causal form lowers for CUDA here (test_split_dq lowers
  the causal one and runs split_dq in the interpreter, which runs the
  owned tiles' shared-memory form); on a GPU both run against the
  reference (GQA, odd lengths); flashjax.explain names the kernels."""
  def bwd(causal, seq_kv):
    blocks = flashjax.default_config(64, causal=causal,
                                     seq_kv=seq_kv).mosaic_bwd
    return (blocks.fused_dq, blocks.split_dq, blocks.stages,
            blocks.owned_registers, blocks.shared_full)
  assert [bwd(False, 2048), bwd(False, 4096), bwd(True, 8192),
          bwd(True, 16384), bwd(True, None)] == [
              (False, False, 2, False, False), (True, True, 5, True, True),
              (False, False, 2, False, False), (True, True, 2, False, False),
              (False, False, 2, False, False)]
  # flashjax.explain names the kernels that run (as profilers show them)
  q = jax.ShapeDtypeStruct((1, 4096, 2, 64), jnp.bfloat16)
  explained = flashjax.explain(q, q, q, backend="mosaic")
  assert "backward flashjax_dkdv_dq (block_kv=128 stages=5 " in explained
  assert ("split_dq, index_vectors, lse_log2, owned_registers, shared_full)"
          in explained)
  assert "backward flashjax_dkdv + flashjax_dq (" in (
      flashjax.explain(q, q, q, backend="mosaic", causal=True))
  for causal in (False, True):
    config = flashjax.default_config(64, causal=causal, seq_kv=16384)
    if not causal:
      assert grad_kernels(config, 64, "bfloat16", causal=False) == 2
    if jax.default_backend() == "gpu":
      check_attention(Case(dtype="bfloat16", batch=1, seq_q=200, seq_kv=333,
                           num_q_heads=4, num_kv_heads=2, causal=causal),
                      backend="mosaic", config=config)


def test_d128_backward_by_length():
  """d 128's backward (flashjax.default_config by ``seq_kv``): one fused
  kernel non-causal (3 stages); causal two kernels below 8k keys (and
  without a length), then fused with 240 registers a compute thread, in 3
  stages as non-causal; the fused kernel's step computes its owned tiles'
  descriptors (``step_descriptors``) and awaits a step's streamed tiles
  on one barrier (``shared_full``, v31). The long causal form lowers for CUDA
  here and on a GPU runs against the reference at a short shape (GQA, odd
  lengths; the 12k and 16k cases of tests/test_large.py run it at
  length)."""
  def bwd(causal, seq_kv):
    blocks = flashjax.default_config(128, causal=causal,
                                     seq_kv=seq_kv).mosaic_bwd
    return (blocks.fused_dq, blocks.split_dq, blocks.stages,
            blocks.compute_registers, blocks.step_descriptors,
            blocks.shared_full)
  assert [bwd(False, 4096), bwd(True, 4096), bwd(True, 8192),
          bwd(True, None)] == [
              (True, False, 3, 232, True, True),
              (False, False, 2, 232, False, False),
              (True, False, 3, 240, True, True),
              (False, False, 2, 232, False, False)]
  config = flashjax.default_config(128, causal=True, seq_kv=8192)
  assert grad_kernels(config, 128, "bfloat16", causal=True) == 2
  if jax.default_backend() == "gpu":
    check_attention(Case(dtype="bfloat16", batch=1, seq_q=200, seq_kv=333,
                         num_q_heads=4, num_kv_heads=2, head_dim=128,
                         causal=True), backend="mosaic", config=config)


@pytest.mark.parametrize("field,blocks,kib", [
    ("mosaic", flashjax.MosaicBlocks(block_kv=256, stages=3), 416),
    # 3 stages of 128-row K/V tiles fit the forward (224 KiB), not dQ
    ("mosaic_bwd", flashjax.MosaicBlocks(block_kv=128, stages=3), 256),
    # ... nor the forward once O has its own tile (the prefetch)
    ("mosaic", flashjax.MosaicBlocks(block_kv=128, stages=3, prefetch_q=True),
     256),
])
def test_tiling_over_shared_memory_is_refused(field, blocks, kib):
  config = dataclasses.replace(flashjax.default_config(128), **{field: blocks})
  q = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16)
  with pytest.raises(ValueError,
                     match=rf"config.{field} = .* needs about {kib} KiB"):
    jax.eval_shape(lambda q: flashjax.attention(
        q, q, q, backend="mosaic", config=config), q)


def test_forward_takes_three_stages_of_128_rows_at_d128():
  """Lowered for CUDA on any host; run compiled on a GPU (CI time: the
  interpreter runs 3 stages in the fused backward's cases)."""
  config = dataclasses.replace(
      flashjax.default_config(128),
      mosaic=flashjax.MosaicBlocks(block_kv=128, stages=3))
  if jax.default_backend() == "gpu":
    check_attention(Case(dtype="bfloat16", seq_q=300, seq_kv=520,
                         num_q_heads=2, num_kv_heads=1, head_dim=128,
                         causal=True), backend="mosaic", config=config)
  # compiled form: its shared memory (224 KiB of 227) passes Mosaic GPU's check
  q = jax.ShapeDtypeStruct((1, 1024, 2, 128), jnp.bfloat16)
  text = lower_for_h100(lambda q: flashjax.attention(
      q, q, q, causal=True, backend="mosaic", config=config,
      interpret=False), q).as_text()
  assert text.count("custom_call @mosaic_gpu") == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_kv=96), "block_kv must be 64, 128 or 256"),
    (dict(stages=1), "stages must be >= 2"),
    (dict(block_q_dkv=256), "block_q_dkv must be 64 or 128"),
    (dict(compute_registers=248), "multiple of 8 from 168 to 240, got 248"),
    (dict(compute_registers=236), "compute_registers must be a multiple of 8"),
])
def test_bad_mosaic_blocks(kwargs, match):
  with pytest.raises(ValueError, match=match):
    flashjax.MosaicBlocks(**kwargs)


@pytest.mark.parametrize("dtype,head_dim,match", [
    ("float32", 64, "takes bfloat16 or float16, got float32"),
    ("bfloat16", 32, r"head_dim padded to \(64, 128, 256\), got head_dim 32"),
    ("float16", 16, "got head_dim 16"),
])
def test_unsupported_raises(dtype, head_dim, match):
  q = jax.ShapeDtypeStruct((1, 128, 2, head_dim), jnp.dtype(dtype))
  with pytest.raises(NotImplementedError, match=match):
    jax.eval_shape(lambda q: flashjax.attention(q, q, q, backend="mosaic"), q)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("masking", ["none", "causal", "causal+segments"])
def test_fwd_and_bwd_lower_for_cuda(head_dim, dtype, masking):
  q = jax.ShapeDtypeStruct((2, 1000, 4, head_dim), jnp.dtype(dtype))
  kv = jax.ShapeDtypeStruct((2, 1000, 2, head_dim), jnp.dtype(dtype))
  ids = (jax.ShapeDtypeStruct((2, 1000), jnp.int32)
         if "segments" in masking else None)

  def loss(q, k, v, ids):
    o = flashjax.attention(q, k, v, causal="causal" in masking,
                           q_segment_ids=ids, backend="mosaic",
                           interpret=False)
    return jnp.sum(o.astype(jnp.float32))

  text = lower_for_h100(jax.grad(loss, argnums=(0, 1, 2)), q, kv, kv,
                        ids).as_text()
  # forward, dQ and dK/dV: three Mosaic GPU kernels, no Triton one; two where
  # the default backward computes dQ in the dK/dV kernel (fused_dq).
  config = flashjax.default_config(head_dim, causal="causal" in masking)
  kernels = 2 if config.mosaic_bwd.fused_dq else 3
  assert text.count("custom_call @mosaic_gpu") == kernels
  assert "triton" not in text


def test_long_causal_d64_forward_lowers_for_cuda():
  """16-bit d 64 causal self-attention stays on the paired grid beyond 12k
  keys where Stream-K splits its pairs (v29): at 39900 keys (312 query
  tiles of 128 rows, the last partial; 156 K/V tiles of 256, the last
  partial) every pair has the same steps, so the schedule is built, and the
  gradient lowers for CUDA with Stream-K's merge (a Triton-lowered kernel);
  test_large runs 16k and 24000 compiled."""
  from flashjax.checks import make_plan
  q = jax.ShapeDtypeStruct((1, 39900, 4, 64), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 39900, 2, 64), jnp.bfloat16)
  plan, _, _ = make_plan(q, kv, kv, causal=True, backend="mosaic",
                         interpret=False)
  assert plan.config.mosaic.persistent and plan.config.mosaic.stream_k

  def loss(q, k, v):
    o = flashjax.attention(q, k, v, causal=True, backend="mosaic",
                           interpret=False)
    return jnp.sum(o.astype(jnp.float32))

  text = lower_for_h100(jax.grad(loss, argnums=(0, 1, 2)), q, kv, kv).as_text()
  # the forward and the fused backward, and the merge of the cut tiles
  assert text.count("custom_call @mosaic_gpu") == 2
  assert "triton" in text


@pytest.mark.parametrize("seq", [12289, 16000, 16384, 20000, 24000, 30000,
                                 32768, 39900, 40000])
def test_long_d64_pairs_only_where_stream_k_splits_them(seq):
  """Beyond 12k keys the default pairs 16-bit d 64's causal query tiles
  exactly where the forward's Stream-K schedule exists (every pair the same
  steps, :func:`fwd.stream_k`): the config's rule (an even number of CTA
  tiles) agrees with the kernel's own test, so neither can drift."""
  from flashjax.checks import make_plan
  from pallas_kernels.mosaic import fwd, pipeline
  x = jax.ShapeDtypeStruct((1, seq, 4, 64), jnp.bfloat16)
  plan, _, _ = make_plan(x, x, x, causal=True, backend="mosaic",
                         interpret=False)
  rows, block_kv = fwd.COMPUTE_WGS * fwd.BLOCK_Q, plan.config.mosaic.block_kv
  # the paired grid over the padded query rows, as the forward builds it
  tiles = pipeline.Tiles.per_head(plan, 4, -(-seq // rows) * rows, 1, True)
  schedule = fwd.stream_k(plan, tiles, block_kv, -(-seq // block_kv))
  assert plan.config.mosaic.persistent is (schedule is not None)
  assert plan.config.mosaic.stream_k is (schedule is not None)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_persistent_grid(case):
  """One CTA per SM walking the output tiles, forward, dQ and dK/dV: the
  interpreter runs 2 CTAs, so each walks several tiles and the pipeline's
  slots, barrier phases and the ping-pong carry over from one tile to the next
  (race detector on); banded (here causal) tiles go in mirrored pairs, an odd
  count leaving a middle tile run once (the cases have 2, 4 and 3 query
  tiles; the interpreter runs the 3). The compiled form lowers for
  CUDA with an even and an odd number of tiles."""
  if case is not CASES[2]:
    skip_in_interpreter("the interpreter runs the packed case (3 tiles: a "
                        "pair and a middle one); test_intra_wg_overlap walks "
                        "the MQA case's empty tiles on a persistent grid")
  config = flashjax.default_config(case.head_dim, causal=case.causal)
  config = dataclasses.replace(
      config,
      mosaic=dataclasses.replace(config.mosaic, block_kv=64, persistent=True),
      mosaic_bwd=dataclasses.replace(config.mosaic_bwd, block_kv=64,
                                     persistent=True))
  check_without_races(case, config)

  for seq in (1000, 1100):          # 8 and 9 tiles of 128 rows
    assert grad_kernels(config, case.head_dim, case.dtype, case.causal,
                        seq) == 3


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_intra_wg_overlap(case):
  """``MosaicBlocks(intra_wg_overlap=True)`` in the forward and the dQ
  kernel: step j issues S_j (and dP_j) with the previous step's P V (dS K),
  V (K) released a step late, by the next step or the tile's drain; the
  forward's ping-pong hands over after each pair. On a persistent grid (the
  interpreter's 2 CTAs walk several tiles, empty ones included in the MQA
  case) with the race detector; the compiled form (P and dS register
  operands, the products in flight) lowers for CUDA, one tile per CTA and
  persistent. On a GPU the compiled form also runs with 128-row K/V tiles
  (and the other two cases, which the interpreter leaves out). The
  defaults take it in the 16-bit d 128 causal forward on one tile a CTA
  (above 12k keys, or without a length) only."""
  overlap = lambda d=128, **kw: flashjax.default_config(
      d, **kw).mosaic.intra_wg_overlap
  assert overlap(causal=True, seq_kv=16384) and overlap(causal=True)
  assert not overlap(causal=True, seq_kv=12288)       # persistent (paired)
  assert not overlap(causal=False, seq_kv=16384)
  assert not overlap(64, causal=True, seq_kv=16384)
  assert not overlap(causal=True, seq_kv=16384, fp8=True)
  assert not flashjax.default_config(128, causal=True).mosaic_bwd.intra_wg_overlap
  if case is not CASES[1]:
    skip_in_interpreter("the interpreter runs the MQA case (empty tiles)")
  config = flashjax.default_config(case.head_dim, causal=case.causal)
  for block_kv in (64, 128) if jax.default_backend() == "gpu" else (64,):
    config = dataclasses.replace(
        config,
        mosaic=dataclasses.replace(config.mosaic, block_kv=block_kv,
                                   persistent=True, intra_wg_overlap=True),
        mosaic_bwd=dataclasses.replace(config.mosaic_bwd, block_kv=block_kv,
                                       persistent=True, fused_dq=False,
                                       intra_wg_overlap=True))
    check_without_races(case, config)

  for persistent in (False, True):
    compiled = dataclasses.replace(
        config,
        mosaic=dataclasses.replace(config.mosaic, block_kv=128,
                                   persistent=persistent),
        mosaic_bwd=dataclasses.replace(config.mosaic_bwd, block_kv=128,
                                       persistent=persistent))
    assert grad_kernels(compiled, case.head_dim, case.dtype,
                        case.causal) == 3


def mqa_inputs(seed):
  """Q, K, V of the MQA case (CASES[1]: causal, seq_q > seq_kv, so some
  query tiles see no key), float16."""
  case = CASES[1]
  return tuple(
      jax.random.normal(key, shape, jnp.float16) for key, shape in zip(
          jax.random.split(jax.random.key(seed), 3),
          [(1, case.seq_q, case.num_q_heads, case.head_dim),
           *[(1, case.seq_kv, case.num_kv_heads, case.head_dim)] * 2]))


def forward_bits(config, *args, **kwargs):
  """O (as float32) and L of the Hopper forward under ``config``; on the CPU
  with the interpreter's race detector's verdict."""
  if jax.default_backend() != "gpu":
    interpret_pallas_call.reset_gpu_interpret_mode_state()
  o, lse = jax.jit(lambda *a: flashjax.attention(
      *a, backend="mosaic", config=config, return_lse=True, **kwargs))(*args)
  if jax.default_backend() != "gpu":
    assert not interpret_pallas_call.get_races().races_found
  return np.asarray(o, np.float32), np.asarray(lse)


def assert_same_bits(want, got):
  for w, g in zip(want, got):
    np.testing.assert_array_equal(g, w)


def assert_forward_lowers(base, **blocks):
  """The forward under ``base`` with ``blocks`` (128-row K/V tiles) lowers for
  CUDA, one tile a CTA (causal) and persistent (non-causal)."""
  for persistent in (False, True):
    compiled = dataclasses.replace(base, mosaic=dataclasses.replace(
        base.mosaic, block_kv=128, persistent=persistent, **blocks))
    q = jax.ShapeDtypeStruct((2, 1000, 4, 128), jnp.bfloat16)
    text = lower_for_h100(lambda q: flashjax.attention(
        q, q, q, causal=not persistent, backend="mosaic", config=compiled,
        interpret=False), q).as_text()
    assert text.count("custom_call @mosaic_gpu") == 1


@pytest.mark.parametrize("overlap", [False, True])
def test_prefetch_q(overlap):
  """``MosaicBlocks(prefetch_q=True)`` (the default forward's): the producer
  loads each tile's Q (the next one's once both warpgroups issued their last
  Q Kᵀ; none for a tile with no visible key), O goes out through its own
  tile, its store left in flight. Only the order of loads and stores
  changes, so O and L equal those of ``prefetch_q=False`` to the bit (which
  the parity suite checked against the reference before the prefetch). In
  the interpreter (race detector on) the MQA case's tiles, empty ones
  included, on a persistent grid (2 CTAs walk several tiles) and one tile a
  CTA, with and without the intra-warpgroup overlap; the FP8 forward
  likewise (packed segments, GQA); the compiled form lowers
  for CUDA, persistent or not."""
  q, k, v = mqa_inputs(3)
  base = flashjax.default_config(CASES[1].head_dim, causal=True)
  for persistent in (True, False):
    blocks = dataclasses.replace(base.mosaic, block_kv=64,
                                 persistent=persistent,
                                 intra_wg_overlap=overlap)
    config = lambda **kw: dataclasses.replace(
        base, mosaic=dataclasses.replace(blocks, **kw))
    assert_same_bits(forward_bits(config(prefetch_q=False), q, k, v,
                                  causal=True),
                     forward_bits(config(prefetch_q=True), q, k, v,
                                  causal=True))

  # FP8 (its O tile was its own already): GQA, causal, packed segments
  from flashjax import fp8
  q, k, v = (jax.random.normal(key, (1, 333, h, 128), jnp.bfloat16)
             for key, h in zip(jax.random.split(jax.random.key(4), 3),
                               (4, 2, 2)))
  (q8, qd), (k8, kd), (v8, vd) = (fp8.quantize(x) for x in (q, k, v))
  seg = jnp.repeat(jnp.arange(3, dtype=jnp.int32), 111)[None]
  fp8_base = flashjax.default_config(128, causal=True, fp8=True)
  fp8_config = lambda **kw: dataclasses.replace(fp8_base, mosaic=(
      dataclasses.replace(fp8_base.mosaic, block_kv=128, persistent=True,
                          intra_wg_overlap=overlap, **kw)))
  args = dict(q_descale=qd, k_descale=kd, v_descale=vd, causal=True,
              q_segment_ids=seg)
  assert_same_bits(forward_bits(fp8_config(prefetch_q=False), q8, k8, v8,
                                **args),
                   forward_bits(fp8_config(prefetch_q=True), q8, k8, v8,
                                **args))

  assert_forward_lowers(base, intra_wg_overlap=overlap, prefetch_q=True)


def test_early_handover():
  """``MosaicBlocks(early_handover=True)``: the forward's ping-pong hands
  over when a tile's last P V is issued, not after the next tile's first
  Q Kᵀ (each warpgroup's steps then hand over once more than they wait;
  warpgroup 0 ends with a wait, or with a signal when its CTA had no step).
  Only the order of the warpgroups' matmuls changes, so O and L equal those
  without it to the bit. In the interpreter (race and deadlock checks on
  the ping-pong's barriers) the MQA case's tiles, empty ones included, on a
  persistent grid (2 CTAs walk several tiles) and one tile a CTA; the
  compiled form lowers for CUDA, persistent or not. The defaults take it
  on one tile a CTA, 16-bit (windows; d 64 causal above 12k keys where its
  query tiles do not pair up evenly) only, and not where the
  intra-warpgroup overlap replaces it (d 128 causal above 12k keys)."""
  early = lambda d=128, **kw: flashjax.default_config(
      d, **kw).mosaic.early_handover
  assert not early(causal=True, seq_kv=16384)         # the overlap instead
  assert early(causal=False, banded=True, seq_kv=16384)   # a window
  assert early(64, causal=False, banded=True, seq_kv=16384)
  assert not early(64, causal=True, seq_kv=16384)     # persistent (paired)
  assert early(64, causal=True, seq_kv=20000)         # 157 query tiles
  assert not early(causal=True, seq_kv=4096)          # persistent (paired)
  assert not early(causal=False, seq_kv=16384)        # persistent
  assert not early(64, causal=True, seq_kv=16384, fp8=True)
  q, k, v = mqa_inputs(5)
  base = flashjax.default_config(CASES[1].head_dim, causal=True)
  for persistent in (True, False):
    config = lambda early: dataclasses.replace(base, mosaic=dataclasses.replace(
        base.mosaic, block_kv=64, persistent=persistent,
        early_handover=early))
    assert_same_bits(forward_bits(config(False), q, k, v, causal=True),
                     forward_bits(config(True), q, k, v, causal=True))

  assert_forward_lowers(base, early_handover=True)


STREAM_K_CASES = [
    # the interpreter's 2 CTAs: 3 query tiles (one a head) of 5 K/V steps,
    # the middle one cut between them; MQA, odd lengths, packed segments
    # (masked steps, and rows that see no key in one part or in both)
    Case(dtype="bfloat16", batch=1, seq_q=100, seq_kv=300, num_q_heads=3,
         num_kv_heads=1, head_dim=64, causal=False, segments="packed"),
    # causal: 3 pairs of query tiles (one a head), of 4 + 2 K/V steps (64-row
    # tiles), the middle pair's first tile cut; the diagonal's steps in
    # parts, rows that see no key of a part
    Case(dtype="bfloat16", batch=1, seq_q=250, seq_kv=250, num_q_heads=3,
         num_kv_heads=1, head_dim=64, causal=True, segments="packed"),
    # 132 SMs: 198 query tiles, 66 of them in the split rounds, each CTA
    # 1.5 tiles of 12 (d 128) or 5 (d 64, 256-row K/V tiles) steps; GQA
    Case(dtype="float16", batch=1, seq_q=4100, seq_kv=1500, num_q_heads=6,
         num_kv_heads=3, head_dim=128, causal=False, segments="packed"),
    Case(dtype="bfloat16", batch=1, seq_q=4100, seq_kv=1100, num_q_heads=6,
         num_kv_heads=2, head_dim=64, causal=False),
    # causal, 160 pairs of query tiles over 132 SMs, all split
    Case(dtype="bfloat16", batch=1, seq_q=4096, seq_kv=4096, num_q_heads=10,
         num_kv_heads=2, head_dim=128, causal=True),
    Case(dtype="float16", batch=2, seq_q=2048, seq_kv=2048, num_q_heads=10,
         num_kv_heads=5, head_dim=64, causal=True, segments="packed"),
]
STREAM_K_INTERPRETED = STREAM_K_CASES[:2]


def test_stream_k_schedule():
  """:class:`pipeline.StreamK`, of tiles and of causal pairs of tiles: every
  step of every tile runs once, every CTA runs as many steps as any other,
  give or take one, a cut tile's two parts are the last piece of one CTA
  and the first split piece of the next (:meth:`StreamK.cut`), and there
  is no schedule
  where whole units fill every round; the defaults take it without a band
  from 2k keys, causal on the paired grid from 8k (up to 12k; 16-bit d 64
  from 4k, and beyond 12k where the pairs split evenly)."""
  from pallas_kernels.mosaic import pipeline

  def check(sk, tile_steps):
    # CTA c (clustered: cluster c's CTA of rank r)
    runs, per_cta, last, first = collections.Counter(), {}, {}, {}
    with jax.ensure_compile_time_eval():
      for c in range(sk.ctas):
        for r in range(sk.cluster):
          count, piece = sk.pieces(c, r)
          per_cta[c, r] = 0
          for k in range(int(count)):
            index, part = piece(k)
            index = tuple(int(x) for x in index)
            lo, hi, slot = int(part.lo), int(part.hi), int(part.slot)
            assert 0 <= lo < hi <= tile_steps[index]
            assert int(part.cta) == c * sk.cluster + r
            runs.update((index, j) for j in range(lo, hi))
            per_cta[c, r] += hi - lo
            if slot == 1:
              assert k == count - 1 and hi < tile_steps[index]
              last[c, r] = index
            if slot == 0:
              assert k == sk.rounds * sk.halves and lo > 0  # the first split
              first[c, r] = index
    assert runs == {(i, j): 1 for i, n in tile_steps.items() for j in range(n)}
    assert max(per_cta.values()) - min(per_cta.values()) <= 1
    # a cluster's CTAs run the same steps
    assert all(per_cta[c, r] == per_cta[c, 0] for c, r in per_cta)
    assert sk.cut() == [(i, c) for (c, _), i in last.items()]
    assert all(first[c + 1, r] == i for (c, r), i in last.items())

  for tiles, ctas, steps in [(2048, 132, 128), (4096, 132, 8), (198, 132, 12),
                             (3, 2, 5), (5, 2, 3)]:
    check(pipeline.StreamK.of(tiles, ctas, steps),
          {(t,): steps for t in range(tiles)})
  # causal pairs (tile i, n - 1 - i) along axis 1 of (heads, tiles, batch),
  # tile t of t + 1 steps: each pair n + 1
  for heads, n, batch, ctas in [(5, 16, 7, 132), (3, 2, 1, 2), (1, 6, 1, 2),
                                (10, 32, 1, 132)]:
    sk = pipeline.StreamK.of(heads * n // 2 * batch, ctas, n + 1,
                             (heads, n // 2, batch), 1, lambda i: i + 1)
    check(sk, {(h, t, b): t + 1 for h in range(heads) for t in range(n)
               for b in range(batch)})
  # clusters of two tiles along axis 1 of (heads, tiles, batch): 66 clusters
  for heads, n, batch, ctas, steps in [(16, 128, 1, 66, 128),
                                       (3, 2, 1, 2, 5), (5, 4, 14, 66, 12)]:
    sk = pipeline.StreamK.of(heads * n // 2 * batch, ctas, steps,
                             (heads, n // 2, batch), cluster=2)
    check(sk, {(h, t, b): steps for h in range(heads) for t in range(n)
               for b in range(batch)})
  assert pipeline.StreamK.of(264, 132, 12) is None      # 2 whole rounds
  assert pipeline.StreamK.of(100, 132, 12) is None      # fewer tiles than SMs
  # the defaults: without a band, from 2k keys (or without a length)
  stream_k = lambda d=128, **kw: flashjax.default_config(
      d, **kw).mosaic.stream_k
  assert stream_k(seq_kv=2048) and stream_k(64, seq_kv=16384) and stream_k()
  assert stream_k(seq_kv=4096, fp8=True)
  assert not stream_k(seq_kv=1024) and not stream_k(seq_kv=2047)
  assert not stream_k(causal=False, banded=True, seq_kv=16384)   # a window
  # causal: the paired grid (up to 12k keys, FP8 16k, 16-bit d 64 beyond
  # where the pairs split evenly) from 8k keys, 16-bit d 64 from 4k
  assert stream_k(causal=True, seq_kv=8192) and stream_k(
      64, causal=True, seq_kv=12288, fp8=True)
  assert stream_k(causal=True, seq_kv=16384, fp8=True)
  assert not stream_k(causal=True, seq_kv=4096)
  assert stream_k(64, causal=True, seq_kv=4096) and stream_k(
      64, causal=True, seq_kv=6144)
  assert not stream_k(64, causal=True, seq_kv=2048)
  assert stream_k(64, causal=True, seq_kv=32768)         # paired (v29)
  assert not stream_k(64, causal=True, seq_kv=20000)     # 157 tiles: one a CTA
  assert not stream_k(64, causal=True)                   # length unknown
  assert not stream_k(64, causal=True, seq_kv=4096, fp8=True)
  assert not stream_k(causal=True, seq_kv=16384)          # one tile a CTA
  assert not stream_k(causal=True, seq_kv=16385, fp8=True)
  # the benchmark's causal shapes (batch 16384 // seq) have a paired
  # schedule below 8k keys, whether the default takes it (16-bit d 64) or
  # not (gpu_session.sh opts-stream-k-causal-4k, opts-fp8-causal): every
  # pair the same steps, and whole pairs leave the last round part idle
  from flashjax.checks import make_plan
  from pallas_kernels.mosaic import fwd
  for d, heads, seq, dtype, units in [
      (64, 32, 4096, jnp.bfloat16, 2048), (128, 16, 4096, jnp.bfloat16, 1024),
      (64, 32, 6144, jnp.bfloat16, 1536), (128, 16, 6144, jnp.bfloat16, 768),
      (128, 16, 4096, jnp.float8_e4m3fn, 1024)]:
    batch = max(1, 16384 // seq)
    x = jax.ShapeDtypeStruct((batch, seq, heads, d), dtype)
    plan, _, _ = make_plan(x, x, x, causal=True, backend="mosaic",
                           interpret=False)
    default = fwd.output_tiles(plan, heads, seq, batch, seq).stream_k
    assert (default is not None) == (d == 64 and dtype == jnp.bfloat16)
    sk = fwd.output_tiles(plan, heads, seq, batch, seq,
                          with_stream_k=True).stream_k
    assert sk is not None and (sk.units, sk.ctas) == (units, 132)


@pytest.mark.parametrize("case", STREAM_K_CASES, ids=lambda c: c.id)
def test_stream_k(case):
  """``MosaicBlocks(stream_k=True)`` (the forward's persistent grid,
  non-causal, and causal with its mirrored pairs of query tiles): the last
  rounds' units split by K/V steps, a cut tile's parts merged after the
  kernel (:func:`pallas_kernels.mosaic.fwd.merge`).
  Parity with the reference, gradients included (the backward reads the
  merged O and L); in the interpreter (2 CTAs) with the race detector, on a
  GPU (132 SMs) with its own cases. The FP8 forward too, against the float32
  reference as tests/test_fp8.py checks it. The compiled form lowers for
  CUDA."""
  from pallas_kernels.mosaic import fwd
  if jax.default_backend() == "gpu" and case in STREAM_K_INTERPRETED:
    pytest.skip("132 SMs take the 3 units in one round: nothing to split")
  if jax.default_backend() != "gpu" and case not in STREAM_K_INTERPRETED:
    pytest.skip("the interpreter's 2 CTAs split the first two cases; these "
                "are the GPU's")
  from test_fp8 import check_fp8_forward
  base = flashjax.default_config(case.head_dim)
  stream_k = lambda config, **kw: dataclasses.replace(
      config, mosaic=dataclasses.replace(config.mosaic, persistent=True,
                                         stream_k=True, **kw))
  interpreted = jax.default_backend() != "gpu"
  fp8_base = flashjax.default_config(128, fp8=True)
  with merge_cuts(fwd) as cuts:
    check_without_races(case, stream_k(
        base, **dict(block_kv=64) if interpreted else {}))
    check_fp8_forward("float8_e4m3fn", case.causal, (
        case.batch, case.seq_q, case.seq_kv, case.num_q_heads,
        case.num_kv_heads, 128), False, "mosaic", config=stream_k(
            fp8_base, **dict(block_kv=128) if interpreted else {}))
  assert len(cuts) == 2 and all(n > 0 for n in cuts)

  # 256 tiles, or 160 causal pairs, over 132 SMs: split
  q = jax.ShapeDtypeStruct((2, 4096, 5 if case.causal else 4, case.head_dim),
                           jnp.dtype(case.dtype))
  text = lower_for_h100(lambda q: flashjax.attention(
      q, q, q, causal=case.causal, backend="mosaic", config=stream_k(base),
      interpret=False), q).as_text()
  assert text.count("custom_call @mosaic_gpu") == 1
  assert "flashjax_fwd_merge" in text


# Clusters of two CTAs: GQA with a ragged K/V tail (4 query tiles a head, so
# the interpreter's 2 clusters each walk 2 pairs); packed segment ids at d
# 128 over 2 batch rows
MULTICAST_CASES = [
    Case(dtype="bfloat16", batch=1, seq_q=500, seq_kv=300, num_q_heads=2,
         num_kv_heads=1, head_dim=64),
    Case(dtype="float16", batch=2, seq_q=256, seq_kv=333, num_q_heads=2,
         num_kv_heads=2, head_dim=128, segments="packed"),
    # the GPU's: 256 pairs of query tiles over 66 clusters (132 SMs), GQA
    Case(dtype="bfloat16", batch=2, seq_q=4096, seq_kv=4000, num_q_heads=8,
         num_kv_heads=2, head_dim=128),
]


@pytest.mark.parametrize("case", MULTICAST_CASES, ids=lambda c: c.id)
def test_multicast(case):
  """``MosaicBlocks(multicast=True)`` (the forward's persistent grid without
  a band): clusters of two CTAs take neighbouring query tiles of one head
  and load each K/V tile once for both (TMA multicast, half by each CTA), a
  slot refilled only once both CTAs' compute warpgroups released it (a
  cluster barrier). Only the loads change, so O and L equal those of the
  unclustered persistent grid to the bit (both without Stream-K, whose
  cut tiles are merged: test_multicast_stream_k), with the
  intra-warpgroup overlap too (d 64); parity with the reference,
  gradients included; FP8 too (d 128, V key-major: its tile splits along
  d). In the interpreter (race detector on) the cluster barrier counts its
  arrivals as on the GPU, but each CTA's copy lands in its own shared
  memory only (jax 0.11.2's interpreter ignores ``collective_axes``), so
  writes into the other CTA's tiles are checked compiled on a GPU only.
  The grid is clustered only where a head's query tiles pair up, and the
  compiled form lowers for CUDA."""
  from flashjax.checks import make_plan
  from harness import inputs
  from pallas_kernels.mosaic import fwd
  from test_fp8 import check_fp8_forward
  if case is MULTICAST_CASES[-1]:
    skip_in_interpreter("each cluster walks several pairs in the first two")

  def persistent(base, **kw):
    return dataclasses.replace(base, mosaic=dataclasses.replace(
        base.mosaic, persistent=True, stream_k=False, **kw))
  base = flashjax.default_config(case.head_dim)
  check_without_races(case, persistent(base, multicast=True))
  q, k, v, _, q_seg, kv_seg = inputs(case, 1)
  # d 64: also with the intra-warpgroup overlap (V's slot released a step
  # late, through the cluster barrier too)
  for overlap in (False, True) if case.head_dim == 64 else (False,):
    assert_same_bits(
        forward_bits(persistent(base, intra_wg_overlap=overlap), q, k, v,
                     **case.kwargs(q_seg, kv_seg)),
        forward_bits(persistent(base, intra_wg_overlap=overlap,
                                multicast=True), q, k, v,
                     **case.kwargs(q_seg, kv_seg)))
  if case.head_dim == 128:
    interpreted = jax.default_backend() != "gpu"
    fp8_base = flashjax.default_config(128, fp8=True)
    check_fp8_forward("float8_e4m3fn", False, (
        case.batch, case.seq_q, case.seq_kv, case.num_q_heads,
        case.num_kv_heads, 128), False, "mosaic", config=persistent(
            fp8_base, multicast=True,
            **dict(block_kv=128) if interpreted else {}))

  # where it applies: 32 query tiles of 128 rows a head, not 33
  def cluster(seq, causal=False, **kw):
    x = jax.ShapeDtypeStruct((1, seq, 4, case.head_dim), jnp.bfloat16)
    config = dataclasses.replace(base, mosaic=dataclasses.replace(
        base.mosaic, multicast=True, **kw))
    plan, _, _ = make_plan(x, x, x, causal=causal, backend="mosaic",
                           interpret=False, config=config)
    return fwd.output_tiles(plan, 4, seq, 1, seq).cluster
  assert cluster(4096) == 2 and cluster(4096, persistent=False) == 1
  assert cluster(4096 + 128) == 1 and cluster(4096, causal=True) == 1
  x = jax.ShapeDtypeStruct((2, 4096, 4, case.head_dim), jnp.dtype(case.dtype))
  text = lower_for_h100(lambda q: flashjax.attention(
      q, q, q, backend="mosaic", config=persistent(base, multicast=True),
      interpret=False), x).as_text()
  assert text.count("custom_call @mosaic_gpu") == 1


# Stream-K over clusters: 3 pairs of query tiles over the interpreter's 2
# clusters (5 steps of 64 keys each), packed segment ids; the GPU's: 96
# pairs over 66 clusters, GQA
MULTICAST_STREAM_K_CASES = [
    Case(dtype="bfloat16", batch=1, seq_q=256, seq_kv=300, num_q_heads=3,
         num_kv_heads=1, head_dim=64, segments="packed"),
    Case(dtype="float16", batch=1, seq_q=4096, seq_kv=1500, num_q_heads=6,
         num_kv_heads=3, head_dim=128),
]


@pytest.mark.parametrize("case", MULTICAST_STREAM_K_CASES, ids=lambda c: c.id)
def test_multicast_stream_k(case):
  """``multicast=True`` with ``stream_k=True``: Stream-K's units are the
  clusters' pairs of query tiles, both CTAs of a cluster run the same
  steps of their own tile and write their own parts, merged after the
  kernel (one merge program per boundary and rank). Parity with the
  reference, gradients included (the backward reads the merged O and L),
  with tiles cut; on the CPU in the interpreter (race detector on), on a
  GPU its own case; the compiled form lowers for CUDA with the merge."""
  from pallas_kernels.mosaic import fwd
  if (jax.default_backend() == "gpu") == (case is MULTICAST_STREAM_K_CASES[0]):
    pytest.skip("the interpreter's 2 clusters split the first case, the "
                "GPU's 66 the second")
  base = flashjax.default_config(case.head_dim)
  config = dataclasses.replace(base, mosaic=dataclasses.replace(
      base.mosaic, persistent=True, stream_k=True, multicast=True,
      **dict(block_kv=64) if jax.default_backend() != "gpu" else {}))
  with merge_cuts(fwd, cluster=2) as cuts:
    check_without_races(case, config)
  assert len(cuts) == 1 and cuts[0] > 0
  q = jax.ShapeDtypeStruct((1, 4096, 6, case.head_dim), jnp.dtype(case.dtype))
  text = lower_for_h100(lambda q: flashjax.attention(
      q, q, q, backend="mosaic", config=dataclasses.replace(
          config, mosaic=dataclasses.replace(config.mosaic, block_kv=128)),
      interpret=False), q).as_text()
  assert text.count("custom_call @mosaic_gpu") == 1
  assert "flashjax_fwd_merge" in text


# the GPU's backward: 198 tiles of keys over 132 SMs
CARRY_SLOTS_CASES = STREAM_K_CASES + [
    Case(dtype="bfloat16", batch=2, seq_q=4100, seq_kv=4100, num_q_heads=6,
         num_kv_heads=3, head_dim=64, causal=False)]


@pytest.mark.parametrize("case", CARRY_SLOTS_CASES, ids=lambda c: c.id)
def test_carry_slots(case):
  """``MosaicBlocks(carry_slots=True)``: the step loops carry their slot
  instead of dividing the step count, on the persistent grids where that
  count carries on from tile to tile: the forward's Stream-K grid
  (non-causal, causal pairs) and the backward's, fused and not, in 3
  stages where they fit (a slot count that is no power of 2, wrapping
  within and across tiles). Parity with the reference, in the interpreter
  (2 CTAs) with the race detector and on a GPU (132 SMs) with its own
  cases; the compiled form lowers for CUDA."""
  interpreted = jax.default_backend() != "gpu"
  if interpreted != (case in STREAM_K_INTERPRETED):
    pytest.skip("the interpreter's 2 CTAs walk the first two cases; 132 SMs "
                "the others")
  base = flashjax.default_config(case.head_dim)
  small = dict(block_kv=64) if interpreted else {}
  fwd = dataclasses.replace(base.mosaic, persistent=True, stream_k=True,
                            carry_slots=True, **small)
  for fused in (False, True):
    # (d 128's two kernels fit 2 stages only)
    bwd = dataclasses.replace(
        base.mosaic_bwd, persistent=True, carry_slots=True, fused_dq=fused,
        split_dq=fused, stages=3 if fused or case.head_dim <= 64 else 2,
        **small)
    config = dataclasses.replace(base, mosaic=fwd, mosaic_bwd=bwd)
    check_without_races(case, config)
    # 4096 rows: more tiles than the H100's SMs, so Stream-K splits
    assert grad_kernels(config, case.head_dim, case.dtype, case.causal,
                        4096) == 2 + (not fused)


# the interpreter's 2 CTAs on 3 key tiles (no segments, so both parts of
# the cut tile see keys), and 198 key tiles on a GPU's 132 SMs
STREAM_K_BWD_CASES = [
    Case(dtype="bfloat16", batch=1, seq_q=100, seq_kv=300, num_q_heads=3,
         num_kv_heads=1, head_dim=64, causal=False),
    CARRY_SLOTS_CASES[-1],
    Case(dtype="float16", batch=2, seq_q=4100, seq_kv=4100, num_q_heads=6,
         num_kv_heads=3, head_dim=128, causal=False, segments="packed")]


@pytest.mark.parametrize("case", STREAM_K_BWD_CASES, ids=lambda c: c.id)
def test_stream_k_backward(case):
  """``MosaicBlocks(stream_k=True)`` in the fused backward on the persistent
  grid without a band: the last rounds' key tiles split by query steps, a
  cut tile's two parts' float32 dK and dV summed after the kernel
  (:func:`pallas_kernels.mosaic.bwd.merge`), with and without carried
  slots (compiled at d 64 also with the owned tiles in registers). Parity
  with the reference, in the interpreter (2 CTAs: 3 key tiles, the middle
  one cut) with the race detector and on a GPU (132 SMs) with its own
  cases; the compiled form lowers for CUDA, the merge beside it."""
  from pallas_kernels.mosaic import bwd
  interpreted = jax.default_backend() != "gpu"
  if interpreted != (case is STREAM_K_BWD_CASES[0]):
    pytest.skip("the interpreter's 2 CTAs split the first case's tiles; 132 "
                "SMs the others'")
  base = flashjax.default_config(case.head_dim)
  configs = [dataclasses.replace(
      base, mosaic=dataclasses.replace(   # 300 keys padded to 3 key tiles
          base.mosaic, block_kv=64 if interpreted else base.mosaic.block_kv),
      mosaic_bwd=dataclasses.replace(
          base.mosaic_bwd, persistent=True, stream_k=True, fused_dq=True,
          split_dq=True, carry_slots=carry)) for carry in (False, True)]
  if not interpreted and case.head_dim == 64:
    # compiled, at d 64: also with v27's owned K and V tiles in registers
    # (the form step opts-stream-k-bwd-v27 times; the interpreter has no
    # register operand)
    owned = dataclasses.replace(configs[1].mosaic_bwd, owned_registers=True)
    configs.append(dataclasses.replace(configs[1], mosaic_bwd=owned))
  with merge_cuts(bwd) as cuts:
    for config in configs:
      check_without_races(case, config)
  assert len(cuts) == len(configs) and all(n > 0 for n in cuts)
  config = configs[0]

  # 4096 key tiles over 132 SMs: the last rounds split
  text = lowered_grad(config, case.head_dim, case.dtype, False, seq=4096,
                      batch=4, heads=32).as_text()
  assert text.count("custom_call @mosaic_gpu") == 2
  assert "flashjax_dkdv_merge" in text


# rows that see no key (300 queries, 100 keys, causal from the bottom
# right: L = -inf), then GPU shapes
LSE_LOG2_CASES = [
    Case(dtype="bfloat16", batch=1, seq_q=300, seq_kv=100, num_q_heads=4,
         num_kv_heads=2, head_dim=64, causal=True),
    Case(dtype="float16", batch=2, seq_q=1100, seq_kv=900, num_q_heads=8,
         num_kv_heads=2, head_dim=128, causal=True, segments="packed"),
    Case(dtype="bfloat16", batch=2, seq_q=4096, seq_kv=4096, num_q_heads=6,
         num_kv_heads=3, head_dim=64, causal=False)]


@pytest.mark.parametrize("case", LSE_LOG2_CASES, ids=lambda c: c.id)
def test_lse_log2(case):
  """``MosaicBlocks(lse_log2=True)``: the backward's kernels take L in log2
  units, converted by XLA before them (folded: S's start -L2 / u). Parity
  with the reference (rows that see no key among the interpreter's), two
  kernels and fused, folded statistics or not; in the interpreter with the
  race detector and on a GPU with its own cases. Compiled, the option
  changes the backward's kernels and not the forward."""
  interpreted = jax.default_backend() != "gpu"
  if interpreted != (case is LSE_LOG2_CASES[0]):
    pytest.skip("a small case for the interpreter, larger ones on a GPU")
  base = flashjax.default_config(case.head_dim)
  small = dict(block_kv=64) if interpreted else {}
  fwd = dataclasses.replace(base.mosaic, **small)
  for fused, fold in ((False, False), (True, True), (True, False)):
    bwd = dataclasses.replace(base.mosaic_bwd, lse_log2=True, fused_dq=fused,
                              split_dq=fused and case.head_dim <= 64,
                              fold_stats=fold, stages=2, **small)
    check_without_races(case, dataclasses.replace(base, mosaic=fwd,
                                                  mosaic_bwd=bwd))

  def kernels(lse_log2):
    # the gradient's Mosaic GPU kernels as MLIR, without locations or the
    # process's kernel count (benchmarks/kernel_digest.py)
    config = dataclasses.replace(base, mosaic_bwd=dataclasses.replace(
        base.mosaic_bwd, lse_log2=lse_log2))
    module = lowered_grad(config, case.head_dim, case.dtype, case.causal,
                          seq=1024).compiler_ir("stablehlo")
    return [kernel_digest.normalized(text)
            for text in kernel_digest.mosaic_modules(module)]
  converted, plain = kernels(True), kernels(False)
  assert len(converted) == len(plain) > 1
  assert converted[0] == plain[0] and all(
      a != b for a, b in zip(converted[1:], plain[1:]))


FUSED_CASES = CASES + [
    # non-causal GQA, more key tiles than stages, several query heads per CTA
    Case(dtype="float16", batch=1, seq_q=256, seq_kv=384, num_q_heads=4,
         num_kv_heads=2, head_dim=128, causal=False),
    # MQA, causal with seq_q > seq_kv: fully masked rows get dQ = 0
    Case(dtype="bfloat16", batch=1, seq_q=390, seq_kv=140, num_q_heads=4,
         num_kv_heads=1, head_dim=128, causal=True)]


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: c.id)
def test_fused_dq_backward(case, persistent):
  """``MosaicBlocks(fused_dq=True)``: one backward kernel for dK, dV and dQ,
  dSᵀ through double-buffered shared memory (at d 128 shared by both
  warpgroups, at d 64 each its own). In the interpreter (no TMA reduction)
  each key tile writes its own dQ part, summed after the kernel; the race
  detector checks the dSᵀ hand-over and that K's buffer is not overwritten by
  dK while the other warpgroup still reads it. Compiled, the parts are
  reduce-added: lowered for CUDA here. The interpreter runs the d 64, the
  non-causal GQA and the MQA cases, each on one of the two grids, in turn."""
  if case in CASES[::2]:
    skip_in_interpreter("the fused backward is not the default with these "
                        "causal windows")
  if persistent != (FUSED_CASES.index(case) % 2 == 1):
    skip_in_interpreter("each case on one grid in the interpreter, in turn")
  config = flashjax.default_config(case.head_dim, causal=case.causal)
  config = dataclasses.replace(config, mosaic_bwd=dataclasses.replace(
      config.mosaic_bwd, block_kv=64, fused_dq=True, persistent=persistent))
  check_without_races(case, config)

  def loss(q, k):
    return jnp.sum(flashjax.attention(
        q, k, k, causal=case.causal, backend="mosaic", config=config,
        interpret=False).astype(jnp.float32))
  q = jax.ShapeDtypeStruct((2, 1000, 4, case.head_dim), jnp.dtype(case.dtype))
  kv = jax.ShapeDtypeStruct((2, 1000, 2, case.head_dim), jnp.dtype(case.dtype))
  text = lower_for_h100(jax.grad(loss, argnums=(0, 1)), q, kv).as_text()
  # the forward and one backward kernel
  assert text.count("custom_call @mosaic_gpu") == 2


def test_split_dq():
  """``MosaicBlocks(split_dq=True)`` at d 64: the fused backward's two
  warpgroups share their dSᵀ and each takes half of dQ's columns (32: a
  64-byte row of K's tile) over both warpgroups' keys, as at d 128. In the
  interpreter (race detector on) the MQA case (causal, fully masked rows,
  each key tile seen by every query head); the compiled form lowers for
  CUDA, one tile a CTA and persistent."""
  case = CASES[1]
  config = flashjax.default_config(case.head_dim, causal=case.causal)
  config = dataclasses.replace(config, mosaic_bwd=dataclasses.replace(
      config.mosaic_bwd, block_kv=64, fused_dq=True, split_dq=True))
  check_without_races(case, config)

  for persistent in (False, True):
    compiled = dataclasses.replace(config, mosaic_bwd=dataclasses.replace(
        config.mosaic_bwd, block_kv=128, persistent=persistent))
    assert grad_kernels(compiled, 64, "bfloat16", causal=True) == 2


def test_index_vectors():
  """``MosaicBlocks(index_vectors=True)``: masked steps build their index
  tiles from broadcast row and column vectors. The same mask: in the
  interpreter (race detector on) the forward and both backward kernels on
  a causal window with packed segments and GQA (odd lengths, fully masked
  rows), and lowered for CUDA, fused backward too; non-causal with padded
  keys (a length bound alone, where the vector form's layout search ran out
  of fuel and the iotas stay) as well."""
  vectors = lambda blocks, **kw: dataclasses.replace(
      blocks, index_vectors=True, **kw)
  config = flashjax.default_config(64, causal=True)
  config = dataclasses.replace(config, mosaic=vectors(config.mosaic),
                               mosaic_bwd=vectors(config.mosaic_bwd))
  check_without_races(BANDED_PACKED, config)
  for fused in (False, True):
    compiled = dataclasses.replace(config, mosaic_bwd=vectors(
        config.mosaic_bwd, fused_dq=fused, split_dq=fused))
    assert grad_kernels(compiled, 64, "bfloat16", causal=True) == 3 - fused
  assert grad_kernels(config, 64, "bfloat16", causal=False) == 3


@pytest.mark.parametrize("fused", [False, True])
def test_step_descriptors(fused):
  """``MosaicBlocks(step_descriptors=True)``: the dK/dV kernel indexes its
  owned K and V tiles through an optimization barrier in each step (so
  their wgmma descriptors are computed there, not hoisted before the loop).
  The same gradients: in the interpreter (race detector on) on a causal
  window with packed segments and GQA (odd lengths, fully masked rows), two
  kernels or fused; lowered for CUDA at d 128 causal, and (fused, the
  default there) non-causal."""
  def config_for(head_dim, causal, **blocks):
    config = flashjax.default_config(head_dim, causal=causal)
    return dataclasses.replace(config, mosaic_bwd=dataclasses.replace(
        config.mosaic_bwd, step_descriptors=True, **blocks))
  split = dict(fused_dq=fused, split_dq=fused)
  check_without_races(BANDED_PACKED, config_for(64, True, **split))
  assert grad_kernels(config_for(128, True, **split), 128, "bfloat16",
                      causal=True) == 3 - fused
  if fused:
    assert grad_kernels(config_for(128, False), 128, "bfloat16",
                        causal=False) == 2


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_deferred_waits(head_dim, fused):
  """``MosaicBlocks(deferred_waits=True)``: the dK/dV step keeps dV's and
  dK's products in flight (compiled only; the interpreter runs the plain
  order, which the parity tests cover), lowered for CUDA with causal masking
  and segment ids, fused or not (at d 64 fused with dQ's columns split, as
  the defaults fuse it); on a GPU also run against the reference (GQA,
  causal, a window, packed segments)."""
  config = flashjax.default_config(head_dim, causal=True)
  config = dataclasses.replace(config, mosaic_bwd=dataclasses.replace(
      config.mosaic_bwd, fused_dq=fused, deferred_waits=True,
      split_dq=fused and head_dim == 64))
  if jax.default_backend() == "gpu":
    check_attention(dataclasses.replace(CASES[2], head_dim=head_dim),
                    backend="mosaic", config=config)

  def loss(q, k, ids):
    return jnp.sum(flashjax.attention(
        q, k, k, causal=True, q_segment_ids=ids, backend="mosaic",
        config=config, interpret=False).astype(jnp.float32))
  q = jax.ShapeDtypeStruct((2, 1000, 4, head_dim), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((2, 1000, 2, head_dim), jnp.bfloat16)
  ids = jax.ShapeDtypeStruct((2, 1000), jnp.int32)
  text = lower_for_h100(jax.grad(loss, argnums=(0, 1)), q, kv, ids).as_text()
  assert text.count("custom_call @mosaic_gpu") == (2 if fused else 3)


def test_forward_owned_registers_by_length():
  """The 16-bit d 128 forward without a band reads Q as the register operand
  of S = Q Kᵀ from 4k keys (and without a length); not below, not causal,
  not under a window, not at d 64, not in FP8. Lowered for CUDA at 4k keys
  (the default's forward is the option's, its backward unchanged). On a
  GPU the default runs against the reference at 4k keys (GQA, odd query
  length); the interpreter runs the shared-memory form, which the parity
  tests cover."""
  def owned(head_dim=128, **kw):
    return flashjax.default_config(head_dim, **kw).mosaic.owned_registers
  assert owned(seq_kv=4096) and owned(seq_kv=16384) and owned()
  assert not owned(seq_kv=2048) and not owned(seq_kv=4095)
  assert not owned(causal=True, seq_kv=8192)
  assert not owned(banded=True, seq_kv=8192)                # a window
  assert not owned(64, seq_kv=8192) and not owned(fp8=True, seq_kv=8192)

  def kernels(config):
    module = lowered_grad(config, 128, "bfloat16", False, seq=4096,
                          batch=1).compiler_ir("stablehlo")
    return [kernel_digest.normalized(text)
            for text in kernel_digest.mosaic_modules(module)]
  default = flashjax.default_config(128, seq_kv=4096)
  off = dataclasses.replace(default, mosaic=dataclasses.replace(
      default.mosaic, owned_registers=False))
  changed = [a != b for a, b in zip(kernels(default), kernels(off))]
  assert changed == [True, False]      # the forward; the fused backward
  if jax.default_backend() == "gpu":
    check_attention(Case(dtype="bfloat16", batch=1, seq_q=1100, seq_kv=4096,
                         num_q_heads=4, num_kv_heads=2, head_dim=128),
                    backend="mosaic")


@pytest.mark.parametrize("fused", [False, True])
def test_owned_registers(fused):
  """``MosaicBlocks(owned_registers=True)`` in both passes: the forward's Q,
  the dK/dV kernel's K and V and the dQ kernel's Q and dO are the register
  operands of the products that read them each step (compiled only; the
  interpreter runs the SS form, which the parity tests cover). d 64, lowered
  for CUDA causal: the option changes every kernel, the backward in two
  kernels or fused with dQ's columns split (the defaults' fused form
  there); on a GPU also run against the reference (GQA, causal, a window,
  packed segments; non-causal at 4k) and at d 128 (the forward's overlap
  above 12k keys among the long tests' cases is not covered here)."""
  def config_for(head_dim, on, causal=True):
    base = flashjax.default_config(head_dim, causal=causal)
    return dataclasses.replace(
        base, mosaic=dataclasses.replace(base.mosaic, owned_registers=on),
        mosaic_bwd=dataclasses.replace(
            base.mosaic_bwd, fused_dq=fused, split_dq=fused and head_dim == 64,
            owned_registers=on))
  if jax.default_backend() == "gpu":
    for head_dim in (64, 128):
      check_attention(dataclasses.replace(CASES[2], head_dim=head_dim),
                      backend="mosaic", config=config_for(head_dim, True))
    check_attention(LSE_LOG2_CASES[2], backend="mosaic",
                    config=config_for(64, True, causal=False))

  def kernels(config):
    module = lowered_grad(config, 64, "bfloat16", True).compiler_ir("stablehlo")
    return [kernel_digest.normalized(text)
            for text in kernel_digest.mosaic_modules(module)]
  changed = [a != b for a, b in zip(kernels(config_for(64, True)),
                                    kernels(config_for(64, False)))]
  # the forward, dK/dV, (not fused) the dQ kernel
  assert changed == [True] * (2 if fused else 3)


@pytest.mark.parametrize("fused", [False, True])
def test_shared_full(fused):
  """``MosaicBlocks(shared_full=True)`` in both passes: a step's streamed
  tiles land on one barrier a stage, awaited once (four arrivals in the
  dK/dV kernel, two in the dQ kernel and the forward). Against the reference
  on GQA, causal with a window, packed segments, odd lengths, the backward
  in two kernels or fused; in the interpreter with the race detector (64-key
  tiles). Lowered for CUDA (d 64 causal): every kernel changes."""
  small = ({} if jax.default_backend() == "gpu" else dict(block_kv=64))

  def config_for(on, **extra):
    base = flashjax.default_config(64, causal=True)
    return dataclasses.replace(
        base, mosaic=dataclasses.replace(base.mosaic, shared_full=on,
                                         **extra),
        mosaic_bwd=dataclasses.replace(
            base.mosaic_bwd, fused_dq=fused, split_dq=fused, shared_full=on,
            **extra))
  check_without_races(BANDED_PACKED, config_for(True, **small))

  def kernels(config):
    module = lowered_grad(config, 64, "bfloat16", True).compiler_ir("stablehlo")
    return [kernel_digest.normalized(text)
            for text in kernel_digest.mosaic_modules(module)]
  changed = [a != b for a, b in zip(kernels(config_for(True)),
                                    kernels(config_for(False)))]
  # the forward, dK/dV, (not fused) the dQ kernel
  assert changed == [True] * (2 if fused else 3)


@pytest.mark.parametrize("causal", [False, True])
def test_shared_full_in_the_d128_fused_backward(causal):
  """``shared_full`` in d 128's fused backward as the defaults build it
  since v31 (non-causal; causal from 8k keys: deferred waits, folded
  statistics, step descriptors, 240 registers causal): lowered for CUDA,
  and against the reference in the interpreter with the race detector
  (64-key tiles; on a GPU the defaults' tiles)."""
  base = flashjax.default_config(128, causal=causal, seq_kv=16384)
  assert base.mosaic_bwd.shared_full
  assert grad_kernels(base, 128, "bfloat16", causal) == 2        # fused
  small = ({} if jax.default_backend() == "gpu" else dict(block_kv=64))
  check_without_races(Case(dtype="bfloat16", batch=1, seq_q=150, seq_kv=200,
                           num_q_heads=2, num_kv_heads=1, head_dim=128,
                           causal=causal), dataclasses.replace(
                               base, mosaic_bwd=dataclasses.replace(
                                   base.mosaic_bwd, **small)))


@pytest.mark.parametrize("causal", [False, True])
def test_owned_registers_with_shared_full(causal):
  """The two options together, as ``gpu_session.sh confirm-owned-registers``
  times them in d 64's backward: the defaults' fused kernel there (non-
  causal from 4k keys: dQ's columns split, 5 stages, L in log2 units;
  causal from 16k). Lowered for CUDA; on a GPU (``owned_registers`` is
  compiled only) also against the reference at a short length."""
  base = flashjax.default_config(64, causal=causal, seq_kv=16384)
  config = dataclasses.replace(base, mosaic_bwd=dataclasses.replace(
      base.mosaic_bwd, owned_registers=True, shared_full=True))
  assert grad_kernels(config, 64, "bfloat16", causal) == 2    # fused
  if jax.default_backend() == "gpu":
    check_attention(BANDED_PACKED if causal else dataclasses.replace(
        LSE_LOG2_CASES[2], seq_q=700, seq_kv=700), backend="mosaic",
                    config=config)


@pytest.mark.parametrize("causal", [False, True])
def test_d256_forward(causal):
  """d 256 (136-256 padded): the Hopper forward (64-row K/V tiles, O over
  Q's tile, no O residual: 192 KiB of shared memory) and the portable
  backward (the Hopper one's dK and dV accumulators would not fit the
  registers); "auto" keeps the portable kernels there until the forward
  has run compiled. Lowered for CUDA (one Mosaic GPU kernel, the rest
  Triton); against the reference in the interpreter (GQA, packed segments,
  odd lengths; d 192 padded with a window and a softcap)."""
  config = flashjax.default_config(256, causal=causal, seq_kv=4096)
  blocks = config.mosaic
  assert (blocks.block_kv, blocks.stages, blocks.prefetch_q, blocks.o_residual,
          blocks.owned_registers, blocks.intra_wg_overlap) == (
              64, 2, False, False, False, False)
  assert blocks.smem_bytes(256, 2) <= flashjax.config.SMEM_BYTES
  q = jax.ShapeDtypeStruct((1, 300, 4, 256), jnp.bfloat16)
  assert "backward portable" in flashjax.explain(q, q, q, causal=causal,
                                                 backend="mosaic")

  def loss(q):
    return jnp.sum(flashjax.attention(
        q, q, q, causal=causal, backend="mosaic",
        interpret=False).astype(jnp.float32))
  text = lower_for_h100(jax.grad(loss), q).as_text()
  assert text.count("custom_call @mosaic_gpu") == 1 and "triton" in text
  check_without_races(
      Case(dtype="bfloat16", batch=1, seq_q=200, seq_kv=150, num_q_heads=4,
           num_kv_heads=2, head_dim=256, causal=causal, segments="packed")
      if causal else
      Case(dtype="bfloat16", batch=1, seq_q=130, seq_kv=260, num_q_heads=2,
           num_kv_heads=2, head_dim=192, window=(50, 20), softcap=20.0),
      None)


def test_deterministic_backward_by_config():
  """``deterministic=True`` keeps the forward's tiling and runs the Hopper
  backward as two kernels (dQ; dK/dV) in 2 stages wherever the defaults
  fuse dQ into the dK/dV kernel (whose float32 reduce-adds into dQ land in
  an order that varies): the two-kernel tiling the defaults take at
  shorter lengths, which fits shared memory. Lowered for CUDA where the
  defaults fuse (d 128 non-causal, d 64 causal at 16k): three kernels."""
  for head_dim in (64, 128):
    for causal in (False, True):
      for seq_kv in (1024, 4096, 16384, None):
        default = flashjax.default_config(head_dim, causal=causal,
                                          seq_kv=seq_kv)
        config = flashjax.default_config(head_dim, causal=causal,
                                         seq_kv=seq_kv, deterministic=True)
        blocks = config.mosaic_bwd
        assert dataclasses.replace(config, mosaic_bwd=default.mosaic_bwd) == (
            default)
        assert (blocks.fused_dq, blocks.split_dq, blocks.stages,
                blocks.compute_registers, blocks.step_descriptors,
                blocks.shared_full, blocks.owned_registers) == (
                    False, False, 2, 232, False, False, False)
        assert blocks.smem_bytes(head_dim, 2, backward=True) <= (
            flashjax.config.SMEM_BYTES)
        if not default.mosaic_bwd.fused_dq:
          assert config == default
  for head_dim, causal in ((128, False), (64, True)):
    config = flashjax.default_config(head_dim, causal=causal, seq_kv=16384,
                                     deterministic=True)
    assert grad_kernels(config, head_dim, "bfloat16", causal) == 3


def test_deterministic_gradients():
  """``flashjax.attention(..., deterministic=True)`` at d 128 non-causal
  (fused by default): against the reference (GQA, odd lengths); compiled,
  at 4k keys (32 key tiles reduce-adding into every dQ row under the
  defaults), against the reference and a second run, bit for bit."""
  gpu = jax.default_backend() == "gpu"
  case = Case(dtype="bfloat16", batch=1, seq_q=4096 if gpu else 100,
              seq_kv=4096 if gpu else 130, num_q_heads=4 if gpu else 2,
              num_kv_heads=2 if gpu else 1, head_dim=128)
  got, _ = check_attention(case, backend="mosaic", deterministic=True)
  if gpu:
    again, _ = check_attention(case, backend="mosaic", deterministic=True)
    for name in ("o", "lse", "dq", "dk", "dv"):
      np.testing.assert_array_equal(np.asarray(again[name], np.float32),
                                    np.asarray(got[name], np.float32))


# (case, seed) where D = rowsum(dO ∘ O) from the rounded O misses the rule:
# the property test's draw (eighth session) and parity_sweep.py's two
# (thirty-eighth, benchmarks/results/raw/parity-sweep-shared-full[-fused]-
# session38-cpu.log)
MARGIN_CASES = [
    (Case(dtype="bfloat16", seq_q=1, seq_kv=5, num_q_heads=1, num_kv_heads=1,
          head_dim=40, segments="packed"), 13),
    (Case(dtype="float16", batch=2, seq_q=100, seq_kv=6, num_q_heads=3,
          num_kv_heads=1, head_dim=40, causal=True, segments="packed"), 65007),
    (Case(dtype="bfloat16", batch=2, seq_q=221, seq_kv=6, num_q_heads=3,
          num_kv_heads=1, head_dim=64, causal=True, segments="packed"), 61349)]


def rounded_o(head_dim, causal=False):
  """The default config of ``head_dim`` with D = rowsum(dO ∘ O) from the
  rounded O (``o_residual=False``), the Hopper defaults until the
  thirty-ninth session."""
  base = flashjax.default_config(head_dim, causal=causal)
  return dataclasses.replace(base, mosaic=dataclasses.replace(
      base.mosaic, o_residual=False))


def consistent(head_dim, causal=False, **blocks):
  """:func:`rounded_o`'s config with ``consistent_delta`` (two backward
  kernels)."""
  base = rounded_o(head_dim, causal)
  return dataclasses.replace(base, mosaic_bwd=dataclasses.replace(
      base.mosaic_bwd, consistent_delta=True, fused_dq=False, split_dq=False,
      **blocks))


@pytest.mark.parametrize("case,seed", MARGIN_CASES,
                         ids=[c.id for c, _ in MARGIN_CASES])
def test_consistent_delta_passes_the_margin_case(case, seed):
  """``MosaicBlocks(consistent_delta=True)``: the dQ kernel runs first, sums
  each row of G = P ∘ (dP - D), hands the dK/dV kernel D + excess and takes
  dQ with D + excess (dQ - excess ⊗ P'K), as the portable backward does.
  The margin cases (the first also test_attention.test_known_margin_case)
  pass with it, with D from the rounded O (``o_residual=False``); in the
  interpreter with the race detector, where that D without the excess
  misses the rule (dQ), and compiled on a GPU. (Until the thirty-eighth
  session this test ran the first case on seed 0's inputs, where the
  defaults pass too, and dQ was taken as dS (K - k̄), which missed the
  third case.)"""
  if jax.default_backend() != "gpu":
    with pytest.raises(AssertionError, match="dq max err"):
      check_attention(case, backend="mosaic", seed=seed,
                      config=rounded_o(64, case.causal))
  check_without_races(case, consistent(64, case.causal), seed=seed)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("softcap", [None, 20.0])
def test_consistent_delta(softcap, overlap):
  """``consistent_delta`` against the reference: GQA, causal with a window,
  packed segments, odd lengths, a softcap (P' then carries its factor), the
  dQ kernel's overlap or not; in
  the interpreter with the race detector (64-key tiles). A cotangent on L
  (dL enters D and the excess) matches the reference's gradient, and where
  a row sees no key it moves nothing. Lowered for CUDA (d 128 causal: the
  dQ kernel, then dK/dV)."""
  small = ({} if jax.default_backend() == "gpu" else dict(block_kv=64))
  config = consistent(64, True, intra_wg_overlap=overlap, **small)
  config = dataclasses.replace(config, mosaic=dataclasses.replace(
      config.mosaic, **small))
  check_without_races(dataclasses.replace(BANDED_PACKED, softcap=softcap),
                      config)

  # a cotangent on L too, on the MQA case (float16; causal with seq_q >
  # seq_kv: the first 250 rows see no key), its keys sharing a direction:
  # the pass rule of check_attention (twice the float16 reference's error
  # against float32's, plus the floor)
  case = CASES[1]
  q, k, v = mqa_inputs(3)
  k = k + 2.0
  w = jax.random.normal(jax.random.key(4), (1, case.num_q_heads, case.seq_q))

  def grads(backend, *args, cfg=None):
    def f(q, k, v):
      o, lse = flashjax.attention(q, k, v, causal=True, return_lse=True,
                                  softcap=softcap, backend=backend,
                                  config=cfg)
      return (jnp.sum(o.astype(jnp.float32))
              + jnp.sum(jnp.where(jnp.isfinite(lse), lse * w, 0.0)))
    return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(*args)
  got = grads("mosaic", q, k, v, cfg=config)
  with jax.default_matmul_precision("highest"):
    ref32 = grads("reference", *(x.astype(jnp.float32) for x in (q, k, v)))
    lowp = grads("reference", q, k, v)
  for g, r, l in zip(got, ref32, lowp):
    scale = max(1.0, float(jnp.max(jnp.abs(r))))
    assert max_err(g, r) <= 2 * max_err(l, r) + FLOOR[case.dtype] * scale
  np.testing.assert_array_equal(np.asarray(got[0][:, :250], np.float32), 0)

  text = lower_for_h100(
      jax.grad(lambda q: jnp.sum(flashjax.attention(
          q, q, q, causal=True, backend="mosaic", config=consistent(128, True),
          interpret=False).astype(jnp.float32))),
      jax.ShapeDtypeStruct((2, 1000, 4, 128), jnp.bfloat16)).as_text()
  assert text.count("custom_call @mosaic_gpu") == 3


def test_consistent_delta_needs_two_kernels():
  with pytest.raises(ValueError, match="consistent_delta.*fused_dq=True"):
    flashjax.MosaicBlocks(fused_dq=True, consistent_delta=True)


def with_residual(head_dim, causal=False, **mosaic):
  """The default config of ``head_dim`` (``MosaicBlocks(o_residual)``, the
  16-bit default since the thirty-ninth session) with ``mosaic``'s
  changes."""
  base = flashjax.default_config(head_dim, causal=causal)
  assert base.mosaic.o_residual
  return dataclasses.replace(base, mosaic=dataclasses.replace(
      base.mosaic, **mosaic))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("case,seed", MARGIN_CASES,
                         ids=[c.id for c, _ in MARGIN_CASES])
def test_o_residual_passes_the_margin_case(case, seed, fused):
  """``MosaicBlocks(o_residual=True)`` (the default): the forward also
  writes O's rounding residual r and the backward's D = rowsum(dO ∘ (O +
  r)) is the unrounded O's, so the margin cases, which D from the rounded
  O misses (dQ; :func:`test_consistent_delta_passes_the_margin_case`
  checks that in the interpreter), pass with the default backward
  kernels, the two (these cases' defaults) and the fused one (with split
  dQ columns, the default's form at d 64 from 4k keys); race detector
  on."""
  config = with_residual(64, causal=case.causal)
  config = dataclasses.replace(config, mosaic_bwd=dataclasses.replace(
      config.mosaic_bwd, fused_dq=fused, split_dq=fused))
  check_without_races(case, config, seed=seed)


@pytest.mark.parametrize("stream_k", [False, True])
def test_o_residual(stream_k):
  """The forward's r (``forward(..., residual=True)``) is what rounding O
  dropped: at most half an ulp of O, and O + r is nearer float32's O (a
  third of O's error here; the rest is P's rounding for P V), after
  Stream-K's merge too (the interpreter's 2 CTAs cut the causal pairs'
  middle one). Gradients through it (packed segments, GQA) pass the rule,
  race detector on. Lowered for CUDA at d 64 and 128 (there the forward's
  shared memory is 224 KiB of 227), non-causal (Stream-K's merge writes r)
  and causal; FP8 has no residual."""
  from flashjax.checks import make_plan
  from pallas_kernels import mosaic
  case = STREAM_K_INTERPRETED[1]
  small = {} if jax.default_backend() == "gpu" else dict(block_kv=64)
  config = with_residual(64, causal=True, persistent=True, stream_k=stream_k,
                         **small)
  check_without_races(case, config)

  q, k, v = (jax.random.normal(key, (1, 256, 3, 64), jnp.bfloat16)
             for key in jax.random.split(jax.random.key(0), 3))
  plan, _, _ = make_plan(q, k, v, causal=True, backend="mosaic",
                         config=config)
  o, _, r = jax.jit(functools.partial(mosaic.forward, plan,
                                      residual=True))(q, k, v)
  o32 = flashjax.attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                           causal=True, backend="reference")
  # |r| at most half a bfloat16 ulp of O (8 bits of 24: float32's spacing
  # times 2^16)
  o_np, r_np = (np.asarray(x, np.float32) for x in (o, r))
  assert np.all(np.abs(r_np) <= np.spacing(np.abs(o_np)) * 2.0 ** 15)
  assert np.any(r_np != 0)
  unrounded = o.astype(jnp.float32) + r.astype(jnp.float32)
  assert max_err(unrounded, o32) < max_err(o, o32) / 2
  with pytest.raises(ValueError, match="16-bit forward's only"):
    mosaic.forward(dataclasses.replace(plan, fp8="float8_e4m3fn"), q, k, v,
                   residual=True)

  for head_dim in (64, 128):
    for causal in (False, True):
      text = lowered_grad(with_residual(head_dim, causal), head_dim,
                          "bfloat16", causal, seq=4096).as_text()
      assert ("flashjax_fwd_merge" in text) == (not causal)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_vmap_of_gradients(head_dim):
  """``jax.vmap`` over the Hopper kernels' gradients, K and V shared by the
  mapped elements: each element's gradients are its own. At d 128
  non-causal the backward is the fused one, whose ``pl.run_state`` has no
  batching rule: the mapped axis is folded into the batch
  (``pipeline.fold_vmap``, every backward). The interpreter runs d 128 only,
  the fused backward: d 64 goes through the same fold."""
  if head_dim == 64:
    skip_in_interpreter("d 64 goes through the same fold as d 128")
  keys = jax.random.split(jax.random.key(5), 3)
  q = jax.random.normal(keys[0], (2, 1, 128, 4, head_dim), jnp.bfloat16)
  k, v = (jax.random.normal(key, (1, 128, 2, head_dim), jnp.bfloat16)
          for key in keys[1:])

  def loss(q, k, v):
    return jnp.sum(flashjax.attention(q, k, v, backend="mosaic").astype(
        jnp.float32) ** 2)
  grads = jax.grad(loss, argnums=(0, 1, 2))
  got = jax.vmap(grads, in_axes=(0, None, None))(q, k, v)
  for i in range(q.shape[0]):
    for g, want in zip(got, grads(q[i], k, v)):
      want = np.asarray(want, np.float32)
      # the same kernels on the same element; compiled, dQ's reduce-add
      # order varies (fused), so allow a few bf16 ulps
      np.testing.assert_allclose(np.asarray(g[i], np.float32), want, rtol=0,
                                 atol=2 ** -6 * np.abs(want).max())
