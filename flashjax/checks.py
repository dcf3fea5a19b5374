"""Input validation: turn the user's arguments into one static, hashable ``Plan``.

Every check runs at trace time (shapes and dtypes only) and raises ``ValueError``
or ``TypeError`` naming the argument, what was seen and what is allowed.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from flashjax.config import (MOSAIC_AUTO_HEAD_DIMS, MOSAIC_BLOCK_Q,
                             MOSAIC_BWD_HEAD_DIMS, MOSAIC_COMPUTE_WGS,
                             MOSAIC_HEAD_DIMS, SMEM_BYTES, Blocks, Config,
                             default_config, padded_head_dim)
from flashjax.fp8 import KeyMajorV
from flashjax.masks import MaskSpec

log = logging.getLogger("flashjax")

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")
FP8_OUT_DTYPES = ("bfloat16", "float16")
MAX_HEAD_DIM = 256
BACKENDS = ("auto", "triton", "mosaic", "reference")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything static about one attention call (the custom_vjp's nondiff arg)."""

  batch: int
  num_q_heads: int
  num_kv_heads: int
  head_dim: int
  dtype: str          # of O, and of the backward (never fp8)
  mask: MaskSpec
  scale: float
  softcap: float | None
  backend: str        # "triton", "mosaic" or "reference" ("auto" resolved)
  interpret: bool     # run the Pallas kernel in the interpreter (CPU)
  config: Config
  # FP8 forward: the format Q, K, V and P are multiplied in (None: dtype).
  fp8: str | None = None
  # FP8 given pre-quantised by the caller (descales passed in); else the
  # forward quantises the 16-bit inputs itself (training policy).
  fp8_inputs: bool = False
  # FP8 Q Kᵀ too (Q, K in fp8); False (the policy's fp8_qk=False): S from
  # the 16-bit Q, K, only P and V in fp8.
  fp8_qk: bool = True
  # V came as a flashjax.fp8.KeyMajorV and the Hopper FP8 forward reads it
  # as it is (other backends get V back as [batch, seq_kv, heads, d]).
  v_key_major: bool = False

  @property
  def group(self) -> int:
    """Query heads per K/V head (1 for MHA, num_q_heads for MQA)."""
    return self.num_q_heads // self.num_kv_heads

  @property
  def head_dim_padded(self) -> int:
    """Head dim the kernels see: the next power of 2 (Triton tiles need it)."""
    return padded_head_dim(self.head_dim)

  @property
  def hopper_backward(self) -> bool:
    return _hopper_backward(self.backend, self.head_dim_padded)

  @property
  def fwd_blocks(self) -> Blocks:
    return self.config.fwd.fit(self.mask.seq_q, self.mask.seq_kv)

  @property
  def bwd_blocks(self) -> Blocks:
    return self.config.bwd.fit(self.mask.seq_q, self.mask.seq_kv)

  @property
  def seq_q_padded(self) -> int:
    """seq_q rounded up to whole tiles of every kernel (blocks are powers of 2)."""
    tile = max(self.fwd_blocks.block_q, self.bwd_blocks.block_q)
    if self.backend == "mosaic":
      tile = max(tile, MOSAIC_COMPUTE_WGS * MOSAIC_BLOCK_Q,
                 self.config.mosaic_bwd.block_q_dkv)
    return _round_up(self.mask.seq_q, tile)

  @property
  def seq_kv_padded(self) -> int:
    """seq_kv rounded up to whole tiles of every kernel (each a power of 2,
    so the largest is a multiple of the others)."""
    tile = max(self.fwd_blocks.block_kv, self.bwd_blocks.block_kv)
    if self.backend == "mosaic":
      tile = max(tile, self.config.mosaic.block_kv,
                 self.config.mosaic_bwd.block_kv,
                 MOSAIC_COMPUTE_WGS * MOSAIC_BLOCK_Q)
    return _round_up(self.mask.seq_kv, tile)


def _hopper_backward(backend: str, head_dim_padded: int) -> bool:
  """Whether the Hopper kernels differentiate a call (else, at d 256 under
  ``backend="mosaic"``, the portable backward does)."""
  return backend == "mosaic" and head_dim_padded in MOSAIC_BWD_HEAD_DIMS


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _shape_of(name, x):
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"{name} must be an array, got {type(x).__name__}.")
  return tuple(x.shape)


