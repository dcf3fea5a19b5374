"""A decoder-only transformer (nanoGPT style) on flashjax attention, in Flax linen.

Pre-norm blocks (RMSNorm), rotary position embeddings, grouped K/V heads, a
SwiGLU or GELU MLP, tied or untied embeddings, optional remat per block.
Parameters are ``param_dtype`` (float32); activations and matmuls run in
``dtype`` (bfloat16 by default); norms, softmax statistics and logits are float32.

Attention (``ModelConfig.attention``):

* ``"flash"``: :func:`flashjax.attention` (Pallas kernel; interpret mode on CPU);
* ``"dense"``: ``jax.nn.dot_product_attention(implementation="xla")``, XLA's
  dense attention in the compute dtype (O(N^2) memory): the usual baseline;
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")``, GPU only.

``attn_dtype="fp8"`` (flash only, bfloat16 or float16 compute) runs flashjax's
forward in FP8 (Q, K, V quantised per tensor on the fly) and its backward in the
compute dtype; ``"fp8-pv"`` keeps Q Kᵀ in the compute dtype and rounds only P
and V to FP8 (``flashjax.attention(..., fp8_qk=False)``).

Generation uses a KV cache (:class:`KVCache`): :func:`prefill` runs the prompt
through the configured causal attention and fills the cache; :func:`decode_step`
feeds one token whose single query attends to the filled part of the cache.
That step always uses flashjax's dense reference with a length mask (expressed
as segment ids): with one query row it is a matrix-vector product per head, so
the O(N^2) argument for a tiled kernel does not apply.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

import flashjax

ATTENTIONS = ("flash", "dense", "cudnn")
ATTN_DTYPES = ("compute", "fp8", "fp8-pv")   # fp8-pv: Q Kᵀ in the compute dtype


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics. ``head_dim = d_model // num_heads``."""

  vocab_size: int = 256
  max_seq_len: int = 128
  num_layers: int = 2
  d_model: int = 128
  num_heads: int = 4
  num_kv_heads: int = 4          # divides num_heads; < num_heads is GQA
  mlp: str = "swiglu"            # "swiglu" or "gelu"
  mlp_ratio: float = 4.0         # hidden width / d_model (swiglu: times 2/3)
  tie_embeddings: bool = True
  attention: str = "flash"       # one of ATTENTIONS
  attn_dtype: str = "compute"    # one of ATTN_DTYPES: "fp8"/"fp8-pv", flash's
  dtype: str = "bfloat16"        # compute dtype
  param_dtype: str = "float32"
  remat: bool = False            # recompute each block's activations in bwd
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6

  def __post_init__(self):
    problems = []
    if self.d_model % self.num_heads:
      problems.append(f"d_model ({self.d_model}) must be a multiple of "
                      f"num_heads ({self.num_heads})")
    elif (self.d_model // self.num_heads) % 8:
      problems.append(f"head_dim = d_model / num_heads = "
                      f"{self.d_model // self.num_heads} must be a multiple of 8")
    if self.num_heads % self.num_kv_heads:
      problems.append(f"num_heads ({self.num_heads}) must be a multiple of "
                      f"num_kv_heads ({self.num_kv_heads})")
    if self.mlp not in ("swiglu", "gelu"):
      problems.append(f"mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")
    if self.attention not in ATTENTIONS:
      problems.append(f"attention must be one of {ATTENTIONS}, got "
                      f"{self.attention!r}")
    if self.attn_dtype not in ATTN_DTYPES:
      problems.append(f"attn_dtype must be one of {ATTN_DTYPES}, got "
                      f"{self.attn_dtype!r}")
    elif self.attn_dtype != "compute" and (
        self.attention != "flash" or self.dtype not in ("bfloat16",
                                                        "float16")):
      problems.append(f"attn_dtype={self.attn_dtype!r} needs attention="
                      f"'flash' and dtype 'bfloat16' or 'float16', got "
                      f"attention={self.attention!r}, dtype={self.dtype!r}")
    if problems:
      raise ValueError("ModelConfig: " + "; ".join(problems) + ".")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    """Hidden width; SwiGLU's two input matrices keep the GELU MLP's params."""
    scale = 2 / 3 if self.mlp == "swiglu" else 1.0
    return int(self.mlp_ratio * self.d_model * scale + 7) // 8 * 8


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for positions ``[0, length)``.

  ``k``, ``v``: ``[num_layers, batch, max_len, num_kv_heads, head_dim]`` in the
  compute dtype, RoPE already applied to ``k``; ``length``: int32 scalar.
  """

  k: jax.Array
  v: jax.Array
  length: jax.Array

  @classmethod
  def empty(cls, config: ModelConfig, batch: int, max_len: int) -> "KVCache":
    shape = (config.num_layers, batch, max_len, config.num_kv_heads,
             config.head_dim)
    zeros = jnp.zeros(shape, config.dtype)
    return cls(k=zeros, v=zeros, length=jnp.zeros((), jnp.int32))


def rope(x, positions, theta: float):
  """Rotary embedding of ``x [batch, seq, heads, head_dim]`` at int
  ``positions [seq]`` (rotate-half convention, angles in float32)."""
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * freqs       # [seq, half]
  cos, sin = jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin],
                         axis=-1).astype(x.dtype)


class RMSNorm(nn.Module):
  """``x / rms(x) * scale`` over the last axis, computed in float32."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],),
                       self.config.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 ** 2, axis=-1, keepdims=True)
                              + self.config.norm_eps)
    return (x32 * scale).astype(self.config.dtype)


