"""Parity of flashjax.attention (forward, L and dQ/dK/dV) with the float32 reference.

On a CPU the kernels run in Pallas interpret mode; on a GPU the same tests run
the compiled kernels.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashjax
from harness import BACKENDS, Case, check_attention, check_backend, inputs

# The full grid is dtype × causal × (seq_q, seq_kv) × head_dim × heads × extras:
# 3·2·7·3·3·5 = 1890 cases. CI runs a fixed random sample of it plus the
# hand-picked edge cases below.
GRID = dict(
    dtype=["float32", "bfloat16", "float16"],
    causal=[False, True],
    seqs=[(1, 1), (17, 17), (128, 128), (200, 200), (333, 333), (113, 203),
          (239, 1)],
    head_dim=[32, 64, 128],
    heads=[(4, 4), (8, 2), (8, 1)],
    extra=[{}, {"segments": "padded"}, {"segments": "packed"},
           {"window": (32, 8)}, {"softcap": 20.0}],
)


def _grid_case(dtype, causal, seqs, head_dim, heads, extra):
  return Case(dtype=dtype, causal=causal, seq_q=seqs[0], seq_kv=seqs[1],
              head_dim=head_dim, num_q_heads=heads[0], num_kv_heads=heads[1],
              **extra)


_SAMPLE = random.Random(0).sample(list(itertools.product(*GRID.values())), 30)
SAMPLED = [_grid_case(*c) for c in _SAMPLE]

EDGE = [
    # head dims off the main grid (96 is padded to 128 inside) and 256.
    Case(dtype="bfloat16", head_dim=96, seq_q=200, seq_kv=200, causal=True),
    Case(dtype="float16", head_dim=256, seq_q=70, seq_kv=70, num_q_heads=2,
         num_kv_heads=1),
    # everything at once: GQA, causal, window, softcap, packed segments.
    Case(dtype="bfloat16", seq_q=333, seq_kv=333, num_q_heads=6,
         num_kv_heads=2, causal=True, window=(40, 0), softcap=30.0,
         segments="packed"),
    # cross-attention with seq_q > seq_kv, causal bottom-right: leading rows see
    # nothing (zeros, L = -inf).
    Case(dtype="float32", seq_q=203, seq_kv=113, causal=True, num_q_heads=8,
         num_kv_heads=2),
    # windows that reach right of the diagonal, and a one-sided window.
    Case(dtype="float32", seq_q=150, seq_kv=150, window=(0, 16)),
    Case(dtype="bfloat16", seq_q=150, seq_kv=300, window=(None, 3)),
    # d 128 non-causal in 16 bits: the Hopper backward's default there is the
    # fused one (dQ in the dK/dV kernel); GQA, odd lengths, padded rows.
    Case(dtype="bfloat16", batch=1, seq_q=333, seq_kv=270, head_dim=128,
         num_q_heads=8, num_kv_heads=2, segments="padded"),
    # several tiles in every direction, f32.
    Case(dtype="float32", batch=1, seq_q=600, seq_kv=520, head_dim=32,
         num_q_heads=2, num_kv_heads=1, causal=True, segments="padded"),
]


# Mosaic GPU's CPU interpreter takes 20-60 s a case on CI's two cores: there
# the Hopper kernels run the edge cases and every third sampled case (with
# tests/test_mosaic.py's race-detector cases), the sampled ones on their first
# batch element (a second adds CTAs like the first, the interpreter's time);
# compiled on a GPU, all of them whole.
# The d 128 padded edge case (83 s there) too: its fused backward runs in
# test_mosaic.py's test_fused_dq_backward.
_INTERPRETED_MOSAIC_SKIPS = {c.id for i, c in enumerate(SAMPLED) if i % 3} | {
    "bfloat16-b1-sq333-skv270-h8:2-d128-padded"}
# the sampled cases and the largest edge cases (the others keep batch 2)
_FIRST_BATCH_ONLY = {c.id for c in SAMPLED} | {
    "bfloat16-b2-sq333-skv333-h6:2-d64-causal-win40-0-cap30-packed",
    "bfloat16-b2-sq150-skv300-h4:4-d64-winNone-3",
    "bfloat16-b2-sq200-skv200-h4:4-d96-causal"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SAMPLED + EDGE, ids=lambda c: c.id)
def test_parity(case, backend):
  if backend == "mosaic" and jax.default_backend() != "gpu":
    if case.id in _INTERPRETED_MOSAIC_SKIPS:
      pytest.skip("CI time: every third sampled case (and not the d 128 "
                  "padded one) in the Mosaic interpreter; all of them compiled "
                  "on a GPU")
    if case.id in _FIRST_BATCH_ONLY:
      case = dataclasses.replace(case, batch=1)
  check_backend(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [0.3, -0.2])
def test_custom_scale(scale, backend):
  """A scale other than 1/sqrt(d): positive (the forward folds it into
  exp2's FMA, the row max taken on the raw Q Kᵀ) or negative (where that
  would be wrong: scaled first). In the Mosaic interpreter (CI time) only the
  negative one: a positive scale takes the default's path."""
  if backend == "mosaic" and scale > 0 and jax.default_backend() != "gpu":
    pytest.skip("CI time: a positive scale takes the default scale's path in "
                "the Mosaic interpreter; run compiled on a GPU")
  case = Case(dtype="bfloat16", batch=1, seq_q=200, seq_kv=260,
              num_q_heads=4, num_kv_heads=2, causal=True, head_dim=64)
  check_attention(case, backend=backend, scale=scale)