def make_plan(q, k, v, *, segment_ids=None, q_segment_ids=None,
              kv_segment_ids=None, causal=False, window=None, softcap=None,
              scale=None,
              config=None, backend="auto", interpret=None, fp8=None,
              fp8_qk=True, out_dtype=None, deterministic=False):
  """Validate the arguments of :func:`flashjax.attention` and resolve them.

  Returns ``(plan, q_segment_ids, kv_segment_ids)``, the ids as int32 (kv ids
  default to the q ids for self-attention; ``segment_ids`` gives both) or
  both None. The FP8 descales are checked by :func:`check_descales`.
  """
  q_shape, k_shape, v_shape = (_shape_of(n, x) for n, x in
                               (("q", q), ("k", k), ("v", v)))
  if isinstance(v, KeyMajorV):
    _check_key_major_v(v)
  layouts = {"q": "[batch, seq_q, num_q_heads, head_dim]",
             "k": "[batch, seq_kv, num_kv_heads, head_dim]",
             "v": "[batch, seq_kv, num_kv_heads, head_dim]"}
  for name, shape in (("q", q_shape), ("k", k_shape), ("v", v_shape)):
    if len(shape) != 4:
      raise ValueError(f"{name} must have rank 4 {layouts[name]}, got shape "
                       f"{shape} (rank {len(shape)}).")
    if 0 in shape:
      raise ValueError(f"{name} has an empty dimension: shape {shape}.")
  if k_shape != v_shape:
    raise ValueError(f"k and v must have the same shape "
                     f"[batch, seq_kv, num_kv_heads, head_dim], got k {k_shape} "
                     f"and v {v_shape}.")
  batch, seq_q, num_q_heads, head_dim = q_shape
  _, seq_kv, num_kv_heads, _ = k_shape
  if k_shape[0] != batch:
    raise ValueError(f"q and k/v must have the same batch size, got q {q_shape} "
                     f"and k {k_shape}.")
  if k_shape[3] != head_dim:
    raise ValueError(f"q and k/v must have the same head_dim, got q {q_shape} "
                     f"and k {k_shape}.")
  if num_q_heads % num_kv_heads:
    raise ValueError(f"num_q_heads ({num_q_heads}, q {q_shape}) must be a "
                     f"multiple of num_kv_heads ({num_kv_heads}, k {k_shape}) "
                     f"for MHA/GQA/MQA.")
  if head_dim % 8 or head_dim > MAX_HEAD_DIM:
    raise ValueError(f"head_dim must be a multiple of 8 and at most "
                     f"{MAX_HEAD_DIM}, got {head_dim} (q {q_shape}).")

  dtypes = {n: jnp.dtype(x.dtype) for n, x in (("q", q), ("k", k), ("v", v))}
  if len(set(dtypes.values())) != 1:
    raise TypeError("q, k and v must have the same dtype, got " + ", ".join(
        f"{n} {d.name}" for n, d in dtypes.items()) + ".")
  dtype = dtypes["q"].name
  if dtype not in SUPPORTED_DTYPES + FP8_DTYPES:
    raise TypeError(f"q/k/v dtype must be one of "
                    f"{SUPPORTED_DTYPES + FP8_DTYPES}, got {dtype}.")
  dtype, fp8, fp8_inputs = _check_fp8(dtype, fp8, out_dtype)
  if not isinstance(fp8_qk, bool):
    raise TypeError(f"fp8_qk must be True or False, got {fp8_qk!r}.")
  if not isinstance(deterministic, bool):
    raise TypeError(f"deterministic must be True or False, got "
                    f"{deterministic!r}.")
  if not fp8_qk and (fp8 is None or fp8_inputs):
    raise ValueError(
        f"fp8_qk=False keeps Q Kᵀ in 16 bits under the fp8 policy (fp8=True "
        f"or a format, on bfloat16/float16 inputs); got fp8={fp8!r} with "
        f"{'FP8' if fp8_inputs else dtype} inputs.")

  if segment_ids is not None:
    q_segment_ids, kv_segment_ids = _self_attention_ids(
        segment_ids, q_segment_ids, kv_segment_ids, q_shape, k_shape)
  q_segment_ids, kv_segment_ids = _check_segments(
      q_segment_ids, kv_segment_ids, batch, seq_q, seq_kv,
      names=(("segment_ids",) * 2 if segment_ids is not None else
             ("q_segment_ids", "kv_segment_ids")))
  window = _check_window(window)
  if softcap is not None and not (isinstance(softcap, (int, float))
                                  and math.isfinite(softcap) and softcap > 0):
    raise ValueError(f"softcap must be a positive finite float or None, got "
                     f"{softcap!r}.")
  if scale is None:
    scale = 1.0 / math.sqrt(head_dim)
  elif not (isinstance(scale, (int, float)) and math.isfinite(scale)):
    raise ValueError(f"scale must be a finite Python float or None (for "
                     f"1/sqrt(head_dim)), got {scale!r}.")
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
  head_dim_padded = padded_head_dim(head_dim)
  on_gpu = jax.default_backend() == "gpu"
  unsupported = _mosaic_unsupported(dtype, head_dim, head_dim_padded)
  if fp8 and on_gpu and not _has_fp8(jax.devices()[0]):
    raise TypeError(f"FP8 attention needs a GPU with FP8 tensor cores "
                    f"(compute capability >= 8.9: Ada, Hopper), got "
                    f"{getattr(jax.devices()[0], 'compute_capability', '?')}.")
  if backend == "mosaic" and unsupported:
    raise NotImplementedError(f"backend='mosaic' {unsupported}; use "
                              f"backend='triton'.")
  if backend == "auto":
    # The Hopper kernels on an sm_90 GPU when they take the case; the portable
    # kernels otherwise (and always on the CPU, where they are interpreted).
    hopper = on_gpu and _is_sm90(jax.devices()[0])
    why_not = unsupported or (
        None if head_dim_padded in MOSAIC_AUTO_HEAD_DIMS else
        f"head_dim {head_dim}: the Hopper forward takes it only when asked "
        f"for (backend='mosaic') until it has run compiled")
    backend = "mosaic" if hopper and not why_not else "triton"
    log.debug("flashjax: backend auto -> %s (%s)", backend,
              "sm_90" if hopper and not why_not else
              why_not if hopper else
              "compiled, not sm_90" if on_gpu else "interpret mode, no GPU")
  itemsize = jnp.dtype(dtype).itemsize
  hopper_backward = _hopper_backward(backend, head_dim_padded)
  mask = MaskSpec(seq_q=seq_q, seq_kv=seq_kv, causal=bool(causal),
                  window=window, has_segments=q_segment_ids is not None)
  if config is None:
    config = default_config(head_dim_padded, itemsize, causal=bool(causal),
                            fp8=fp8 is not None, fp8_qk=fp8_qk,
                            banded=mask.banded, seq_kv=seq_kv, seq_q=seq_q,
                            deterministic=deterministic)
  elif not isinstance(config, Config):
    raise TypeError(f"config must be a flashjax.Config or None, got "
                    f"{type(config).__name__}.")
  elif deterministic and hopper_backward and config.mosaic_bwd.fused_dq:
    raise ValueError(
        "deterministic=True needs the two-kernel Hopper backward, got a "
        "config with mosaic_bwd.fused_dq=True (its dQ is reduce-added in an "
        "order that varies); pass config=None or a MosaicBlocks with "
        "fused_dq=False.")
  tilings = [("fwd", config.fwd, config.fwd.smem_bytes(head_dim_padded,
                                                       itemsize)),
             ("bwd", config.bwd, config.bwd.smem_bytes(head_dim_padded,
                                                       itemsize))]
  if backend == "mosaic":
    tilings.append(("mosaic", config.mosaic,
                    config.mosaic.smem_bytes(head_dim_padded, itemsize,
                                             fp8=fp8 is not None,
                                             fp8_qk=fp8_qk)))
  if hopper_backward:
    tilings.append(("mosaic_bwd", config.mosaic_bwd,
                    config.mosaic_bwd.smem_bytes(head_dim_padded, itemsize,
                                                 backward=True)))
  for name, blocks, need in tilings:
    if need > SMEM_BYTES:
      raise ValueError(
          f"config.{name} = {blocks} needs about {need // 1024} KiB of shared "
          f"memory for head_dim {head_dim} ({head_dim_padded} padded) in "
          f"{dtype}; at most {SMEM_BYTES // 1024} KiB fit. Use smaller blocks "
          f"or fewer stages (Blocks.shrink_to_fit).")

  plan = Plan(
      batch=batch, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
      head_dim=head_dim, dtype=dtype,
      mask=mask,
      scale=float(scale), softcap=None if softcap is None else float(softcap),
      backend=backend,
      interpret=(not on_gpu) if interpret is None else bool(interpret),
      config=config, fp8=fp8, fp8_inputs=fp8_inputs, fp8_qk=fp8_qk,
      v_key_major=isinstance(v, KeyMajorV) and backend == "mosaic")
  return plan, q_segment_ids, kv_segment_ids