def causal_attention(q, k, v, kind: str, attn_dtype: str = "compute"):
  """Causal self-attention ``[batch, seq, heads, head_dim]`` by ``kind``
  (``attn_dtype`` "fp8" / "fp8-pv": flashjax's FP8 forward, all of it or P V
  only)."""
  if kind == "cudnn":
    if jax.default_backend() != "gpu":
      raise ValueError("attention='cudnn' needs an NVIDIA GPU; use 'flash' "
                       "or 'dense' on this machine.")
    return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                        implementation="cudnn")
  if kind == "dense":
    return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                        implementation="xla")
  return flashjax.attention(q, k, v, causal=True,
                            fp8=True if attn_dtype != "compute" else None,
                            fp8_qk=attn_dtype != "fp8-pv")


def cached_attention(q, k_cache, v_cache, length):
  """One query per sequence against the cache: ``q [batch, 1, heads, d]`` sees
  cache positions ``< length`` (dense reference; see the module docstring)."""
  batch, max_len = k_cache.shape[:2]
  q_ids = jnp.ones((batch, 1), jnp.int32)
  kv_ids = jnp.broadcast_to(jnp.arange(max_len) < length, (batch, max_len))
  return flashjax.attention(q, k_cache, v_cache, q_segment_ids=q_ids,
                            kv_segment_ids=kv_ids.astype(jnp.int32),
                            backend="reference")


class Attention(nn.Module):
  """Causal GQA self-attention with RoPE, optionally through a layer's cache."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, cache=None):
    """``x [batch, seq, d_model]``, ``positions`` int ``[seq]``.

    ``cache``: None (training), or this layer's ``(k, v, length)``: with
    ``seq > 1`` the prompt is prefilled into an empty cache; with ``seq == 1``
    one token is decoded. Returns ``(y [batch, seq, d_model], (k, v) or None)``.
    """
    c = self.config
    dense = lambda heads, name: nn.DenseGeneral(
        (heads, c.head_dim), use_bias=False, dtype=c.dtype,
        param_dtype=c.param_dtype, name=name)
    q = rope(dense(c.num_heads, "query")(x), positions, c.rope_theta)
    k = rope(dense(c.num_kv_heads, "key")(x), positions, c.rope_theta)
    v = dense(c.num_kv_heads, "value")(x)
    new_cache = None
    if cache is None or x.shape[1] > 1:
      o = causal_attention(q, k, v, c.attention, c.attn_dtype)
    if cache is not None:
      k_cache, v_cache, length = cache
      start = (0, length, 0, 0)
      k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype),
                                             start)
      v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype),
                                             start)
      new_cache = (k_cache, v_cache)
      if x.shape[1] == 1:
        o = cached_attention(q, k_cache, v_cache, length + 1)
    y = nn.DenseGeneral(c.d_model, axis=(-2, -1), use_bias=False, dtype=c.dtype,
                        param_dtype=c.param_dtype, name="out")(o)
    return y, new_cache


class MLP(nn.Module):
  """``[batch, seq, d_model] -> same``: SwiGLU or GELU, no biases."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    dense = lambda features, name: nn.Dense(
        features, use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype,
        name=name)
    if c.mlp == "swiglu":
      h = nn.silu(dense(c.mlp_hidden, "gate")(x)) * dense(c.mlp_hidden, "up")(x)
    else:
      h = nn.gelu(dense(c.mlp_hidden, "up")(x))
    return dense(c.d_model, "down")(h)


