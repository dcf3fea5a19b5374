"""FP8 attention: pre-quantised inputs with descales, the fp8=True training
policy, the quantisation and rotation helpers, and bad input.

Pass rule, as the harness's for 16-bit dtypes: the kernel's max error against
the float32 reference (of the dequantised inputs) may be at most twice that of
an emulation of the same FP8 math (P rounded to FP8 with the same scale), plus
a small floor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flashjax
from benchmarks.fp8_accuracy import make_inputs
from benchmarks.fp8_gradients import (emulate, policy_inputs,
                                      shared_key_direction)
from flashjax import fp8
from test_lowering import lower_for_h100

FLOOR = 2e-3


def _inputs(key, b, sq, skv, hq, hkv, d, dtype=jnp.bfloat16, outliers=False):
  q, k, v = make_inputs(key, (b, sq, hq, d), (b, skv, hkv, d), outliers)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


BACKENDS = ["triton", "mosaic"]     # portable and Hopper FP8 forwards


def lowered_fp8_forward(causal, shape, config=None, fmt="float8_e4m3fn",
                        backend="mosaic", key_major=False):
  """The FP8 forward on ``shape = (batch, seq_q, seq_kv, q_heads, kv_heads,
  d)`` with ``config``, lowered for CUDA against an abstract H100 (compiled
  mode): its text. ``key_major``: V given as :func:`fp8.quantize_v` makes
  it (keys padded to 16)."""
  b, sq, skv, hq, hkv, d = shape

  def f(q8, k8, v8, descale):
    return flashjax.attention(q8, k8, v8, q_descale=descale,
                              k_descale=descale, v_descale=descale,
                              causal=causal, interpret=False, backend=backend,
                              config=config)
  kv = jax.ShapeDtypeStruct((b, skv, hkv, d), jnp.dtype(fmt))
  v = (fp8.KeyMajorV(kv.update(shape=(b, hkv, d, -(-skv // 16) * 16)), skv)
       if key_major else kv)
  return lower_for_h100(f, kv.update(shape=(b, sq, hq, d)), kv, v,
                        jax.ShapeDtypeStruct((), jnp.float32)).as_text()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", fp8.FORMATS)
@pytest.mark.parametrize("causal,shape,per_head", [
    (False, (2, 128, 128, 4, 4, 64), False),
    (True, (1, 200, 333, 8, 2, 128), True),       # GQA, odd lengths, per head
    (True, (2, 77, 77, 4, 1, 64), False),         # MQA
])
def test_fp8_inputs_match_the_reference(fmt, causal, shape, per_head, backend):
  check_fp8_forward(fmt, causal, shape, per_head, backend)


@pytest.mark.parametrize("seq_kv", [2048, 16384])
def test_causal_fp8_tiles_for_long_sequences(seq_kv):
  """From 2k keys the causal Hopper FP8 forward takes 256-row K/V tiles
  (128 below: flashjax.default_config), and there its masked steps index
  vectors (with iotas those tiles spilled; 128-key tiles and the 16-bit
  forward keep iotas), with query tiles in mirrored pairs on the persistent
  grid up to 16k keys (the 16-bit forward: 12k), Stream-K from 8k; that
  tiling at a short causal shape (GQA, odd lengths, per-head scales)."""
  config, short = (flashjax.default_config(128, causal=True, fp8=True,
                                           seq_kv=n) for n in (seq_kv, 1024))
  assert (config.mosaic.block_kv, short.mosaic.block_kv) == (256, 128)
  assert config.mosaic.index_vectors and not short.mosaic.index_vectors
  assert config.mosaic.persistent and short.mosaic.persistent
  assert config.mosaic.stream_k == (seq_kv >= 8192)
  assert not flashjax.default_config(128, causal=True,
                                     seq_kv=seq_kv).mosaic.index_vectors
  check_fp8_forward("float8_e4m3fn", True, (1, 200, 333, 8, 2, 128), True,
                    "mosaic", config=config)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp8_with_softcap(backend):
  """With a soft cap the scale does not fold into the exponent: the q·k
  descale (here per head) multiplies S before the tanh."""
  check_fp8_forward("float8_e4m3fn", True, (1, 200, 333, 8, 2, 128), True,
                    backend, softcap=2.0)


def check_fp8_forward(fmt, causal, shape, per_head, backend, config=None,
                      softcap=None, key_major=False):
  """The FP8 forward on e4m3/e5m2 inputs against the float32 reference on the
  dequantised inputs, within twice the error of rounding P to the format
  (the emulation) plus FLOOR. ``key_major``: V given as
  :func:`fp8.quantize_v` makes it. Returns O."""
  b, sq, skv, hq, hkv, d = shape
  q, k, v = _inputs(jax.random.key(sq), b, sq, skv, hq, hkv, d)
  (q8, qd), (k8, kd), (v8, vd) = (fp8.quantize(x, fmt, per_head=per_head)
                                  for x in (q, k, v))
  v_in = fp8.quantize_v(v, fmt, per_head=per_head)[0] if key_major else v8
  o = flashjax.attention(q8, k8, v_in, q_descale=qd, k_descale=kd,
                         v_descale=vd, causal=causal, backend=backend,
                         config=config, softcap=softcap)
  assert o.dtype == jnp.bfloat16 and o.shape == q.shape
  deq = [fp8.dequantize(x, s) for x, s in ((q8, qd), (k8, kd), (v8, vd))]
  ref = emulate(*deq, causal=causal, fmt=fmt, p_rounding=False,
                softcap=softcap)
  emu = emulate(*deq, causal=causal, fmt=fmt, softcap=softcap)
  err = float(jnp.max(jnp.abs(o.astype(jnp.float32) - ref)))
  slack = float(jnp.max(jnp.abs(emu - ref)))
  assert np.isfinite(err) and err <= 2 * slack + FLOOR, (err, slack)
  return o


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal,shape,per_head", [
    (True, (1, 200, 333, 8, 2, 128), True),       # GQA, odd lengths, per head
    (False, (2, 77, 77, 4, 1, 64), False),        # MQA, keys not a multiple of 16
])
def test_key_major_v_gives_the_same_forward(causal, shape, per_head, backend):
  """V from fp8.quantize_v (the Hopper FP8 forward's own layout: no
  transpose before the kernel; the portable forward gets V back): within
  the FP8 bound of the reference, and the same O, bit for bit, as V from
  fp8.quantize."""
  got = check_fp8_forward("float8_e4m3fn", causal, shape, per_head, backend,
                          key_major=True)
  want = check_fp8_forward("float8_e4m3fn", causal, shape, per_head, backend)
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                np.asarray(want, np.float32))


@pytest.mark.parametrize("causal,shape,per_head", [
    (False, (1, 128, 128, 4, 4, 256), False),
    (True, (1, 200, 333, 4, 2, 256), True),       # GQA, odd lengths, per head
])
def test_hopper_fp8_forward_at_d256(causal, shape, per_head):
  """The Hopper FP8 forward at d 256 (64-row K/V tiles: 160 KiB of shared
  memory), with V as given and key-major: within the FP8 bound of the
  reference, the same O either way; lowered for CUDA at 4k keys."""
  got = check_fp8_forward("float8_e4m3fn", causal, shape, per_head, "mosaic",
                          key_major=True)
  want = check_fp8_forward("float8_e4m3fn", causal, shape, per_head, "mosaic")
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                np.asarray(want, np.float32))
  assert "mosaic_gpu" in lowered_fp8_forward(causal,
                                             (1, 4096, 4096, 8, 8, 256))


def test_quantize_v_layout():
  """quantize_v: data [batch, kv_heads, d, seq rounded up to 16], zero keys
  after seq, keys in the kernel's P order; its V back is quantize's V, bit
  for bit, also through jit (a pytree, seq_kv static)."""
  from pallas_kernels import common
  v = jax.random.normal(jax.random.key(4), (2, 77, 3, 64), jnp.bfloat16)
  vt, vd = fp8.quantize_v(v, per_head=True)
  v8, want_vd = fp8.quantize(v, per_head=True)
  assert vt.data.shape == (2, 3, 64, 80) and vt.shape == v.shape
  assert vt.dtype == jnp.float8_e4m3fn and vt.seq_kv == 77
  np.testing.assert_array_equal(vd, want_vd)
  keys = np.asarray(common.fp8_pv_key_order(
      vt.data.astype(jnp.float32), axis=3, inverse=True))
  np.testing.assert_array_equal(keys[..., 77:], 0.0)
  np.testing.assert_array_equal(
      keys[..., :77], np.asarray(jnp.transpose(v8, (0, 2, 3, 1)), np.float32))
  back = jax.jit(lambda x: x.to_bshd())(vt)
  np.testing.assert_array_equal(np.asarray(back, np.float32),
                                np.asarray(v8, np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_forward_is_the_prequantised_forward(backend):
  """fp8=True quantises Q, V and K centred on its mean over the sequence
  (fp8.center_keys) with power-of-2 scales (exact in bf16 for its backward):
  the same O as the pre-quantised forward on those values, bit for bit, and
  its L plus the centring's shift."""
  q, k, v = _inputs(jax.random.key(0), 1, 130, 130, 4, 2, 64)
  k = shared_key_direction(k, 4.0)
  k_centred, k_mean = fp8.center_keys(k)
  (q8, qd), (k8, kd), (v8, vd) = (fp8.quantize(x, power_of_2=True)
                                  for x in (q, k_centred, v))
  want, want_lse = flashjax.attention(
      q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd, causal=True,
      return_lse=True, backend=backend)
  got, lse = flashjax.attention(q, k, v, causal=True, fp8=True,
                                return_lse=True, backend=backend)
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                np.asarray(want, np.float32))
  np.testing.assert_allclose(
      lse, want_lse + fp8.logit_shift(q, k_mean, 64 ** -0.5), rtol=1e-6)