def _check_key_major_v(v: KeyMajorV):
  """A :class:`flashjax.fp8.KeyMajorV` must hold FP8 data ``[batch,
  kv_heads, head_dim, seq_kv rounded up to 16]``."""
  shape = tuple(v.data.shape)
  if not isinstance(v.seq_kv, int) or v.seq_kv < 1:
    raise ValueError(f"v, a flashjax.fp8.KeyMajorV, needs seq_kv (its number "
                     f"of keys) a positive int, got {v.seq_kv!r}.")
  rounded = _round_up(v.seq_kv, 16)
  if len(shape) != 4 or shape[3] != rounded:
    raise ValueError(
        f"v, a flashjax.fp8.KeyMajorV with seq_kv {v.seq_kv!r}, must hold data "
        f"[batch, kv_heads, head_dim, seq_kv rounded up to 16 ({rounded})], "
        f"got shape {shape}; make it with flashjax.fp8.quantize_v.")
  if jnp.dtype(v.data.dtype).name not in FP8_DTYPES:
    raise TypeError(f"v, a flashjax.fp8.KeyMajorV, must hold FP8 data "
                    f"{FP8_DTYPES}, got {jnp.dtype(v.data.dtype).name}.")


def _mosaic_unsupported(dtype, head_dim, head_dim_padded):
  """Why backend="mosaic" (the Hopper kernels) cannot run a case, or None."""
  if dtype not in ("bfloat16", "float16"):
    return f"takes bfloat16 or float16, got {dtype}"
  if head_dim_padded not in MOSAIC_HEAD_DIMS:
    return (f"supports head_dim padded to {MOSAIC_HEAD_DIMS}, got head_dim "
            f"{head_dim} (padded {head_dim_padded})")
  return None


