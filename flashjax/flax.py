"""Flax adapters: flashjax attention as an ``attention_fn`` and as modules.

* :func:`make_attention_fn` builds a drop-in ``attention_fn`` for
  ``flax.linen.MultiHeadDotProductAttention`` and ``flax.nnx.MultiHeadAttention``.
  Both modules pass q/k/v as ``[batch..., seq, heads, head_dim]``, the layout of
  :func:`flashjax.attention`.
* :class:`FlashMultiHeadAttention` (linen) and :class:`NnxFlashMultiHeadAttention`
  (nnx): attention layers with q/k/v/out projections and grouped K/V heads.

Masks. The kernel cannot take an arbitrary boolean mask, only structure: causal,
segment ids, and padding (a token's validity). So an ``attention_fn`` is built
with a *declaration* of what the Flax ``mask`` contains::

  fn = make_attention_fn(causal=True, padding=True)
  mask = nn.combine_masks(nn.make_causal_mask(tokens),
                          nn.make_attention_mask(tokens > 0, tokens > 0))
  nn.MultiHeadDotProductAttention(num_heads=4, attention_fn=fn)(x, mask=mask)

The adapter reads which queries and keys are valid from the mask (a query is
valid if it sees any key, a key if any query sees it), rebuilds the mask the
kernel will apply from the declaration, and checks that it equals the given
mask (``verify=True``): eagerly with a ``ValueError`` when the mask is concrete,
and at run time (a host callback that raises) when it is traced. A mask that is
not what was declared therefore never gives wrong numbers silently.

One difference to Flax remains by design: a query row that sees no key at all
(e.g. a padding query) gives 0 here, where Flax's softmax over a fully masked row
gives the mean of all values. Both are meaningless; exclude padded rows from
losses.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import flashjax
from flashjax import masks


def make_attention_fn(*, causal: bool = False, padding: bool = False,
                      q_segment_ids=None, kv_segment_ids=None,
                      verify: bool = True, backend: str = "auto",
                      interpret: bool | None = None, fp8=None,
                      fp8_qk: bool = True, deterministic_grads: bool = False):
  """An ``attention_fn`` for Flax attention modules that runs flashjax.

  Args:
    causal: attention is causal (query i sees keys j <= i). Applied whether or
      not a mask is passed; nnx's ``is_causal=True`` turns it on as well.
    padding: the ``mask`` may mask out padding queries/keys
      (``nn.make_attention_mask(valid_q, valid_kv)``).
    q_segment_ids, kv_segment_ids: int ``[batch..., seq_q]`` /
      ``[batch..., seq_kv]`` for packed sequences: the mask may hold
      ``nn.make_attention_mask(q_ids, kv_ids, jnp.equal)``. kv ids default to
      the q ids.
    verify: check that a given ``mask`` equals the declared structure (see the
      module docstring). Under jit this adds one host callback per call;
      turn it off only for masks known to match.
    backend, interpret, fp8, fp8_qk: as in :func:`flashjax.attention`
      (``fp8=True``: FP8 forward, 16-bit backward; ``fp8_qk=False``: only P
      and V in FP8).
    deterministic_grads: :func:`flashjax.attention`'s ``deterministic``
      (gradients equal bit for bit from run to run); not Flax's
      ``deterministic``, which the modules pass at call time to turn
      dropout off.

  Returns:
    ``attention_fn(query, key, value, bias=None, mask=None, ...)`` accepting
    every argument Flax 0.12's linen and nnx modules pass. It raises
    ``ValueError`` for a mask with no declaration, a mask that differs from the
    declaration, a ``bias``, attention dropout, ``sow_weights`` (``module``) and
    custom einsums, none of which a fused kernel can honour. ``precision`` and
    ``force_fp32_for_softmax`` are accepted and moot: the kernel accumulates
    and takes the softmax in float32.
  """
  declared = causal or padding or q_segment_ids is not None

  def attention_fn(query, key, value, bias=None, mask=None,
                   broadcast_dropout=True, dropout_rng=None, dropout_rate=0.0,
                   deterministic=False, dtype=None, precision=None, module=None,
                   force_fp32_for_softmax=False, qk_attn_weights_einsum=None,
                   attn_weights_value_einsum=None, is_causal=False):
    """Flax-compatible attention: ``[batch..., seq, heads, head_dim]`` in/out."""
    del broadcast_dropout, dropout_rng, precision, force_fp32_for_softmax
    if bias is not None:
      raise ValueError("flashjax attention_fn: an additive attention bias is "
                       "not supported by the fused kernel; drop `bias` or use "
                       "flax's dot_product_attention.")
    if dropout_rate > 0.0 and not deterministic:
      raise ValueError(f"flashjax attention_fn: attention dropout "
                       f"(dropout_rate={dropout_rate}) is not supported; set "
                       f"dropout_rate=0 or deterministic=True.")
    if module is not None:
      raise ValueError("flashjax attention_fn: sow_weights=True needs the "
                       "attention weights, which a flash kernel never "
                       "materialises; call with sow_weights=False.")
    if qk_attn_weights_einsum is not None or attn_weights_value_einsum is not None:
      raise ValueError("flashjax attention_fn: custom attention einsums "
                       "(e.g. AQT quantisation) cannot run inside the kernel.")
    if mask is not None and not declared:
      raise ValueError(
          "flashjax attention_fn got a `mask` but was not told what it is; "
          "build it with flashjax.flax.make_attention_fn(causal=..., "
          "padding=..., q_segment_ids=...) to match how the mask was made.")

    batch_shape, (seq_q, heads, head_dim) = query.shape[:-3], query.shape[-3:]
    seq_kv = key.shape[-3]
    dtype = jnp.result_type(query, key, value) if dtype is None else dtype
    q, k, v = (x.reshape((-1,) + x.shape[-3:]).astype(dtype)
               for x in (query, key, value))
    is_causal = causal or is_causal
    if is_causal and seq_q != seq_kv:
      raise ValueError(f"flashjax attention_fn: causal attention with seq_q "
                       f"({seq_q}) != seq_kv ({seq_kv}) is ambiguous (flax "
                       f"aligns the diagonal top-left, flashjax bottom-right).")

    q_ids, kv_ids = _segment_ids(batch_shape, seq_q, seq_kv, q_segment_ids,
                                 kv_segment_ids)
    if mask is not None:
      mask = _flatten_mask(mask, batch_shape, seq_q, seq_kv)
      if padding:
        q_ids, kv_ids = _with_padding(q_ids, kv_ids, mask.any(axis=(1, 3)),
                                      mask.any(axis=(1, 2)))
      if verify:
        spec = masks.MaskSpec(seq_q=seq_q, seq_kv=seq_kv, causal=is_causal,
                              has_segments=q_ids is not None)
        expected = masks.dense(spec, q_ids, kv_ids)[:, None]
        _check_mask(jnp.all(mask == expected))

    out = flashjax.attention(q, k, v, causal=is_causal, q_segment_ids=q_ids,
                             kv_segment_ids=kv_ids, backend=backend, fp8=fp8,
                             fp8_qk=fp8_qk, interpret=interpret,
                             deterministic=deterministic_grads)
    return out.reshape(batch_shape + (seq_q, heads, value.shape[-1]))

  return attention_fn


attention_fn = make_attention_fn()
"""The undeclared ``attention_fn``: no ``mask`` (nnx ``is_causal`` works)."""


def _segment_ids(batch_shape, seq_q, seq_kv, q_ids, kv_ids):
  """Declared segment ids as int32 ``[batch, seq]`` (flattened), or Nones."""
  if q_ids is None:
    return None, None
  kv_ids = q_ids if kv_ids is None else kv_ids
  return (jnp.broadcast_to(q_ids, batch_shape + (seq_q,)).reshape(-1, seq_q)
          .astype(jnp.int32),
          jnp.broadcast_to(kv_ids, batch_shape + (seq_kv,)).reshape(-1, seq_kv)
          .astype(jnp.int32))


def _flatten_mask(mask, batch_shape, seq_q, seq_kv):
  """A Flax mask ``[batch..., heads or 1, seq_q, seq_kv]`` -> bool, batch flat."""
  mask = jnp.asarray(mask)
  if mask.ndim < 3:
    raise ValueError(f"flashjax attention_fn: mask must be broadcastable to "
                     f"[batch..., heads, seq_q, seq_kv], got shape {mask.shape}.")
  mask = mask.reshape((1,) * (len(batch_shape) + 3 - mask.ndim) + mask.shape)
  mask = jnp.broadcast_to(mask, batch_shape + mask.shape[-3:-2] +
                          (seq_q, seq_kv))
  return mask.reshape((-1,) + mask.shape[-3:]).astype(bool)


def _with_padding(q_ids, kv_ids, q_valid, kv_valid):
  """Segment ids that also hide padding: invalid queries and keys get two
  fresh ids (below every real id), so they match nothing."""
  if q_ids is None:
    q_ids = jnp.zeros(q_valid.shape, jnp.int32)
    kv_ids = jnp.zeros(kv_valid.shape, jnp.int32)
  fresh = jnp.minimum(q_ids.min(), kv_ids.min()) - 1
  return (jnp.where(q_valid, q_ids, fresh),
          jnp.where(kv_valid, kv_ids, fresh - 1))


_MISMATCH = ("flashjax attention_fn: the mask is not the declared structure "
             "(causal/padding/segment ids given to make_attention_fn); "
             "the flash kernel would compute a different attention. Fix the "
             "declaration or use flax's dot_product_attention.")


def _raise_on_mismatch(ok):
  if not ok:
    raise ValueError(_MISMATCH)


def _check_mask(ok):
  """Raise now if ``ok`` is concrete, else when the compiled program runs."""
  try:
    _raise_on_mismatch(bool(ok))
  except jax.errors.ConcretizationTypeError:
    jax.debug.callback(_raise_on_mismatch, ok)


class FlashMultiHeadAttention(nn.Module):
  """Linen multi-head attention on flashjax, with grouped K/V heads (GQA).

  ``inputs_q [batch, seq_q, features]`` and ``inputs_kv [batch, seq_kv,
  features]`` (default: ``inputs_q``, self-attention) ->
  ``[batch, seq_q, out_features]``. Projections compute in ``dtype`` with
  ``param_dtype`` parameters; ``segment_ids`` (int ``[batch, seq]``) confine
  attention to segments and express padding (give padding its own id).
  """

  num_heads: int
  num_kv_heads: int | None = None     # None: num_heads (MHA)
  head_dim: int | None = None         # None: features // num_heads
  out_features: int | None = None     # None: features
  causal: bool = False
  use_bias: bool = False
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  backend: str = "auto"
  interpret: bool | None = None
  fp8: bool | str | None = None       # FP8 forward (see flashjax.attention)
  fp8_qk: bool = True                 # False: only P and V in FP8
  deterministic_grads: bool = False   # flashjax.attention's deterministic

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, q_segment_ids=None,
               kv_segment_ids=None):
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    features = inputs_q.shape[-1]
    head_dim = self.head_dim or features // self.num_heads
    kv_heads = self.num_kv_heads or self.num_heads
    dense = lambda heads, name: nn.DenseGeneral(
        (heads, head_dim), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    q = dense(self.num_heads, "query")(inputs_q)
    k = dense(kv_heads, "key")(inputs_kv)
    v = dense(kv_heads, "value")(inputs_kv)
    o = flashjax.attention(q, k, v, causal=self.causal,
                           q_segment_ids=q_segment_ids,
                           kv_segment_ids=kv_segment_ids, backend=self.backend,
                           interpret=self.interpret, fp8=self.fp8,
                           fp8_qk=self.fp8_qk,
                           deterministic=self.deterministic_grads)
    return nn.DenseGeneral(self.out_features or features, axis=(-2, -1),
                           use_bias=self.use_bias, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="out")(o)


class NnxFlashMultiHeadAttention(nnx.Module):
  """NNX twin of :class:`FlashMultiHeadAttention` (same shapes and arguments)."""

  def __init__(self, num_heads: int, in_features: int, *,
               num_kv_heads: int | None = None, head_dim: int | None = None,
               out_features: int | None = None, causal: bool = False,
               use_bias: bool = False, dtype=None, param_dtype=jnp.float32,
               backend: str = "auto", interpret: bool | None = None,
               fp8: bool | str | None = None, fp8_qk: bool = True,
               deterministic_grads: bool = False,
               rngs: nnx.Rngs):
    head_dim = head_dim or in_features // num_heads
    kv_heads = num_kv_heads or num_heads
    linear = lambda heads: nnx.LinearGeneral(
        in_features, (heads, head_dim), use_bias=use_bias, dtype=dtype,
        param_dtype=param_dtype, rngs=rngs)
    self.query, self.key, self.value = (linear(num_heads), linear(kv_heads),
                                        linear(kv_heads))
    self.out = nnx.LinearGeneral((num_heads, head_dim),
                                 out_features or in_features, axis=(-2, -1),
                                 use_bias=use_bias, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
    self.causal, self.backend, self.interpret = causal, backend, interpret
    self.fp8, self.fp8_qk = fp8, fp8_qk
    self.deterministic_grads = deterministic_grads

  def __call__(self, inputs_q, inputs_kv=None, *, q_segment_ids=None,
               kv_segment_ids=None):
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    o = flashjax.attention(
        self.query(inputs_q), self.key(inputs_kv), self.value(inputs_kv),
        causal=self.causal, q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids, backend=self.backend,
        interpret=self.interpret, fp8=self.fp8, fp8_qk=self.fp8_qk,
        deterministic=self.deterministic_grads)
    return self.out(o)