def test_center_keys_keeps_attention_and_shifts_the_logsumexp():
  """Every logit of a row moves by scale · q·k̄: O is unchanged and L moves by
  exactly the returned shift (float32 reference, GQA, causal)."""
  q, k, v = (x.astype(jnp.float32) for x in
             _inputs(jax.random.key(4), 2, 40, 56, 4, 2, 32))
  k = shared_key_direction(k, 4.0)
  k_centred, k_mean = fp8.center_keys(k)
  shift = fp8.logit_shift(q, k_mean, 0.3)
  with jax.default_matmul_precision("highest"):
    o, lse = flashjax.attention(q, k, v, causal=True, scale=0.3,
                                return_lse=True, backend="reference")
    o_c, lse_c = flashjax.attention(q, k_centred, v, causal=True, scale=0.3,
                                    return_lse=True, backend="reference")
  assert float(jnp.max(jnp.abs(jnp.mean(k_centred, axis=1)))) < 1e-5
  np.testing.assert_allclose(o_c, o, atol=2e-5)
  np.testing.assert_allclose(lse_c + shift, lse, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_gradients_are_taken_at_the_quantised_values(backend):
  """fp8=True: FP8 forward, bf16 backward on the values the forward multiplied
  (Q, centred K and V rounded to e4m3 under power-of-2 scales, exact in
  bf16), so its recomputed P = exp(S - L) matches the forward's L. The
  gradients must then be those of float32 attention at the quantised
  inputs (K's mean added back), to within the bf16 backward's rounding plus
  P's FP8 rounding, which enters only through O in D = rowsum(dO ∘ O):
  measured 1.1% at logits of standard deviation 6, where a backward on the
  unquantised inputs is 22-30% off (benchmarks/fp8_gradients.py). The keys
  share a direction: without the centring, dS's rows (which that D keeps
  from summing to 0) times it put dQ 8-9% off
  (results/fp8-gradients-keybias4-cpu.md)."""
  q, k, v = _inputs(jax.random.key(1), 1, 256, 256, 4, 2, 64)
  q = (q * 6).astype(q.dtype)                        # peaked softmax rows
  k = shared_key_direction(k, 4.0)
  do = jax.random.normal(jax.random.key(2), q.shape, jnp.float32)
  rel = lambda a, b: float(jnp.linalg.norm(a.astype(jnp.float32) - b)
                           / jnp.linalg.norm(b))
  quantised = policy_inputs(q, k, v)
  with jax.default_matmul_precision("highest"):
    _, ref_vjp = jax.vjp(lambda *x: flashjax.attention(
        *x, causal=True, backend="reference"), *quantised)
    ref_grads = ref_vjp(do)
  _, vjp = jax.vjp(lambda *x: flashjax.attention(*x, causal=True, fp8=True,
                                                 backend=backend), q, k, v)
  for g, r in zip(vjp(do.astype(q.dtype)), ref_grads):
    assert g.dtype == jnp.bfloat16
    assert rel(g, r) < 0.03, rel(g, r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_with_16_bit_logits(backend):
  """fp8=True, fp8_qk=False: S = Q Kᵀ from the bf16 Q and (centred) K, only
  P and V in FP8. O matches the float32 emulation of that math (P rounded,
  V quantised; the pass rule of the FP8 inputs' test), and its error against
  float32 attention at the unquantised inputs is the P/V part alone: at
  logit std 6 it stays near 3% where the full policy's is near 10%
  (benchmarks/fp8_gradients.py, "FP8 P, V only" and "FP8 all"). The
  gradients are float32 attention's at (Q, K, quantised V)."""
  q, k, v = _inputs(jax.random.key(4), 1, 128, 128, 2, 1, 64)
  q = (q * 6).astype(q.dtype)
  do = jax.random.normal(jax.random.key(5), q.shape, jnp.float32)
  rel = lambda a, b: float(jnp.linalg.norm(a.astype(jnp.float32) - b)
                           / jnp.linalg.norm(b))
  f32 = lambda x: x.astype(jnp.float32)
  inputs_seen = policy_inputs(q, k, v, fp8_qk=False)
  ref = emulate(*inputs_seen, causal=True, fmt="float8_e4m3fn",
                p_rounding=False)
  emu = emulate(*inputs_seen, causal=True, fmt="float8_e4m3fn")
  o, vjp = jax.vjp(lambda *x: flashjax.attention(
      *x, causal=True, fp8=True, fp8_qk=False, backend=backend), q, k, v)
  err = float(jnp.max(jnp.abs(f32(o) - ref)))
  slack = float(jnp.max(jnp.abs(emu - ref)))
  assert err <= 2 * slack + FLOOR, (err, slack)
  with jax.default_matmul_precision("highest"):
    o_true = flashjax.attention(*map(f32, (q, k, v)), causal=True,
                                backend="reference")
    _, ref_vjp = jax.vjp(lambda *x: flashjax.attention(
        *x, causal=True, backend="reference"), *inputs_seen)
  assert rel(o, o_true) < 0.05, rel(o, o_true)
  full = flashjax.attention(q, k, v, causal=True, fp8=True, backend=backend)
  assert rel(full, o_true) > 2 * rel(o, o_true), (rel(full, o_true),
                                                  rel(o, o_true))
  for g, r in zip(vjp(do.astype(q.dtype)), ref_vjp(do)):
    assert g.dtype == jnp.bfloat16 and rel(g, r) < 0.03, rel(g, r)


def test_pv_key_order_keeps_p_v():
  """The Hopper FP8 forward reads P's accumulator registers as the 8-bit
  operand layout, which permutes its keys within each 16 (key 16t + 8h + 2q
  + e at position 16t + 4q + 2h + e); V's keys in the same order keep P V."""
  from pallas_kernels import common
  keys = np.arange(64)
  order = np.asarray(common.fp8_pv_key_order(keys, axis=0))
  t, q, h, e = np.meshgrid(np.arange(4), np.arange(4), np.arange(2),
                           np.arange(2), indexing="ij")
  np.testing.assert_array_equal(order[16 * t + 4 * q + 2 * h + e],
                                16 * t + 8 * h + 2 * q + e)
  p, v = jax.random.normal(jax.random.key(0), (2, 64, 64))
  np.testing.assert_allclose(
      common.fp8_pv_key_order(p, axis=1) @ common.fp8_pv_key_order(v, axis=0),
      p @ v, rtol=1e-5, atol=1e-5)


def test_power_of_2_descales_are_exact_in_bf16():
  """Power-of-2 descales: amax lands in e4m3's top binade, and x8 · descale
  needs no rounding in bfloat16 (what the policy's backward relies on)."""
  x = jax.random.normal(jax.random.key(3), (1, 64, 2, 64)) * 37.0
  x8, descale = fp8.quantize(x, power_of_2=True)
  assert float(jnp.log2(descale)) == int(jnp.log2(descale))
  assert 448 / 2 < float(jnp.max(jnp.abs(x8.astype(jnp.float32)))) <= 448
  exact = fp8.dequantize(x8, descale)
  np.testing.assert_array_equal(np.asarray(exact.astype(jnp.bfloat16),
                                           np.float32), np.asarray(exact))


@pytest.mark.skipif(jax.default_backend() == "gpu",
                    reason="the race detector is part of the CPU interpreter")
@pytest.mark.parametrize("persistent,overlap", [(False, False), (True, False),
                                                (True, True)])
def test_hopper_fp8_forward_has_no_races(persistent, overlap):
  """The Hopper FP8 forward in Mosaic GPU's interpreter with its race
  detector: more K/V tiles than pipeline stages, GQA, causal with packed
  segment ids, per-head descales, a persistent grid, and the intra-warpgroup
  overlap (P kept in shared memory from one step to the next); it must agree with
  the portable FP8 kernel (the same math and, at 128-row K/V tiles, the same
  P rounding: in the interpreter they agree to the bit; 1e-3 is far below
  FP8's rounding, ~6e-2 here)."""
  import dataclasses
  from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call
  q, k, v = _inputs(jax.random.key(9), 1, 333, 333, 4, 2, 128)
  (q8, qd), (k8, kd), (v8, vd) = (fp8.quantize(x, per_head=True)
                                  for x in (q, k, v))
  seg = jnp.repeat(jnp.arange(3, dtype=jnp.int32), 111)[None]
  config = flashjax.default_config(128, causal=True, fp8=True)
  config = dataclasses.replace(config, mosaic=dataclasses.replace(
      config.mosaic, block_kv=128, persistent=persistent,
      intra_wg_overlap=overlap))
  run = lambda backend: flashjax.attention(
      q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd, causal=True,
      q_segment_ids=seg, backend=backend, config=config).astype(jnp.float32)
  interpret_pallas_call.reset_gpu_interpret_mode_state()
  hopper = run("mosaic")
  assert not interpret_pallas_call.get_races().races_found
  np.testing.assert_allclose(hopper, run("triton"), atol=1e-3, rtol=0)


@pytest.mark.skipif(jax.default_backend() != "gpu",
                    reason="compiled only (the interpreter's overlap, P through "
                    "shared memory, runs in test_hopper_fp8_forward_has_no_races)")
@pytest.mark.parametrize("causal", [False, True])
def test_hopper_fp8_overlap_compiled(causal):
  """The Hopper FP8 forward with the intra-warpgroup overlap compiled (P_j
  computed while P_{j-1} V_{j-1} runs, P an FP8 register operand; off by
  default, slower), one tile a CTA and persistent, at the default K/V tile
  (256 rows non-causal, 128 causal): within the FP8 bound of the reference
  (GQA, odd lengths, per-head scales)."""
  import dataclasses
  for persistent in (False, True):
    config = flashjax.default_config(128, causal=causal, fp8=True)
    config = dataclasses.replace(config, mosaic=dataclasses.replace(
        config.mosaic, persistent=persistent, intra_wg_overlap=True,
        stream_k=False))
    check_fp8_forward("float8_e4m3fn", causal, (1, 200, 333, 8, 2, 128), True,
                      "mosaic", config=config)


@pytest.mark.parametrize("causal", [False, True])
def test_hopper_fp8_owned_registers(causal):
  """The Hopper FP8 forward with Q in registers as S = Q Kᵀ's 8-bit register
  operand (``MosaicBlocks(owned_registers=True)``, off by default; compiled
  only, the interpreter runs the default's SS form). On the CPU lowered for
  CUDA at 4k; on a GPU, with and without Stream-K's cut tiles (whose parts
  each load Q at their first step), within the FP8 bound of the reference
  (GQA, odd lengths, per-head scales) and at 4k (256-key tiles, causal on
  the paired grid)."""
  import dataclasses

  def config_for(seq_kv, stream_k=True):
    config = flashjax.default_config(128, causal=causal, fp8=True,
                                     seq_kv=seq_kv)
    return dataclasses.replace(config, mosaic=dataclasses.replace(
        config.mosaic, owned_registers=True, stream_k=stream_k))
  if jax.default_backend() != "gpu":
    text = lowered_fp8_forward(causal, (1, 4096, 4096, 8, 2, 128),
                               config_for(4096))
    assert text.count("custom_call @mosaic_gpu") == 1
    return
  for stream_k in (False, True):
    for shape in ((1, 200, 333, 8, 2, 128), (1, 4096, 4096, 8, 2, 128)):
      check_fp8_forward("float8_e4m3fn", causal, shape, True, "mosaic",
                        config=config_for(shape[2], stream_k))


@pytest.mark.parametrize("causal", [False, True])
def test_hopper_fp8_shared_full(causal):
  """The Hopper FP8 forward with K's and V's tiles on one barrier a stage
  (``MosaicBlocks(shared_full=True)``, off by default), within the FP8
  bound of the reference: GQA, odd lengths, per-head scales, V key-major;
  in the interpreter (no race found, and lowered for CUDA) or compiled."""
  import dataclasses
  from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call
  config = flashjax.default_config(128, causal=causal, fp8=True, seq_kv=333)
  config = dataclasses.replace(config, mosaic=dataclasses.replace(
      config.mosaic, shared_full=True))
  interpreted = jax.default_backend() != "gpu"
  if interpreted:
    interpret_pallas_call.reset_gpu_interpret_mode_state()
  check_fp8_forward("float8_e4m3fn", causal, (1, 200, 333, 8, 2, 128), True,
                    "mosaic", config=config, key_major=True)
  if interpreted:
    assert not interpret_pallas_call.get_races().races_found
    text = lowered_fp8_forward(causal, (1, 200, 333, 8, 2, 128), config,
                               key_major=True)
    assert text.count("custom_call @mosaic_gpu") == 1


def test_quantize_round_trip_and_scales():
  x = jax.random.normal(jax.random.key(3), (2, 64, 4, 32)) * jnp.array(
      [1.0, 10.0, 0.1, 0.0])[None, None, :, None]
  for fmt, mantissa_bits in (("float8_e4m3fn", 3), ("float8_e5m2", 2)):
    x8, d = fp8.quantize(x, fmt, per_head=True)
    assert x8.dtype == jnp.dtype(fmt) and d.shape == (4,)
    np.testing.assert_allclose(d[:3] * float(jnp.finfo(fmt).max),
                               jnp.max(jnp.abs(x[:, :, :3]), axis=(0, 1, 3)),
                               rtol=1e-6)
    assert d[3] == 1.0                            # an all-zero head
    back = fp8.dequantize(x8, d)
    # round to nearest: half an ulp of relative error, above the subnormals
    tiny = float(jnp.finfo(fmt).smallest_normal) * d[None, None, :, None]
    bound = 2.0 ** -(mantissa_bits + 1) * jnp.abs(x) + tiny
    assert bool(jnp.all(jnp.abs(back - x) <= bound))


@jax.default_matmul_precision("highest")    # no TF32 on a GPU
def test_rotation_is_orthogonal_and_keeps_attention():
  for d in (64, 96):
    r = fp8.random_rotation(d, jax.random.key(d))
    np.testing.assert_allclose(r @ r.T, np.eye(d), atol=1e-5)
  q, k, v = _inputs(jax.random.key(4), 1, 100, 100, 2, 2, 64, jnp.float32)
  qr, kr = fp8.rotate(q, k, fp8.random_rotation(64, jax.random.key(5)))
  np.testing.assert_allclose(
      flashjax.attention(qr, kr, v, backend="reference"),
      flashjax.attention(q, k, v, backend="reference"), atol=2e-5)


def test_rotation_cuts_fp8_error_on_outliers():
  """FlashAttention 3's incoherent processing: with a few large outliers in
  Q and K, rotating before quantising lowers the FP8 output's error."""
  q, k, v = _inputs(jax.random.key(6), 1, 256, 256, 4, 4, 128, jnp.float32,
                    outliers=True)
  ref = flashjax.attention(q, k, v, backend="reference")
  rmse = lambda o: float(jnp.sqrt(jnp.mean((o.astype(jnp.float32) - ref) ** 2)))

  def run(q, k):
    (q8, qd), (k8, kd), (v8, vd) = (fp8.quantize(x) for x in (q, k, v))
    return flashjax.attention(q8, k8, v8, q_descale=qd, k_descale=kd,
                              v_descale=vd)
  plain = rmse(run(q, k))
  rotated = rmse(run(*fp8.rotate(q, k, fp8.random_rotation(
      128, jax.random.key(7)))))
  assert rotated < plain, (rotated, plain)


# ------------------------------------------------------------------ bad input

Q8 = jax.ShapeDtypeStruct((1, 64, 4, 64), jnp.float8_e4m3fn)
KV8 = jax.ShapeDtypeStruct((1, 64, 2, 64), jnp.float8_e4m3fn)
ONE = jnp.float32(1.0)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(q_descale=ONE, k_descale=ONE), ValueError,
     "v_descale is required with FP8 inputs"),
    (dict(q_descale=ONE, k_descale=ONE, v_descale=jnp.float32(0.0)),
     ValueError, "v_descale must be positive and finite"),
    (dict(q_descale=ONE, k_descale=jnp.ones((4,)), v_descale=ONE), ValueError,
     r"k_descale must be a scalar or have shape \(2,\)"),
    (dict(q_descale=ONE, k_descale=ONE, v_descale=ONE, out_dtype=jnp.float32),
     TypeError, "out_dtype for FP8 inputs must be one of"),
])
def test_bad_fp8_input(kwargs, error, match):
  q = jnp.zeros(Q8.shape, Q8.dtype)
  kv = jnp.zeros(KV8.shape, KV8.dtype)
  with pytest.raises(error, match=match):
    flashjax.attention(q, kv, kv, **kwargs)