def _check_fp8(dtype, fp8, out_dtype):
  """Resolve the FP8 policy: ``(dtype of O and the backward, fp8 format or
  None, whether the inputs came pre-quantised)``."""
  if dtype in FP8_DTYPES:
    # pre-quantised inputs: the forward multiplies in their format
    if fp8 not in (None, True, dtype):
      raise TypeError(f"fp8={fp8!r} contradicts the inputs' dtype {dtype}.")
    out = jnp.dtype(out_dtype or "bfloat16").name
    if out not in FP8_OUT_DTYPES:
      raise TypeError(f"out_dtype for FP8 inputs must be one of "
                      f"{FP8_OUT_DTYPES}, got {out}.")
    return out, dtype, True
  if out_dtype is not None and jnp.dtype(out_dtype).name != dtype:
    raise TypeError(f"out_dtype is for FP8 inputs (O is in q's dtype "
                    f"{dtype} otherwise), got out_dtype "
                    f"{jnp.dtype(out_dtype).name}.")
  if fp8 in (None, False):
    return dtype, None, False
  fmt = "float8_e4m3fn" if fp8 is True else str(fp8)
  if fmt not in FP8_DTYPES:
    raise ValueError(f"fp8 must be True, False, or one of {FP8_DTYPES}, got "
                     f"{fp8!r}.")
  if dtype not in FP8_OUT_DTYPES:
    raise TypeError(f"fp8={fp8!r} quantises bfloat16 or float16 inputs, got "
                    f"{dtype}.")
  return dtype, fmt, False


