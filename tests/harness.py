"""One harness for every backend: compare O, L, dQ, dK, dV with the f32 reference.

Pass rule (FlashAttention 3's): for each output X,
  max|X_impl - X_ref32| <= 2 · max|X_lowp - X_ref32| + FLOOR[dtype] · max(1, max|X_ref32|)
where X_lowp is the reference computed in the input dtype (matmuls in that dtype,
P rounded to it): a kernel may be at most twice as wrong as the dtype's own
rounding, plus a small floor for the order of float32 accumulation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import pytest

import flashjax
from flashjax import reference
from flashjax.checks import make_plan
from flashjax.config import MOSAIC_HEAD_DIMS, padded_head_dim

# Relative floors per dtype (times max(1, max|ref|)). float32 has no low-precision
# slack, so its floor is the whole tolerance: accumulation order only.
FLOOR = {"float32": 2e-5, "bfloat16": 2e-3, "float16": 5e-4}

# Kernel backends every parity case runs on.
BACKENDS = ("triton", "mosaic")


@dataclasses.dataclass(frozen=True)
class Case:
  dtype: str = "float32"
  batch: int = 2
  seq_q: int = 128
  seq_kv: int = 128
  num_q_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 64
  causal: bool = False
  window: tuple | None = None
  softcap: float | None = None
  segments: str | None = None    # None, "padded" or "packed"

  @property
  def id(self) -> str:
    parts = [self.dtype, f"b{self.batch}", f"sq{self.seq_q}", f"skv{self.seq_kv}",
             f"h{self.num_q_heads}:{self.num_kv_heads}", f"d{self.head_dim}"]
    parts += ["causal"] if self.causal else []
    parts += [f"win{self.window[0]}-{self.window[1]}"] if self.window else []
    parts += [f"cap{self.softcap:g}"] if self.softcap else []
    parts += [self.segments] if self.segments else []
    return "-".join(parts)

  def kwargs(self, q_seg=None, kv_seg=None) -> dict:
    return dict(causal=self.causal, window=self.window, softcap=self.softcap,
                q_segment_ids=q_seg, kv_segment_ids=kv_seg)


def segment_ids(kind: str | None, batch: int, seq: int, rng: np.random.Generator):
  """int32 ``[batch, seq]``: "padded" = 1 then 0-padding of a random length;
  "packed" = several back-to-back segments of random lengths."""
  if kind is None:
    return None
  ids = np.zeros((batch, seq), np.int32)
  for b in range(batch):
    if kind == "padded":
      ids[b, : rng.integers(1, seq + 1)] = 1
    else:
      cuts = np.sort(rng.choice(np.arange(1, seq), size=min(3, seq - 1),
                                replace=False)) if seq > 1 else []
      ids[b] = np.searchsorted(cuts, np.arange(seq), side="right") + 1
  return jnp.asarray(ids)


def inputs(case: Case, seed: int = 0):
  """Fresh random q, k, v, dO and segment ids for a case."""
  rng = np.random.default_rng(seed)
  dt = jnp.dtype(case.dtype)

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dt)

  q = normal(case.batch, case.seq_q, case.num_q_heads, case.head_dim)
  k = normal(case.batch, case.seq_kv, case.num_kv_heads, case.head_dim)
  v = normal(case.batch, case.seq_kv, case.num_kv_heads, case.head_dim)
  do = normal(case.batch, case.seq_q, case.num_q_heads, case.head_dim)
  if case.segments and case.seq_q == case.seq_kv:
    q_seg = kv_seg = segment_ids(case.segments, case.batch, case.seq_q, rng)
  else:
    q_seg = segment_ids(case.segments, case.batch, case.seq_q, rng)
    kv_seg = segment_ids(case.segments, case.batch, case.seq_kv, rng)
  return q, k, v, do, q_seg, kv_seg


def run(fn, q, k, v, do, kwargs):
  """O, L, dQ, dK, dV of ``fn(q, k, v, return_lse=True, **kwargs)`` under cotangent dO."""
  def f(q, k, v):
    return fn(q, k, v, return_lse=True, **kwargs)
  (o, lse), vjp = jax.vjp(f, q, k, v)
  dq, dk, dv = vjp((do, jnp.zeros_like(lse)))
  return dict(o=o, lse=lse, dq=dq, dk=dk, dv=dv)


def reference_outputs(q, k, v, do, kwargs, *, upcast: bool):
  """The same five outputs from the dense reference, in f32 or the input dtype."""
  def ref(q, k, v, *, return_lse, backend=None, config=None, **kw):
    plan, q_seg, kv_seg = make_plan(q, k, v, backend="reference", **kw)
    return reference.attend(plan, q, k, v, q_seg, kv_seg, upcast=upcast)
  with jax.default_matmul_precision("highest"):
    if upcast:
      q, k, v, do = (x.astype(jnp.float32) for x in (q, k, v, do))
    return jax.jit(lambda *a: run(ref, *a, kwargs))(q, k, v, do)


def max_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  finite = np.isfinite(ref)
  assert np.array_equal(finite, np.isfinite(x)), "inf/NaN pattern differs"
  assert np.array_equal(x[~finite], ref[~finite]), "non-finite values differ"
  return float(np.max(np.abs(x[finite] - ref[finite]), initial=0.0))


def check_attention(case: Case, fn=flashjax.attention, seed: int = 0, **extra):
  """Run ``fn`` on a case and assert the pass rule for O, L, dQ, dK, dV."""
  q, k, v, do, q_seg, kv_seg = inputs(case, seed)
  kwargs = {**case.kwargs(q_seg, kv_seg), **extra}
  got = jax.jit(lambda *a: run(fn, *a, kwargs))(q, k, v, do)
  ref32 = reference_outputs(q, k, v, do, kwargs, upcast=True)
  lowp = reference_outputs(q, k, v, do, kwargs, upcast=False)
  report = {}
  for name in ("o", "lse", "dq", "dk", "dv"):
    assert got[name].dtype == (jnp.float32 if name == "lse" else q.dtype), name
    assert not np.any(np.isnan(np.asarray(got[name], np.float32))), name
    err = max_err(got[name], ref32[name])
    slack = max_err(lowp[name], ref32[name])
    r = np.asarray(ref32[name], np.float64)
    scale = max(1.0, float(np.max(np.abs(r[np.isfinite(r)]), initial=0.0)))
    tol = 2 * slack + FLOOR[case.dtype] * scale
    report[name] = (err, tol)
    assert err <= tol, f"{case.id}: {name} max err {err:.3g} > tol {tol:.3g} ({report})"
  return got, report


def mosaic_supports(case: Case) -> bool:
  """What backend="mosaic" takes (flashjax.checks._mosaic_unsupported)."""
  return (case.dtype in ("bfloat16", "float16")
          and padded_head_dim(case.head_dim) in MOSAIC_HEAD_DIMS)


def check_backend(case: Case, backend: str):
  """check_attention on a backend; a case it does not support must raise."""
  if backend == "mosaic" and not mosaic_supports(case):
    with pytest.raises(NotImplementedError, match="backend='mosaic'"):
      check_attention(case, backend=backend)
  else:
    check_attention(case, backend=backend)
