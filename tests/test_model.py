"""models.transformer: flash vs dense, remat, KV-cache decode, numerics."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import transformer
from models.transformer import ModelConfig, Transformer

# float32 so that flash and dense differ only by the order of summation.
CONFIG = ModelConfig(max_seq_len=32, num_layers=2, d_model=32, num_heads=4,
                     num_kv_heads=2, dtype="float32")
SEQ = 24
TOL = 1e-5


@pytest.fixture(scope="module")
def params():
  return transformer.init_params(CONFIG, seed=0)


@pytest.fixture(scope="module")
def tokens():
  return jax.random.randint(jax.random.key(1), (2, SEQ + 1), 0, 256, jnp.int32)


def _value_and_grad(params, config, tokens):
  return jax.jit(jax.value_and_grad(transformer.loss_fn),
                 static_argnums=1)(params, config, tokens)


def test_shapes_and_dtypes(params, tokens):
  logits, cache = Transformer(CONFIG).apply({"params": params}, tokens[:, :-1])
  assert logits.shape == (2, SEQ, 256) and logits.dtype == jnp.float32
  assert cache is None
  assert params["block_0"]["attn"]["key"]["kernel"].shape == (32, 2, 8)  # GQA
  assert "unembed" not in params                                 # tied
  untied = dataclasses.replace(CONFIG, tie_embeddings=False, mlp="gelu")
  untied_params = transformer.init_params(untied)
  assert untied_params["unembed"]["kernel"].shape == (32, 256)
  assert untied_params["block_0"]["mlp"]["up"]["kernel"].shape == (32, 128)
  bf16 = dataclasses.replace(CONFIG, dtype="bfloat16")
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(
      transformer.init_params(bf16)))
  logits = Transformer(bf16).apply({"params": params}, tokens[:, :-1])[0]
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_flash_matches_dense_loss_and_grads(params, tokens):
  loss_f, grads_f = _value_and_grad(params, CONFIG, tokens)
  loss_d, grads_d = _value_and_grad(
      params, dataclasses.replace(CONFIG, attention="dense"), tokens)
  np.testing.assert_allclose(loss_f, loss_d, rtol=TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=TOL),
               grads_f, grads_d)


def test_remat_gives_the_same_loss_and_grads(params, tokens):
  loss, grads = _value_and_grad(params, CONFIG, tokens)
  loss_r, grads_r = _value_and_grad(
      params, dataclasses.replace(CONFIG, remat=True), tokens)
  np.testing.assert_allclose(loss_r, loss, rtol=TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=TOL,
                                                       atol=1e-6),
               grads_r, grads)


def test_kv_cache_decode_matches_full_forward(params, tokens):
  full = Transformer(CONFIG).apply({"params": params}, tokens[:, :SEQ])[0]
  prompt = 9
  logits, cache = transformer.prefill(params, CONFIG, tokens[:, :prompt], SEQ)
  np.testing.assert_allclose(logits, full[:, prompt - 1], atol=TOL)
  step = jax.jit(transformer.decode_step, static_argnums=1)
  for i in range(prompt, SEQ):
    logits, cache = step(params, CONFIG, tokens[:, i], cache)
    np.testing.assert_allclose(logits, full[:, i], atol=TOL)
  assert int(cache.length) == SEQ


def test_generate_greedy_is_argmax_of_full_forward(params, tokens):
  prompt = tokens[:, :5]
  new = transformer.generate(params, CONFIG, prompt, 4, rng=jax.random.key(0),
                             temperature=0.0)
  assert new.shape == (2, 4) and new.dtype == jnp.int32
  seq = jnp.concatenate([prompt, new], axis=1)
  full = Transformer(CONFIG).apply({"params": params}, seq)[0]
  np.testing.assert_array_equal(jnp.argmax(full[:, 4:-1], -1), new)
  with pytest.raises(ValueError, match="max_seq_len"):
    transformer.generate(params, CONFIG, prompt, 40, rng=jax.random.key(0))


def test_top_k_sampling_stays_in_top_k():
  logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]] * 64))
  draws = transformer.sample_token(jax.random.key(0), logits, 1.0, 2)
  assert set(np.asarray(draws).tolist()) == {2, 3}


def test_bad_config_and_cudnn_on_cpu_raise(params, tokens):
  with pytest.raises(ValueError, match="num_kv_heads"):
    dataclasses.replace(CONFIG, num_kv_heads=3)
  with pytest.raises(ValueError, match="attention"):
    dataclasses.replace(CONFIG, attention="fast")
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="cudnn"):
      transformer.loss_fn(params, dataclasses.replace(CONFIG, attention="cudnn"),
                          tokens)