def test_grid_sample_covers_every_value():
  """The CI sample touches every value of every factor of the grid."""
  for i, (name, values) in enumerate(GRID.items()):
    assert all(v in [c[i] for c in _SAMPLE] for v in values), name


def test_lse_gradient():
  """Differentiating through the returned logsumexp (dL enters D)."""
  case = Case(seq_q=100, seq_kv=150, causal=True, num_q_heads=4,
              num_kv_heads=2)
  q, k, v, do, _, _ = inputs(case)
  w = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 100))

  def loss(fn):
    def f(q, k, v):
      o, lse = fn(q, k, v, causal=True, return_lse=True)
      return jnp.sum(o * do) + jnp.sum(jnp.where(jnp.isfinite(lse), lse * w, 0))
    return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

  ref = jax.tree.map(
      np.asarray,
      jax.jit(lambda: loss(lambda *a, **kw: flashjax.attention(
          *a, backend="reference", **kw)))())
  got = loss(flashjax.attention)
  for g, r in zip(got, ref):
    np.testing.assert_allclose(g, r, atol=2e-5 * max(1, np.abs(r).max()))


def test_fully_masked_rows_are_zero_not_nan():
  """Query segments absent from the keys: O = 0, L = -inf, zero grads, no NaN."""
  q, k, v, do, _, _ = inputs(Case(seq_q=40, seq_kv=72, dtype="bfloat16"))
  q_seg = jnp.asarray(np.r_[np.full(20, 1), np.full(20, 7)][None].repeat(2, 0))
  kv_seg = jnp.ones((2, 72), jnp.int32)

  def f(q, k, v):
    return flashjax.attention(q, k, v, q_segment_ids=q_seg,
                              kv_segment_ids=kv_seg, return_lse=True)
  (o, lse), vjp = jax.vjp(f, q, k, v)
  dq, dk, dv = vjp((do, jnp.zeros_like(lse)))
  assert not any(np.isnan(np.asarray(x, np.float32)).any()
                 for x in (o, lse, dq, dk, dv))
  np.testing.assert_array_equal(np.asarray(o[:, 20:], np.float32), 0)
  np.testing.assert_array_equal(np.asarray(dq[:, 20:], np.float32), 0)
  # a cotangent on L = -inf moves nothing: P = 0 there
  dq_l, _, _ = vjp((do, jnp.ones_like(lse)))
  np.testing.assert_array_equal(np.asarray(dq_l[:, 20:], np.float32), 0)
  assert np.all(np.isneginf(lse[:, :, 20:]))
  assert np.all(np.isfinite(lse[:, :, :20]))
  assert np.abs(np.asarray(dq[:, :20], np.float32)).max() > 0