def test_bad_key_major_v_is_refused():
  q = jnp.zeros(Q8.shape, Q8.dtype)
  kv = jnp.zeros(KV8.shape, KV8.dtype)
  vt = fp8.KeyMajorV.of(kv)
  with pytest.raises(ValueError, match=r"v, a flashjax.fp8.KeyMajorV with "
                     r"seq_kv 64, must hold data .* got shape \(1, 2, 64, 48\)"):
    flashjax.attention(q, kv, fp8.KeyMajorV(vt.data[..., :48], 64),
                       q_descale=ONE, k_descale=ONE, v_descale=ONE)
  with pytest.raises(TypeError, match="must hold FP8 data"):
    flashjax.attention(q, kv, fp8.KeyMajorV.of(kv.astype(jnp.bfloat16)),
                       q_descale=ONE, k_descale=ONE, v_descale=ONE)
  with pytest.raises(ValueError, match="needs seq_kv .* a positive int, got 0"):
    flashjax.attention(q, kv, fp8.KeyMajorV(vt.data, 0), q_descale=ONE,
                       k_descale=ONE, v_descale=ONE)
  with pytest.raises(ValueError, match="k and v must have the same shape"):
    flashjax.attention(q, kv, fp8.KeyMajorV.of(kv[:, :32]), q_descale=ONE,
                       k_descale=ONE, v_descale=ONE)


