"""FP8 helpers: amax quantisation with descales, and the random rotation that
spreads outliers before quantising (FlashAttention 3's incoherent processing).

Layout as :func:`flashjax.attention`: ``[batch, seq, heads, head_dim]``. A
quantised tensor comes with its *descale*: real value ≈ fp8 value × descale,
per tensor (a scalar) or per head (``[heads]``).

    q8, qd = flashjax.fp8.quantize(q)             # e4m3, per-tensor descale
    vt, vd = flashjax.fp8.quantize_v(v)           # V in the kernel's layout
    o = flashjax.attention(q8, k8, vt, q_descale=qd, k_descale=kd, v_descale=vd)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import common as kernel_common

FORMATS = ("float8_e4m3fn", "float8_e5m2")


def quantize(x, fmt: str = "float8_e4m3fn", *, per_head: bool = False,
             power_of_2: bool = False):
  """``x`` (float) -> ``(x_fp8, descale)`` with ``x ≈ x_fp8 · descale``.

  The scale maps ``amax(|x|)`` (over the tensor, or over each head with
  ``per_head``) to the format's largest value, so nothing saturates. An
  all-zero tensor (or head) gets descale 1. ``descale`` is float32, a scalar
  or ``[heads]``; no gradient flows through it. ``power_of_2`` rounds the
  descale up to a power of two (amax then lands in the top binade): the same
  precision for normal values, and ``x_fp8 · descale`` is exact in bfloat16,
  so a 16-bit kernel can see exactly the values an FP8 one multiplied.
  """
  if fmt not in FORMATS:
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}.")
  if x.ndim != 4 and per_head:
    raise ValueError(f"per_head quantisation needs [batch, seq, heads, "
                     f"head_dim], got shape {x.shape}.")
  x32 = x.astype(jnp.float32)
  axes = (0, 1, 3) if per_head else None
  amax = jax.lax.stop_gradient(jnp.max(jnp.abs(x32), axis=axes))
  fmax = float(jnp.finfo(fmt).max)
  descale = jnp.where(amax > 0, amax / fmax, 1.0).astype(jnp.float32)
  if power_of_2:
    descale = jnp.exp2(jnp.ceil(jnp.log2(descale)))
  scale = (1.0 / descale) if not per_head else (1.0 / descale)[:, None]
  x8 = (x32 * scale).astype(fmt)
  return x8, descale


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KeyMajorV:
  """FP8 V in the Hopper FP8 forward's own layout, made by :func:`quantize_v`.

  wgmma takes 8-bit operands only K-major, so the P V product needs V with
  its keys minor. ``data``: ``[batch, kv_heads, head_dim, seq_kv rounded up
  to 16]`` (zero keys after ``seq_kv``), the keys of each 16 in the order the
  kernel's P has them (:func:`pallas_kernels.common.fp8_pv_key_order`).
  :func:`flashjax.attention` takes it as ``v`` wherever it takes an FP8 V and
  checks it as the ``[batch, seq_kv, kv_heads, head_dim]`` tensor it stands
  for (``shape``, ``dtype``); the Hopper forward reads it as it is, other
  backends get it back by :meth:`to_bshd`.
  """

  data: jax.Array
  seq_kv: int = dataclasses.field(metadata=dict(static=True))

  @classmethod
  def of(cls, v8) -> "KeyMajorV":
    """``v8`` ``[batch, seq_kv, kv_heads, head_dim]`` in this layout."""
    seq_kv = v8.shape[1]
    pad = -seq_kv % 16
    if pad:                              # zero keys up to a multiple of 16
      v8 = jnp.pad(v8, ((0, 0), (0, pad), (0, 0), (0, 0)))
    return cls(kernel_common.fp8_v_key_major(v8), seq_kv)

  def to_bshd(self):
    """V back as ``[batch, seq_kv, kv_heads, head_dim]``."""
    vt = kernel_common.fp8_pv_key_order(self.data, axis=3, inverse=True)
    return jnp.transpose(vt[..., :self.seq_kv], (0, 3, 1, 2))

  @property
  def shape(self) -> tuple:
    """The shape of the V it stands for, ``[batch, seq_kv, kv_heads, d]``."""
    batch, heads, head_dim, _ = self.data.shape
    return (batch, self.seq_kv, heads, head_dim)

  @property
  def dtype(self):
    return self.data.dtype


def quantize_v(v, fmt: str = "float8_e4m3fn", *, per_head: bool = False,
               power_of_2: bool = False):
  """:func:`quantize` for V, in the Hopper FP8 forward's layout:
  ``(KeyMajorV, descale)``. The transpose rides in the quantisation's own
  pass over V (XLA fuses it with the scaling and the cast), so
  :func:`flashjax.attention` need not transpose V before the kernel, as it
  does for an FP8 V ``[batch, seq, heads, head_dim]``: one pass over V less
  (24-28 µs a call at d 128 from 4k to 16k keys on the H200). Any backend
  takes the result; only the Hopper FP8 forward gains."""
  v8, descale = quantize(v, fmt, per_head=per_head, power_of_2=power_of_2)
  return KeyMajorV.of(v8), descale


def dequantize(x8, descale):
  """``x8 · descale`` in float32 (descale a scalar or ``[heads]``)."""
  d = jnp.asarray(descale, jnp.float32)
  return x8.astype(jnp.float32) * (d if d.ndim == 0 else d[:, None])


def center_keys(k):
  """``(k - k̄, k̄)``: K ``[batch, seq, kv_heads, d]`` minus its mean over the
  sequence (in K's dtype), and the mean (float32 ``[batch, 1, kv_heads, d]``).
  Every logit of a row moves by the same ``scale · q·k̄``
  (:func:`logit_shift`), which the softmax ignores, so O and the gradients
  are unchanged in exact arithmetic (not under a softcap). What changes under
  FP8: K's per-tensor scale no longer spends its range on a direction every
  key shares (trained keys often have one), and dQ = dS K no longer
  multiplies that direction by dS's row sums, which are not exactly 0 when
  D = rowsum(dO ∘ O) comes from the FP8 forward's O
  (benchmarks/fp8_gradients.py --key-bias)."""
  k32 = k.astype(jnp.float32)
  mean = jnp.mean(k32, axis=1, keepdims=True)
  return (k32 - mean).astype(k.dtype), mean


def logit_shift(q, k_mean, scale: float):
  """``scale · q·k̄``, float32 ``[batch, num_q_heads, seq_q]``: what centring
  K (:func:`center_keys`) takes off each row's logits and logsumexp. q:
  ``[batch, seq_q, num_q_heads, d]``; k_mean: ``[batch, 1, kv_heads, d]``."""
  group = q.shape[2] // k_mean.shape[2]
  return scale * jnp.einsum("bqhd,bhd->bhq", q.astype(jnp.float32),
                            jnp.repeat(k_mean[:, 0], group, axis=1),
                            precision=jax.lax.Precision.HIGHEST)


def random_rotation(head_dim: int, key) -> jax.Array:
  """A random orthogonal ``[head_dim, head_dim]`` float32 matrix: a Hadamard
  matrix with random column signs (head_dim a power of 2), else the Q factor
  of a Gaussian matrix. Since ``(Q R)(K R)ᵀ = Q Kᵀ``, rotating Q and K leaves
  attention unchanged in exact arithmetic while spreading a few large
  coordinates over all of them, which FP8 quantises more accurately."""
  if head_dim & (head_dim - 1) == 0:
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < head_dim:
      h = np.block([[h, h], [h, -h]])
    signs = jax.random.rademacher(key, (head_dim,), jnp.float32)
    return jnp.asarray(h / np.sqrt(head_dim)) * signs[None, :]
  r, _ = jnp.linalg.qr(jax.random.normal(key, (head_dim, head_dim)))
  return r


def rotate(q, k, rotation):
  """``(q R, k R)`` in the inputs' dtype: the same attention logits, outliers
  spread (quantise afterwards). V and O are untouched."""
  hi = jax.lax.Precision.HIGHEST
  qr = jnp.einsum("bshd,de->bshe", q.astype(jnp.float32), rotation,
                  precision=hi)
  kr = jnp.einsum("bshd,de->bshe", k.astype(jnp.float32), rotation,
                  precision=hi)
  return qr.astype(q.dtype), kr.astype(k.dtype)
