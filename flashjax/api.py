"""The public ``attention`` op and its ``custom_vjp``.

The forward saves only (Q, K, V, O, L) and the segment ids; the backward
computes D = rowsum(dO ∘ O) - dL and recomputes P tile by tile in its kernels.
With ``MosaicBlocks(o_residual=True)`` the Hopper forward also saves O's
rounding residual r, and D is taken from O + r, the unrounded O's.
With ``fp8=True`` the forward quantises Q, K, V to FP8 itself (power-of-2
per-tensor scales) and the backward runs in bf16/fp16 on the same quantised
values, exact in 16 bits, so the recomputed P = exp(S - L) matches the forward's
L (a backward on the unquantised Q, K, V would not: its S differs from the
forward's by the quantisation error, which grows with the logits, and P's rows
then stop summing to 1; training diverged so on the H200). Gradients pass the
rounding straight through.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from flashjax import fp8 as fp8_lib
from flashjax import reference
from flashjax.checks import Plan, check_descales, make_plan
from flashjax.config import MOSAIC_BLOCK_Q
from pallas_kernels import mosaic as mosaic_kernels
from pallas_kernels import triton as triton_kernels


def attention(q, k, v, *, causal: bool = False, segment_ids=None,
              q_segment_ids=None, kv_segment_ids=None, window=None,
              softcap=None, scale=None,
              return_lse: bool = False, config=None, backend: str = "auto",
              interpret: bool | None = None, fp8=None, fp8_qk: bool = True,
              q_descale=None, k_descale=None, v_descale=None, out_dtype=None,
              deterministic: bool = False):
  """Exact softmax attention, fused and tiled (FlashAttention 2).

  Args:
    q: ``[batch, seq_q, num_q_heads, head_dim]``, float32, bfloat16 or float16.
    k, v: ``[batch, seq_kv, num_kv_heads, head_dim]``, q's dtype;
      ``num_q_heads`` is a multiple of ``num_kv_heads`` (MHA, GQA, MQA).
      ``head_dim`` is a multiple of 8, at most 256. Any sequence lengths.
    causal: query i sees keys j <= i + seq_kv - seq_q (diagonal aligned to the
      bottom right, as FlashAttention 2; equal to the usual rule when
      seq_q == seq_kv).
    segment_ids: int ``[batch, seq]`` (self-attention, seq_q == seq_kv): a
      token sees only keys of its own segment (packing; padding gets its own
      id). Shorthand for ``q_segment_ids=kv_segment_ids=segment_ids``.
    q_segment_ids, kv_segment_ids: int ``[batch, seq_q]`` / ``[batch, seq_kv]``,
      the same for cross-attention; kv ids default to the q ids.
    window: ``(left, right)``: query i sees keys within ``[diag(i) - left,
      diag(i) + right]``; either side may be None (unbounded). Composes with
      causal (which caps right at 0).
    softcap: ``S = softcap · tanh(S / softcap)`` on the scaled logits (Gemma 2).
    scale: logit scale; default ``1 / sqrt(head_dim)``.
    return_lse: also return L, the natural-log logsumexp of each row,
      float32 ``[batch, num_q_heads, seq_q]`` (differentiable).
    config: :class:`flashjax.Config` block sizes; default per head dim.
    backend: ``"mosaic"``: the Hopper kernels (Mosaic GPU: TMA, wgmma,
      warp specialisation; bf16/f16, head_dim 64/128 (96 padded); at
      head_dim 136-256 the forward, with the portable backward);
      ``"triton"``: the portable Pallas kernels (Triton-lowered), any
      case; ``"auto"``: mosaic on an sm_90 GPU when it takes the case, else
      triton (also on the CPU, in interpret mode; :func:`explain` says
      which);
      ``"reference"``: dense jnp, O(N^2) memory, identical semantics.
    interpret: run the Pallas kernels in the interpreter (None: only when
      JAX has no GPU). False on a CPU-only host is for lowering (tests).
    fp8: with bfloat16/float16 inputs, ``True`` (e4m3) or ``"float8_e5m2"``
      runs the forward in FP8: Q, K (centred on its mean over the sequence,
      which the softmax ignores: :func:`flashjax.fp8.center_keys`; not with a
      softcap) and V quantised per tensor (amax scaling),
      P rounded to FP8 with its own scale, softmax statistics and accumulation
      in float32, O in the input dtype; the backward recomputes in the input
      dtype (training). On sm_90 ``"auto"`` runs it on the Hopper FP8
      forward, elsewhere on the portable kernel.
    fp8_qk: with the ``fp8`` policy, ``False`` keeps S = Q Kᵀ in the inputs'
      16 bits and rounds only P and V to FP8: quantising Q and K moves each
      logit by a few percent of its size, an error that grows as attention
      sharpens, where P's and V's does not
      (``benchmarks/fp8_gradients.py``); half the forward's matmul work
      stays 16-bit. The FP8 mode for training: 600 steps on the H200 ended
      at bf16's loss with it, 19-27% above without it (README, FP8).
    q_descale, k_descale, v_descale: with FP8 inputs (``float8_e4m3fn`` or
      ``float8_e5m2``, pre-quantised, e.g. by :func:`flashjax.fp8.quantize`):
      real value = fp8 value × descale; a scalar or one per head. Required;
      positive. Such a call is forward only (not differentiable). An FP8 V
      may also come as a :class:`flashjax.fp8.KeyMajorV`
      (:func:`flashjax.fp8.quantize_v`): the Hopper FP8 forward's own layout,
      which spares it the transpose of V it runs before the kernel otherwise.
    out_dtype: O's dtype for FP8 inputs: bfloat16 (default) or float16.
    deterministic: gradients equal bit for bit from run to run. The Hopper
      backward fuses dQ into its dK/dV kernel by default at d 128
      non-causal, d 128 causal from 8k keys and d 64 from 4k keys
      (non-causal) or 16k (causal); there every key tile reduce-adds its
      float32 share of dQ, in an order that varies from run to run (the
      results differ in the last bits). ``True`` runs the two-kernel
      backward there instead (dQ in a kernel of its own), as FlashAttention's
      ``deterministic=True`` does (its cost is not yet timed on a GPU:
      ``benchmarks/gpu_session.sh deterministic``). The forward and the
      portable backward are deterministic either way.

  Returns:
    O ``[batch, seq_q, num_q_heads, head_dim]`` in q's dtype (and L if
    ``return_lse``). A row that sees no key gives O = 0, L = -inf, and zero
    gradients.
  """
  plan, q_seg, kv_seg = make_plan(
      q, k, v, segment_ids=segment_ids, q_segment_ids=q_segment_ids,
      kv_segment_ids=kv_segment_ids,
      causal=causal, window=window, softcap=softcap, scale=scale,
      config=config, backend=backend, interpret=interpret, fp8=fp8,
      fp8_qk=fp8_qk, out_dtype=out_dtype, deterministic=deterministic)
  descale = check_descales(plan, q_descale, k_descale, v_descale)
  if isinstance(v, fp8_lib.KeyMajorV) and not plan.v_key_major:
    v = v.to_bshd()            # every kernel but the Hopper FP8 forward's
  if plan.backend == "reference":
    if plan.fp8_inputs:      # the reference sees the dequantised values
      q, k, v = (fp8_lib.dequantize(x, d) for x, d in
                 ((q, q_descale), (k, k_descale), (v, v_descale)))
    o, lse = reference.attend(plan, q, k, v, q_seg, kv_seg)
  elif plan.fp8 and not plan.fp8_inputs and plan.softcap is None:
    # the FP8 policy quantises K centred (fp8.center_keys; with fp8_qk=False
    # K stays 16-bit, but D from the FP8 O still meets K's mean in dQ = dS K);
    # a returned L gets its shift back
    k_centred, k_mean = fp8_lib.center_keys(k)
    o, lse = _flash(plan, q, k_centred, v, q_seg, kv_seg, descale)
    if return_lse:
      lse = lse + fp8_lib.logit_shift(q, k_mean, plan.scale)
  else:
    o, lse = _flash(plan, q, k, v, q_seg, kv_seg, descale)
  return (o, lse) if return_lse else o


def explain(q, k, v, **kwargs) -> str:
  """Which kernel ``attention(q, k, v, **kwargs)`` runs, with its tiling."""
  for unused in ("return_lse", "q_descale", "k_descale", "v_descale"):
    kwargs.pop(unused, None)
  plan, _, _ = make_plan(q, k, v, **kwargs)
  if plan.backend == "reference":
    return "reference: dense jnp attention (O(N^2) memory)"
  mode = "interpret mode (CPU)" if plan.interpret else "compiled"
  backward = (
      f"backward {' + '.join(mosaic_kernels.kernel_names(plan.config.mosaic_bwd))}"
      f" ({plan.config.mosaic_bwd.summary()})" if plan.hopper_backward else
      f"backward portable, Triton-lowered, {plan.bwd_blocks}")
  tiles = (f"Mosaic GPU, 2+1 warpgroups, CTA tiles {2 * MOSAIC_BLOCK_Q} rows, "
           f"forward {mosaic_kernels.kernel_name(bool(plan.fp8))} "
           f"({plan.config.mosaic.summary()}), {backward}"
           if plan.backend == "mosaic" else
           f"Triton-lowered, fwd {plan.fwd_blocks}, bwd {plan.bwd_blocks}")
  return (f"{plan.backend}: Pallas kernels, {mode}; {tiles}; "
          f"seq_q {plan.mask.seq_q}->{plan.seq_q_padded}, "
          f"seq_kv {plan.mask.seq_kv}->{plan.seq_kv_padded}, "
          f"head_dim {plan.head_dim}->{plan.head_dim_padded}; group "
          f"{plan.group}; {plan.mask}"
          + (f"; FP8 forward in {plan.fp8}" if plan.fp8 else "")
          + ("; V key-major as given (fp8.quantize_v)" if plan.v_key_major
             else "")
          + ("" if plan.fp8_qk or not plan.fp8 else " (P and V only)"))


def _pad(x, axis_sizes):
  """Zero-pad x up to ``axis_sizes`` ({axis: size}); no copy when aligned."""
  pads = [(0, axis_sizes.get(a, n) - n) for a, n in enumerate(x.shape)]
  return x if not any(hi for _, hi in pads) else jnp.pad(x, pads)


def _flash(plan: Plan, q, k, v, q_seg, kv_seg, descale):
  """Pad to whole tiles and a power-of-2 head dim, run the kernels, slice back."""
  seq_q, seq_kv, d = plan.mask.seq_q, plan.mask.seq_kv, plan.head_dim
  q = _pad(q, {1: plan.seq_q_padded, 3: plan.head_dim_padded})
  k = _pad(k, {1: plan.seq_kv_padded, 3: plan.head_dim_padded})
  v = (_pad(v.data, {2: plan.head_dim_padded, 3: plan.seq_kv_padded})
       if plan.v_key_major else
       _pad(v, {1: plan.seq_kv_padded, 3: plan.head_dim_padded}))
  if q_seg is not None:
    q_seg = _pad(q_seg, {1: plan.seq_q_padded})
    kv_seg = _pad(kv_seg, {1: plan.seq_kv_padded})
  o, lse = _flash_core(plan, q, k, v, q_seg, kv_seg, descale)
  return o[:, :seq_q, :, :d], lse[:, :, :seq_q]


def _first_order_only(kernel):
  """Wrap a kernel launch so that differentiating it (grad of grad) says why not."""
  @functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
  def launch(plan: Plan, *args):
    return kernel(plan, *args)

  @launch.defjvp
  def _(plan, primals, tangents):
    raise NotImplementedError(
        "flashjax.attention supports first-order gradients only: its kernels "
        "are not differentiable again (grad of grad, Hessians). Use "
        "backend='reference' for higher-order derivatives.")
  return launch


def _forward_kernel(plan: Plan, q, k, v, q_seg, kv_seg, descale,
                    residual=False):
  if plan.backend == "mosaic":
    return mosaic_kernels.forward(plan, q, k, v, q_seg, kv_seg, descale,
                                  residual=residual)
  return triton_kernels.forward(plan, q, k, v, q_seg, kv_seg, descale)


def _backward_kernel(plan: Plan, q, k, v, q_seg, kv_seg, do, lse, delta,
                     dlse):
  if plan.hopper_backward:
    return mosaic_kernels.backward(plan, q, k, v, q_seg, kv_seg, do, lse,
                                   delta, dlse)
  return triton_kernels.backward(plan, q, k, v, q_seg, kv_seg, do, lse, delta,
                                 dlse)


_forward = _first_order_only(_forward_kernel)
_backward = _first_order_only(_backward_kernel)
# (O, L, r): O's rounding residual too, for the backward's D
_forward_with_residual = _first_order_only(
    functools.partial(_forward_kernel, residual=True))


def _saves_residual(plan: Plan) -> bool:
  """Whether the differentiated forward also returns O's rounding residual
  (``MosaicBlocks.o_residual``, the 16-bit Hopper forward)."""
  return (plan.backend == "mosaic" and plan.config.mosaic.o_residual
          and not plan.fp8)


def _quantized_forward(plan: Plan, q, k, v, q_seg, kv_seg, descale,
                       forward=_forward):
  """The forward kernel; under the fp8 policy, on Q, K, V quantised here
  (only V with ``fp8_qk=False``; Q and K then go in 16 bits, descale 1).
  Returns ``forward``'s outputs (``(O, L)``, or with
  :data:`_forward_with_residual` ``(O, L, r)``) and the Q, K, V it
  multiplied, in the inputs' dtype
  (under the policy, the quantised values: power-of-2 scales make them exact
  in 16 bits), which the backward differentiates at."""
  if plan.fp8 and not plan.fp8_inputs:
    def quantised(x):
      # (what the kernel multiplies, its descale, what the backward sees)
      x8, d = fp8_lib.quantize(x, plan.fp8, power_of_2=True)
      return x8, d, fp8_lib.dequantize(x8, d).astype(x.dtype)
    qk = ([quantised(x) for x in (q, k)] if plan.fp8_qk else
          [(x, jnp.float32(1), x) for x in (q, k)])
    (q8, qd, q), (k8, kd, k), (v8, vd, v) = (*qk, quantised(v))
    descale = jnp.broadcast_to(jnp.stack([qd, kd, vd, jnp.float32(0)]),
                               (plan.num_q_heads, 4))
    return forward(plan, q8, k8, v8, q_seg, kv_seg, descale), (q, k, v)
  return forward(plan, q, k, v, q_seg, kv_seg, descale), (q, k, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_core(plan: Plan, q, k, v, q_seg, kv_seg, descale):
  return _quantized_forward(plan, q, k, v, q_seg, kv_seg, descale)[0]


def _flash_core_fwd(plan: Plan, q, k, v, q_seg, kv_seg, descale):
  (o, lse, *r), (q, k, v) = _quantized_forward(
      plan, q, k, v, q_seg, kv_seg, descale,
      _forward_with_residual if _saves_residual(plan) else _forward)
  return (o, lse), (q, k, v, q_seg, kv_seg, o, lse, *r)


def _flash_core_bwd(plan: Plan, residuals, cotangents):
  if plan.fp8_inputs:
    raise NotImplementedError(
        "flashjax.attention on pre-quantised FP8 inputs is forward only; to "
        "train with an FP8 forward pass bfloat16/float16 inputs with fp8=True "
        "(the backward then runs in that dtype).")
  q, k, v, q_seg, kv_seg, o, lse, *r = residuals
  do, dlse = cotangents
  # D = rowsum(dO ∘ O) - dL   [batch, heads, seq_q]; a dL term arises only when
  # the caller differentiates through the returned logsumexp. O + r: the
  # unrounded O (o_residual), whose D is the backward's own rowsum(P ∘ dP).
  o = o.astype(jnp.float32)
  if r:
    o = o + r[0].astype(jnp.float32)
  delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), o) - dlse
  dq, dk, dv = _backward(plan, q, k, v, q_seg, kv_seg, do.astype(q.dtype),
                         lse, delta, dlse)
  return dq, dk, dv, None, None, None


_flash_core.defvjp(_flash_core_fwd, _flash_core_bwd)
