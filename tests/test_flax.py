"""flashjax.flax: stock Flax attention modules on the flash kernel.

Each parity test runs a stock linen / nnx module twice from the same parameters,
once with Flax's own ``dot_product_attention`` and once with flashjax's
``attention_fn``, and compares outputs and parameter gradients in float32
(tolerance 1e-5). Padded query rows are excluded: there Flax averages all values
and flashjax returns 0 (both meaningless, see :mod:`flashjax.flax`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flashjax
from flashjax.flax import (FlashMultiHeadAttention, NnxFlashMultiHeadAttention,
                           attention_fn, make_attention_fn)

BATCH, SEQ, FEATURES, HEADS = 2, 24, 32, 4
TOL = 1e-5


def _inputs():
  x = jax.random.normal(jax.random.key(0), (BATCH, SEQ, FEATURES), jnp.float32)
  lengths = jnp.array([SEQ, 17])
  valid = jnp.arange(SEQ)[None, :] < lengths[:, None]     # [batch, seq]
  return x, valid


def _masks(valid):
  causal = nn.make_causal_mask(valid)
  padding = nn.make_attention_mask(valid, valid)
  return {"causal": causal, "padding": padding,
          "causal+padding": nn.combine_masks(causal, padding)}


DECLARATIONS = {"causal": dict(causal=True), "padding": dict(padding=True),
                "causal+padding": dict(causal=True, padding=True)}


def _assert_close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=TOL, atol=TOL)


def _loss(out, valid):
  """A nontrivial scalar of the valid rows only."""
  weights = jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)
  return jnp.sum(out * weights * valid[..., None])


@pytest.mark.parametrize("kind", list(DECLARATIONS))
def test_linen_mha_matches_flax(kind):
  x, valid = _inputs()
  mask = _masks(valid)[kind]
  stock = nn.MultiHeadDotProductAttention(num_heads=HEADS)
  flash = nn.MultiHeadDotProductAttention(
      num_heads=HEADS, attention_fn=make_attention_fn(**DECLARATIONS[kind]))
  params = stock.init(jax.random.key(1), x, mask=mask)

  def value_and_grad(module):
    loss = lambda p: _loss(module.apply(p, x, mask=mask), valid)
    return jax.jit(jax.value_and_grad(loss))(params)

  (loss_ref, grads_ref), (loss_flash, grads_flash) = map(
      value_and_grad, (stock, flash))
  out_ref, out_flash = (m.apply(params, x, mask=mask) for m in (stock, flash))
  _assert_close(out_flash * valid[..., None], out_ref * valid[..., None])
  _assert_close(loss_flash, loss_ref)
  jax.tree.map(_assert_close, grads_flash, grads_ref)


@pytest.mark.parametrize("use_mask", [False, True], ids=["is_causal", "mask"])
def test_nnx_mha_gqa_matches_flax(use_mask):
  x, valid = _inputs()
  make = lambda fn: nnx.MultiHeadAttention(
      num_heads=HEADS, in_features=FEATURES, num_kv_heads=2, decode=False,
      attention_fn=fn, rngs=nnx.Rngs(0))
  stock, flash = make(nnx.dot_product_attention), make(
      make_attention_fn(causal=True, padding=True) if use_mask else attention_fn)
  if use_mask:
    call = dict(mask=_masks(valid)["causal+padding"])
  else:
    call = dict(is_causal=True)
    valid = jnp.ones_like(valid)

  def value_and_grad(model):
    return nnx.value_and_grad(lambda m: _loss(m(x, **call), valid))(model)

  (loss_ref, grads_ref), (loss_flash, grads_flash) = map(
      value_and_grad, (stock, flash))
  _assert_close(loss_flash, loss_ref)
  jax.tree.map(_assert_close, nnx.to_pure_dict(grads_flash),
               nnx.to_pure_dict(grads_ref))


def test_undeclared_mask_raises():
  x, valid = _inputs()
  module = nn.MultiHeadDotProductAttention(num_heads=HEADS,
                                           attention_fn=attention_fn)
  with pytest.raises(ValueError, match="not told what it is"):
    module.init(jax.random.key(0), x, mask=_masks(valid)["padding"])


def test_mask_other_than_declared_raises_eagerly_and_under_jit():
  x, valid = _inputs()
  padding = _masks(valid)["padding"]
  module = nn.MultiHeadDotProductAttention(
      num_heads=HEADS, attention_fn=make_attention_fn(causal=True))
  with pytest.raises(ValueError, match="not the declared structure"):
    module.init(jax.random.key(0), x, mask=padding)
  params = nn.MultiHeadDotProductAttention(num_heads=HEADS).init(
      jax.random.key(0), x)
  apply = jax.jit(lambda p, m: module.apply(p, x, mask=m))
  with pytest.raises(Exception, match="not the declared structure"):
    jax.block_until_ready(apply(params, padding))


def test_unsupported_arguments_raise():
  x, valid = _inputs()
  q = x.reshape(BATCH, SEQ, HEADS, FEATURES // HEADS)
  with pytest.raises(ValueError, match="bias"):
    attention_fn(q, q, q, bias=jnp.zeros((BATCH, HEADS, SEQ, SEQ)))
  with pytest.raises(ValueError, match="dropout"):
    attention_fn(q, q, q, dropout_rate=0.1, deterministic=False)
  module = nn.MultiHeadDotProductAttention(num_heads=HEADS, dropout_rate=0.1,
                                           attention_fn=attention_fn)
  with pytest.raises(ValueError, match="dropout"):
    module.init(jax.random.key(0), x, deterministic=False)
  module = nn.MultiHeadDotProductAttention(num_heads=HEADS,
                                           attention_fn=attention_fn)
  with pytest.raises(ValueError, match="sow_weights"):
    module.init(jax.random.key(0), x, sow_weights=True)


def test_flash_modules_linen_and_nnx_agree_with_dense():
  """Packed segments + causal + GQA: kernel vs the dense reference backend."""
  x, _ = _inputs()
  seg = jnp.array([[0] * 10 + [1] * 14, [0] * 24])
  kwargs = dict(num_heads=HEADS, num_kv_heads=2, causal=True)
  linen = FlashMultiHeadAttention(**kwargs)
  params = linen.init(jax.random.key(0), x, q_segment_ids=seg)
  assert params["params"]["key"]["kernel"].shape == (FEATURES, 2, 8)
  dense = FlashMultiHeadAttention(**kwargs, backend="reference")
  _assert_close(linen.apply(params, x, q_segment_ids=seg),
                dense.apply(params, x, q_segment_ids=seg))

  flash_nnx = NnxFlashMultiHeadAttention(in_features=FEATURES, **kwargs,
                                         rngs=nnx.Rngs(0))
  dense_nnx = NnxFlashMultiHeadAttention(in_features=FEATURES, **kwargs,
                                         backend="reference", rngs=nnx.Rngs(0))
  out = flash_nnx(x, q_segment_ids=seg)
  assert out.shape == x.shape
  _assert_close(out, dense_nnx(x, q_segment_ids=seg))


def test_fp8_reaches_the_kernel_from_flax():
  """fp8=True on the module and on make_attention_fn: an FP8 forward (close
  to, but not equal to, the bf16 one) with bf16 gradients."""
  x, _ = _inputs()
  x = x.astype(jnp.bfloat16)
  kwargs = dict(num_heads=HEADS, num_kv_heads=2, causal=True,
                dtype=jnp.bfloat16)
  bf16 = FlashMultiHeadAttention(**kwargs)
  params = bf16.init(jax.random.key(0), x)
  want = bf16.apply(params, x).astype(jnp.float32)
  got = FlashMultiHeadAttention(**kwargs, fp8=True).apply(params, x)
  rel = float(jnp.linalg.norm(got.astype(jnp.float32) - want)
              / jnp.linalg.norm(want))
  assert 0 < rel < 0.1, rel          # FP8 rounding (~2^-4), and it did run
  grads = jax.grad(lambda p: jnp.sum(FlashMultiHeadAttention(
      **kwargs, fp8=True).apply(p, x).astype(jnp.float32)))(params)
  assert all(bool(jnp.all(jnp.isfinite(g)))
             for g in jax.tree.leaves(grads))
  q = x.reshape(x.shape[0], x.shape[1], HEADS, -1)
  for fp8_qk in (True, False):     # False: P and V only in FP8
    fn = make_attention_fn(causal=True, fp8=True, fp8_qk=fp8_qk)
    np.testing.assert_array_equal(
        np.asarray(fn(q, q, q), np.float32),
        np.asarray(flashjax.attention(q, q, q, causal=True, fp8=True,
                                      fp8_qk=fp8_qk), np.float32))
  # the module's fp8_qk=False reaches the kernel: an FP8 forward of its own
  pv_only = FlashMultiHeadAttention(**kwargs, fp8=True,
                                    fp8_qk=False).apply(params, x)
  rel_pv = float(jnp.linalg.norm(pv_only.astype(jnp.float32) - want)
                 / jnp.linalg.norm(want))
  assert 0 < rel_pv < 0.1, rel_pv
  assert not np.array_equal(np.asarray(pv_only, np.float32),
                            np.asarray(got, np.float32))


def test_deterministic_grads_reach_the_kernel_from_flax(monkeypatch):
  """``deterministic_grads`` on make_attention_fn and on both modules is
  flashjax.attention's ``deterministic`` (Flax's call-time ``deterministic``
  is dropout's, and stays so)."""
  seen = []
  attention = flashjax.attention

  def recorded(*args, **kwargs):
    seen.append(kwargs["deterministic"])
    return attention(*args, **kwargs)
  monkeypatch.setattr(flashjax, "attention", recorded)
  x, _ = _inputs()
  q = x.reshape(BATCH, SEQ, HEADS, -1)
  kwargs = dict(num_heads=HEADS, causal=True)
  for flag in (False, True):
    make_attention_fn(causal=True, deterministic_grads=flag)(
        q, q, q, deterministic=not flag)
    linen = FlashMultiHeadAttention(**kwargs, deterministic_grads=flag)
    linen.apply(linen.init(jax.random.key(0), x), x)
    NnxFlashMultiHeadAttention(in_features=FEATURES, **kwargs,
                               deterministic_grads=flag, rngs=nnx.Rngs(0))(x)
  # init and apply both call it for the linen module
  assert seen == [False] * 4 + [True] * 4