class Block(nn.Module):
  """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, cache=None):
    y, new_cache = Attention(self.config, name="attn")(
        RMSNorm(self.config, name="attn_norm")(x), positions, cache)
    x = x + y
    x = x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x))
    return x, new_cache


class Transformer(nn.Module):
  """Token ids in, float32 next-token logits out."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, cache: KVCache | None = None):
    """``tokens`` int32 ``[batch, seq]`` -> ``(logits [batch, seq, vocab]
    float32, cache)``. Without a cache (training) positions start at 0 and the
    returned cache is None; with one they start at ``cache.length`` and the
    cache comes back advanced by ``seq``."""
    c = self.config
    embed = nn.Embed(c.vocab_size, c.d_model, dtype=c.dtype,
                     param_dtype=c.param_dtype, name="embed",
                     embedding_init=nn.initializers.normal(0.02))
    x = embed(tokens)
    start = 0 if cache is None else cache.length
    positions = start + jnp.arange(tokens.shape[1])
    block = nn.remat(Block) if c.remat else Block
    ks, vs = [], []
    for i in range(c.num_layers):
      layer_cache = None if cache is None else (cache.k[i], cache.v[i], start)
      x, new = block(c, name=f"block_{i}")(x, positions, layer_cache)
      if new is not None:
        ks.append(new[0])
        vs.append(new[1])
    x = RMSNorm(c, name="final_norm")(x)
    if c.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(c.vocab_size, use_bias=False, dtype=c.dtype,
                        param_dtype=c.param_dtype, name="unembed")(x)
    if cache is not None:
      cache = KVCache(k=jnp.stack(ks), v=jnp.stack(vs),
                      length=start + tokens.shape[1])
    return logits.astype(jnp.float32), cache


def init_params(config: ModelConfig, seed: int = 0):
  """float32 (``param_dtype``) parameters of a :class:`Transformer`."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  return Transformer(config).init(jax.random.key(seed), tokens)["params"]


def loss_fn(params, config: ModelConfig, tokens):
  """Mean next-token cross entropy of int32 ``tokens [batch, seq + 1]``."""
  logits, _ = Transformer(config).apply({"params": params}, tokens[:, :-1])
  labels = tokens[:, 1:]
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return jnp.mean(logz - picked)


def prefill(params, config: ModelConfig, prompt, max_len: int):
  """Run ``prompt`` int32 ``[batch, seq]`` (seq >= 1) into a fresh cache of
  ``max_len`` positions. Returns (logits of the last position ``[batch, vocab]``,
  cache)."""
  cache = KVCache.empty(config, prompt.shape[0], max_len)
  logits, cache = Transformer(config).apply({"params": params}, prompt, cache)
  return logits[:, -1], cache


def decode_step(params, config: ModelConfig, token, cache: KVCache):
  """Feed ``token`` int32 ``[batch]`` at position ``cache.length``. Returns
  (logits ``[batch, vocab]``, cache)."""
  logits, cache = Transformer(config).apply({"params": params},
                                            token[:, None], cache)
  return logits[:, 0], cache


def sample_token(rng, logits, temperature: float, top_k: int | None):
  """Sample int32 ``[batch]`` from ``logits [batch, vocab]``; temperature 0 is
  greedy; ``top_k`` keeps the k most likely tokens."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


def generate(params, config: ModelConfig, prompt, max_new_tokens: int, *,
             rng, temperature: float = 1.0, top_k: int | None = None):
  """Continue ``prompt`` int32 ``[batch, seq]`` by ``max_new_tokens`` tokens.

  The prompt is prefilled (configured attention, causal), then each new token
  is one jitted :func:`decode_step` against the KV cache. Returns int32
  ``[batch, max_new_tokens]``.
  """
  total = prompt.shape[1] + max_new_tokens
  if total > config.max_seq_len:
    raise ValueError(f"prompt ({prompt.shape[1]}) + max_new_tokens "
                     f"({max_new_tokens}) = {total} exceeds the model's "
                     f"max_seq_len {config.max_seq_len}.")
  return _generate(params, config, prompt, max_new_tokens, rng, temperature,
                   top_k)


@functools.partial(jax.jit, static_argnums=(1, 3, 5, 6))
def _generate(params, config, prompt, max_new_tokens, rng, temperature, top_k):
  logits, cache = prefill(params, config, prompt,
                          prompt.shape[1] + max_new_tokens)

  def step(carry, rng):
    logits, cache = carry
    token = sample_token(rng, logits, temperature, top_k)
    return decode_step(params, config, token, cache), token

  _, tokens = jax.lax.scan(step, (logits, cache),
                           jax.random.split(rng, max_new_tokens))
  return tokens.T