def test_reruns_are_bitwise_equal():
  case = Case(dtype="bfloat16", seq_q=130, seq_kv=130, causal=True,
              num_q_heads=4, num_kv_heads=2)
  first, _ = check_attention(case)
  second, _ = check_attention(case)
  for name in first:
    np.testing.assert_array_equal(np.asarray(first[name], np.float32),
                                  np.asarray(second[name], np.float32))


def test_check_grads_float32():
  """Numerical vs analytic reverse-mode gradients through the custom_vjp."""
  q, k, v, _, q_seg, _ = inputs(Case(batch=1, seq_q=19, seq_kv=19,
                                     num_q_heads=2, num_kv_heads=1,
                                     head_dim=32, segments="packed"))
  def f(q, k, v):
    return flashjax.attention(q, k, v, causal=True, q_segment_ids=q_seg,
                              softcap=10.0)
  jax.test_util.check_grads(f, (q, k, v), order=1, modes=["rev"],
                            atol=1e-2, rtol=1e-2, eps=1e-3)


# derandomize: CI runs the same 5 examples every time (a random draw once
# found the case of test_known_margin_case below)
@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
    seq_q=st.integers(1, 150), seq_kv=st.integers(1, 150),
    kv_heads=st.sampled_from([1, 2]), group=st.sampled_from([1, 3]),
    head_dim=st.sampled_from([8, 40, 64]), causal=st.booleans(),
    window=st.one_of(st.none(), st.tuples(
        st.one_of(st.none(), st.integers(0, 64)),
        st.one_of(st.none(), st.integers(0, 64)))),
    softcap=st.one_of(st.none(), st.floats(1.0, 50.0)),
    segments=st.sampled_from([None, "padded", "packed"]),
    seed=st.integers(0, 2**16))
def test_property_random_shapes(dtype, seq_q, seq_kv, kv_heads, group,
                                head_dim, causal, window, softcap, segments,
                                seed):
  check_attention(Case(dtype=dtype, seq_q=seq_q, seq_kv=seq_kv,
                       num_q_heads=kv_heads * group, num_kv_heads=kv_heads,
                       head_dim=head_dim, causal=causal, window=window,
                       softcap=softcap, segments=segments), seed=seed)


@pytest.mark.parametrize("backend", ["triton", "mosaic"])
def test_known_margin_case(backend):
  """Found by the property test's random draw (eighth session); an xfail
  until the thirty-fourth (portable) and the thirty-ninth (Hopper). D =
  rowsum(dO ∘ O) from the bf16 O misses rowsum(P ∘ dP) of the backward's
  own P, so dS's rows do not sum to dL: bf16 dQ was 0.0035 off float32 at
  one element (rule 0.0034) and dK 0.0048 (rule 0.0029). The portable
  backward takes D + that excess in dK/dV (0.0006) and in dQ, as dQ -
  excess ⊗ P'K (0.00069; before the thirty-eighth session dS (K - k̄),
  0.0029; benchmarks/margin_case.py): it fails if either is dropped. The
  Hopper forward writes O's rounding residual r by default since the
  thirty-ninth session (``MosaicBlocks(o_residual)``), and its backward
  takes D from the unrounded O + r (dQ 0.00069, dK 0.00062; d 40 is padded
  to 64); without it the case fails (test_mosaic.
  test_consistent_delta_passes_the_margin_case checks that)."""
  check_attention(Case(dtype="bfloat16", seq_q=1, seq_kv=5, num_q_heads=1,
                       num_kv_heads=1, head_dim=40, segments="packed"),
                  seed=13, backend=backend)


@pytest.mark.parametrize("case,seed", [
    (Case(dtype="float16", batch=2, seq_q=100, seq_kv=6, num_q_heads=3,
          num_kv_heads=1, head_dim=40, causal=True, segments="packed"), 65007),
    (Case(dtype="bfloat16", batch=2, seq_q=221, seq_kv=6, num_q_heads=3,
          num_kv_heads=1, head_dim=64, causal=True, segments="packed"), 61349)],
    ids=["fp16-d40", "bf16-d64"])