def check_descales(plan: Plan, q_descale, k_descale, v_descale):
  """The per-tensor or per-head FP8 descales as one float32 ``[num_q_heads,
  4]`` array (columns: q, k, v descale, unused), or None without FP8 inputs.

  Each descale is a scalar or a vector over its tensor's heads (q:
  num_q_heads; k, v: num_kv_heads); real value = fp8 value × descale. Concrete
  values must be positive and finite (ValueError); traced ones cannot be
  checked at trace time, so a non-positive one becomes NaN and the output NaN
  rather than silent garbage.
  """
  given = {"q_descale": q_descale, "k_descale": k_descale,
           "v_descale": v_descale}
  if not plan.fp8_inputs:
    passed = [n for n, x in given.items() if x is not None]
    if passed:
      raise TypeError(f"{', '.join(passed)} given, but q/k/v are not FP8 "
                      f"({plan.dtype}); descales go with float8 inputs.")
    return None
  heads = {"q_descale": plan.num_q_heads, "k_descale": plan.num_kv_heads,
           "v_descale": plan.num_kv_heads}
  columns = []
  for name, x in given.items():
    if x is None:
      raise ValueError(f"{name} is required with FP8 inputs ({plan.fp8}): "
                       f"the scalar or per-head factor that maps the FP8 "
                       f"values back (flashjax.fp8.quantize returns it).")
    x = jnp.asarray(x)
    if x.shape not in ((), (1,), (heads[name],)):
      raise ValueError(f"{name} must be a scalar or have shape "
                       f"({heads[name]},) (one per head), got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"{name} must be a float, got {x.dtype}.")
    if not isinstance(x, jax.core.Tracer):   # numpy: also inside a jit trace
      concrete = np.asarray(x, np.float32)
      if not np.all(np.isfinite(concrete) & (concrete > 0)):
        raise ValueError(f"{name} must be positive and finite, got "
                         f"{concrete}.")
    x = jnp.broadcast_to(x.astype(jnp.float32).reshape(-1), (heads[name],))
    if heads[name] != plan.num_q_heads:      # one K/V head per GQA group
      x = jnp.repeat(x, plan.group)
    # a traced non-positive descale poisons the output with NaN
    columns.append(jnp.where(jnp.isfinite(x) & (x > 0), x, jnp.nan))
  columns.append(jnp.zeros((plan.num_q_heads,), jnp.float32))
  return jnp.stack(columns, axis=1)


def _has_fp8(device) -> bool:
  """FP8 tensor cores: compute capability 8.9 (Ada) or newer."""
  cc = str(getattr(device, "compute_capability", "0.0")).split(".")
  return (int(cc[0]), int(cc[1] or 0)) >= (8, 9)


def _is_sm90(device) -> bool:
  """True for a Hopper GPU (compute capability 9.x: H100, H200)."""
  return str(getattr(device, "compute_capability", "")).startswith("9.")


def _self_attention_ids(ids, q_seg, kv_seg, q_shape, k_shape):
  """``segment_ids``: the same ids for the queries and the keys, so only
  alone and where seq_q == seq_kv."""
  if q_seg is not None or kv_seg is not None:
    raise ValueError("segment_ids gives the queries and the keys the same "
                     "ids; pass it alone, or q_segment_ids (and "
                     "kv_segment_ids) instead, not both.")
  if q_shape[1] != k_shape[1]:
    raise ValueError(f"segment_ids needs seq_q == seq_kv (self-attention), "
                     f"got q {q_shape} and k {k_shape}; for cross-attention "
                     f"pass q_segment_ids and kv_segment_ids.")
  return ids, ids


def _check_segments(q_seg, kv_seg, batch, seq_q, seq_kv,
                    names=("q_segment_ids", "kv_segment_ids")):
  if q_seg is None and kv_seg is None:
    return None, None
  if q_seg is None:
    raise ValueError("kv_segment_ids was given without q_segment_ids; pass "
                     "both, or only q_segment_ids for self-attention.")
  if kv_seg is None:
    if seq_q != seq_kv:
      raise ValueError(f"kv_segment_ids is required when seq_q ({seq_q}) != "
                       f"seq_kv ({seq_kv}).")
    kv_seg = q_seg
  for name, ids, seq in ((names[0], q_seg, seq_q), (names[1], kv_seg, seq_kv)):
    shape = _shape_of(name, ids)
    if shape != (batch, seq):
      raise ValueError(f"{name} must have shape [batch, seq] = "
                       f"{(batch, seq)}, got {shape}.")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise TypeError(f"{name} must have an integer dtype, got "
                      f"{jnp.dtype(ids.dtype).name}.")
  return q_seg.astype(jnp.int32), kv_seg.astype(jnp.int32)


def _check_window(window):
  if window is None:
    return None
  if not (isinstance(window, (tuple, list)) and len(window) == 2):
    raise ValueError(f"window must be a (left, right) pair of ints >= 0 or "
                     f"None, got {window!r}.")
  for side, w in zip(("left", "right"), window):
    if w is not None and (not isinstance(w, int) or isinstance(w, bool)
                          or w < 0):
      raise ValueError(f"window {side} must be an int >= 0 or None "
                       f"(unbounded), got {w!r} in window={window!r}.")
  return (window[0], window[1])