def test_mixed_fp8_formats_are_refused():
  q = jnp.zeros(Q8.shape, jnp.float8_e4m3fn)
  kv = jnp.zeros(KV8.shape, jnp.float8_e5m2)
  with pytest.raises(TypeError, match="q, k and v must have the same dtype"):
    flashjax.attention(q, kv, kv, q_descale=ONE, k_descale=ONE, v_descale=ONE)


def test_descales_without_fp8_and_fp8_policy_on_float32_are_refused():
  x = jnp.zeros((1, 64, 2, 64), jnp.bfloat16)
  with pytest.raises(TypeError, match="q_descale given, but q/k/v are not FP8"):
    flashjax.attention(x, x, x, q_descale=ONE)
  with pytest.raises(TypeError, match="quantises bfloat16 or float16 inputs"):
    flashjax.attention(x.astype(jnp.float32), x.astype(jnp.float32),
                       x.astype(jnp.float32), fp8=True)
  with pytest.raises(ValueError, match="fp8 must be True, False, or one of"):
    flashjax.attention(x, x, x, fp8="int8")


def test_fp8_qk_false_outside_the_policy_is_refused():
  x = jnp.zeros((1, 64, 2, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match=r"fp8_qk=False keeps Q Kᵀ in 16 bits "
                     r"under the fp8 policy .* got fp8=None with bfloat16"):
    flashjax.attention(x, x, x, fp8_qk=False)
  q8 = jnp.zeros(Q8.shape, Q8.dtype)
  kv8 = jnp.zeros(KV8.shape, KV8.dtype)
  with pytest.raises(ValueError, match="with FP8 inputs"):
    flashjax.attention(q8, kv8, kv8, q_descale=ONE, k_descale=ONE,
                       v_descale=ONE, fp8_qk=False)
  with pytest.raises(TypeError, match="fp8_qk must be True or False, got 0"):
    flashjax.attention(x, x, x, fp8=True, fp8_qk=0)


def test_prequantised_inputs_are_forward_only():
  q8, qd = fp8.quantize(jnp.ones((1, 64, 2, 64), jnp.bfloat16))
  with pytest.raises(NotImplementedError, match="forward only"):
    jax.grad(lambda q: jnp.sum(flashjax.attention(
        q, q8, q8, q_descale=qd, k_descale=qd, v_descale=qd).astype(
            jnp.float32)))(q8)


def test_fp8_needs_fp8_tensor_cores(monkeypatch):
  class Ampere:
    compute_capability = "8.0"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", lambda *a: [Ampere()])
  x = jax.ShapeDtypeStruct((1, 64, 2, 64), jnp.bfloat16)
  with pytest.raises(TypeError, match="needs a GPU with FP8 tensor cores"):
    flashjax.explain(x, x, x, fp8=True)


def test_auto_picks_the_hopper_fp8_forward(monkeypatch):
  """On sm_90 backend="auto" runs FP8 on the Hopper kernel (it passes the FP8
  suite compiled: benchmarks/results/tests-mosaic-v3-h100.log);
  backend="triton" still asks for the portable one."""
  class Hopper:
    compute_capability = "9.0"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", lambda *a: [Hopper()])
  x = jax.ShapeDtypeStruct((1, 64, 2, 64), jnp.bfloat16)
  assert flashjax.explain(x, x, x, fp8=True).startswith("mosaic: ")
  assert flashjax.explain(x, x, x, fp8=True, backend="triton").startswith(
      "triton: ")


@pytest.mark.parametrize("backend,head_dim,causal", [
    ("mosaic", 128, False), ("mosaic", 64, True), ("triton", 128, True)])
def test_policy_with_16_bit_logits_lowers_for_cuda(backend, head_dim, causal):
  """fp8_qk=False, compiled-mode lowering against an abstract H100: on the
  Hopper forward a 16-bit S = Q Kᵀ wgmma beside an FP8 P V one (P's shared
  tile in FP8, V K-major), within the shared memory; on the portable one a
  16-bit and an FP8 dot."""
  def f(q, k, v):
    return flashjax.attention(q, k, v, causal=causal, fp8=True, fp8_qk=False,
                              backend=backend, interpret=False)
  kv = jax.ShapeDtypeStruct((1, 300, 2, head_dim), jnp.bfloat16)
  text = lower_for_h100(f, kv.update(shape=(1, 300, 4, head_dim)), kv,
                        kv).as_text()
  assert ("triton" if backend == "triton" else "mosaic_gpu") in text


@pytest.mark.parametrize("backend,head_dim,fmt,causal,overlap,key_major", [
    ("triton", 128, "float8_e4m3fn", True, False, False),
    ("mosaic", 128, "float8_e4m3fn", True, False, False),
    ("mosaic", 128, "float8_e4m3fn", False, False, False),  # 256-row K/V tiles
    ("mosaic", 64, "float8_e5m2", False, False, False),
    ("mosaic", 128, "float8_e4m3fn", True, True, False),
    ("mosaic", 128, "float8_e4m3fn", False, False, True),   # V from quantize_v
])
def test_fp8_forward_lowers_for_cuda(backend, head_dim, fmt, causal, overlap,
                                     key_major):
  """Compiled-mode lowering of both FP8 forwards with their default tilings
  against an abstract H100 (for Mosaic GPU: 8-bit wgmma operand layouts, V's
  K-major tile, SMEM), with the intra-warpgroup overlap (P V in flight
  while the next P is computed), and with V given key-major (no transpose
  before the kernel)."""
  import dataclasses
  config = None
  if overlap:
    config = flashjax.default_config(head_dim, causal=causal, fp8=True)
    config = dataclasses.replace(config, mosaic=dataclasses.replace(
        config.mosaic, intra_wg_overlap=True))

  text = lowered_fp8_forward(causal, (1, 300, 300, 4, 2, head_dim), config,
                             fmt, backend, key_major)
  assert ("triton" if backend == "triton" else "mosaic_gpu") in text
  # XLA's transpose of V before the kernel is there unless V came key-major
  assert ("stablehlo.transpose" in text) != key_major or backend == "triton"


def test_fp8_forward_takes_deeper_pipelines():
  """FP8 tiles are half the bytes: 5 stages of 128-row K/V tiles at d 128
  fit (the 16-bit forward takes 3), by the estimate and by Mosaic GPU's own
  shared-memory check when lowered for CUDA."""
  import dataclasses
  blocks = flashjax.MosaicBlocks(block_kv=128, stages=5)
  assert blocks.smem_bytes(128, 2, fp8=True) <= flashjax.config.SMEM_BYTES
  assert blocks.smem_bytes(128, 2) > flashjax.config.SMEM_BYTES
  config = dataclasses.replace(flashjax.default_config(128), mosaic=blocks)
  text = lowered_fp8_forward(True, (1, 1024, 1024, 4, 2, 128), config)
  assert "mosaic_gpu" in text


def test_accuracy_benchmark_writes_its_table(tmp_path):
  from benchmarks import fp8_accuracy
  fp8_accuracy.main(["--seq", "64", "--heads", "1", "--head-dim", "64",
                     "--causal", "false", "--out", str(tmp_path / "acc")])
  md = (tmp_path / "acc.md").read_text()
  assert "| normal | False |" in md and "| outliers | False |" in md
  assert "fp8_e4m3_rotated" in md and "error" not in md.split("|---")[1]


def test_traced_nonpositive_descale_gives_nan_not_garbage():
  """Under jit a descale is a tracer and cannot be checked at trace time: a
  non-positive one turns the output into NaN."""
  q8, qd = fp8.quantize(jax.random.normal(jax.random.key(8), (1, 64, 2, 64)))
  f = jax.jit(lambda d: flashjax.attention(q8, q8, q8, q_descale=qd,
                                           k_descale=qd, v_descale=d))
  assert bool(jnp.all(jnp.isfinite(f(qd).astype(jnp.float32))))
  for bad in (0.0, -1.0):
    assert bool(jnp.all(jnp.isnan(f(jnp.float32(bad)).astype(jnp.float32))))
