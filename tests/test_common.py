"""The shared tile math of pallas_kernels/common.py, on its own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import common


def test_exp2_fma_is_exp2_to_the_cubics_error():
  """2^x by the cubic: relative error <= 7.5e-5 over the normal range,
  exactly 0 below 2^-126 and at -inf (a masked entry), never NaN; also
  under jit, where XLA would fold the rounding trick's (x + c) - c to x
  without the barrier (and give errors of 41%)."""
  x = jnp.concatenate([jnp.linspace(-130.0, 0.0, 1_300_001, dtype=jnp.float32),
                       jnp.array([-jnp.inf, -126.0001, -1e-30, 0.0])])
  want = np.exp2(np.asarray(x, np.float64))
  normal = np.asarray(x) >= -125.0
  for f in (common.exp2_fma, jax.jit(common.exp2_fma)):
    got = np.asarray(f(x), np.float64)
    assert not np.isnan(got).any()
    rel = np.abs(got[normal] / want[normal] - 1.0)
    assert rel.max() <= 7.5e-5, rel.max()
    assert np.all(got[np.asarray(x) < -126.0] == 0.0)
    assert np.all((got >= 0.0) & (got <= 1.0))


def test_online_softmax_step_with_fma_columns():
  """P's last columns by the cubic: P, l and alpha within the cubic's error
  of the all-ex2 step; a row whose every entry is masked keeps P = 0, l = 0
  and m = -inf."""
  s = jax.random.normal(jax.random.key(0), (64, 128), jnp.float32) * 8.0
  s = s.at[3].set(-jnp.inf).at[5, 100:].set(-jnp.inf)
  m = jnp.full((64,), -jnp.inf).at[7].set(30.0)
  l = jnp.zeros((64,)).at[7].set(2.0)
  unit = 0.125
  want = common.online_softmax_step(s, m, l, unit)
  got = common.online_softmax_step(s, m, l, unit, fma_cols=64)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=7.5e-5, atol=0)
  p, m_new, l_new, _ = got
  assert np.all(np.asarray(p[3]) == 0) and l_new[3] == 0
  assert m_new[3] == -jnp.inf
  assert np.all(np.asarray(p[5, 100:]) == 0)