def test_margin_cases_found_by_the_sweep(case, seed):
  """Found by benchmarks/parity_sweep.py (thirty-eighth session): rows that
  see one or two keys of their segment, where D = rowsum(dO ∘ O) from the
  rounded O misses the backward's own rowsum(P ∘ dP) by a few hundredths.
  The portable backward takes that excess out of dQ exactly (dQ - excess ⊗
  P'K): dQ 0.00041 and 0.00137 off float32, rules 0.00109 and 0.00749. Its
  earlier correction, dS (K - k̄) with k̄ the mean of all keys, stood in
  for the row's own P-weighted keys and missed the second (dQ 0.0084) as
  the Hopper defaults do (results/raw/parity-sweep-*-session38-cpu.log,
  margin-case-*-session38-cpu.log)."""
  check_attention(case, seed=seed, backend="triton")


class TestComposition:
  """The op works under jit, vmap, remat and scan; grad of grad says no."""

  case = Case(batch=1, seq_q=48, seq_kv=48, num_q_heads=2, num_kv_heads=1,
              head_dim=32)

  def _qkv(self):
    q, k, v, _, _, _ = inputs(self.case)
    return q, k, v

  def test_vmap(self):
    q, k, v = self._qkv()
    qs, ks, vs = (jnp.stack([x, 2 * x]) for x in (q, k, v))
    got = jax.vmap(lambda *a: flashjax.attention(*a, causal=True))(qs, ks, vs)
    for i in range(2):
      want = flashjax.attention(qs[i], ks[i], vs[i], causal=True,
                                backend="reference")
      np.testing.assert_allclose(got[i], want, atol=2e-5)

  def test_remat_and_scan_gradients(self):
    q, k, v = self._qkv()
    w = jax.random.normal(jax.random.PRNGKey(2), (3, 32, 32)) * 0.2

    def model(backend, w, q):
      @jax.checkpoint
      def layer(x, w_i):
        x = x + flashjax.attention(x @ w_i, k, v, causal=True, backend=backend)
        return x, None
      return jnp.sum(jax.lax.scan(layer, q, w)[0] ** 2)

    got = jax.jit(jax.grad(lambda w, q: model("auto", w, q),
                           argnums=(0, 1)))(w, q)
    want = jax.grad(lambda w, q: model("reference", w, q),
                    argnums=(0, 1))(w, q)
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, atol=1e-4 * max(1, np.abs(r).max()))

  def test_grad_of_grad_raises_clearly(self):
    q, k, v = self._qkv()
    def inner(q):
      return jnp.sum(jax.grad(lambda q: jnp.sum(
          flashjax.attention(q, k, v) ** 2))(q))
    with pytest.raises(NotImplementedError, match="first-order gradients"):
      jax.grad(inner)(q)

  def test_explain_names_the_kernel(self):
    q, k, v = self._qkv()
    assert flashjax.explain(q, k, v).startswith("triton: Pallas kernels")
    assert flashjax.explain(q, k, v, backend="reference").startswith(
        "reference:")


@pytest.mark.parametrize("capability,dtype,segments,want", [
    ("9.0", "bfloat16", False, "mosaic"),
    ("9.0", "float16", False, "mosaic"),
    ("9.0", "float32", False, "triton"),     # mosaic takes 16-bit only
    ("9.0", "bfloat16", True, "mosaic"),     # packed sequences too
    ("8.0", "bfloat16", False, "triton"),    # not Hopper
])
def test_auto_picks_the_hopper_kernel_on_sm90(monkeypatch, capability, dtype,
                                              segments, want):
  class FakeGpu:
    compute_capability = capability
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", lambda *a: [FakeGpu()])
  q = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.dtype(dtype))
  ids = jnp.zeros((1, 256), jnp.int32) if segments else None
  explained = flashjax.explain(q, q, q, q_segment_ids=ids)
  assert explained.startswith(f"{want}: "), explained
  assert "compiled" in explained
  # d 256: the Hopper forward only when asked for, until it runs compiled
  wide = jax.ShapeDtypeStruct((1, 256, 2, 256), jnp.dtype(dtype))
  assert flashjax.explain(wide, wide, wide).startswith("triton: ")
