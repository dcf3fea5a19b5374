"""How far the FP8 training policy's gradients are from float32 attention's.

    python benchmarks/fp8_gradients.py --out benchmarks/results/fp8-gradients-cpu

``flashjax.attention(q, k, v, fp8=True)`` runs the forward in FP8 and the
backward in bf16, recomputing P = exp(S - L) with the forward's logsumexp L.
For each softmax sharpness (Q scaled so the logits have standard deviation
``--logit-scales``), bf16 causal inputs (``--key-bias b``: every key gets
b times one shared random direction of unit RMS, as trained keys often share
one; a softmax ignores it, but dQ = dS K sees it wherever dS's rows do not
sum to 0), it prints the relative (Frobenius)
error of O, dQ, dK and dV:

* ``bf16``: the bf16 kernels, against float32 attention at the inputs;
* ``fp8 policy``: against float32 attention at the inputs, and at the
  quantised inputs (the values the FP8 forward multiplies, which its
  backward differentiates at: K is quantised centred on its mean,
  :func:`flashjax.fp8.center_keys`, the mean added back here). Before K was
  centred, keys with a shared direction (``--key-bias 4``) put dQ 8-9% off
  there and the bf16 kernels at the same quantised inputs 1.1-1.6%
  (``results/fp8-gradients-keybias4-cpu.md``, which also has that row):
  D = rowsum(dO ∘ O) from the FP8 O (P rounded to FP8) does not match
  rowsum(P ∘ dP) of the backward's P, so dS's rows do not sum to 0, and
  dQ = dS K carries that times the shared direction;
* ``FP8 Q, K only`` / ``FP8 P, V only`` / ``FP8 all``: the policy's parts
  apart, in a float32 emulation (:func:`emulate`): Q and K quantised (S
  from them, P and V exact), or P and V rounded (S from the 16-bit Q and
  centred K, as ``fp8_qk=False`` computes it), or both (which matches the
  kernels' row); the gradients are float32 attention's at the
  values that part quantised (rounding passed straight through). Which
  part's error grows with the logits;
* ``unquantised backward``: the earlier policy, emulated in float32: the
  forward's O and L with S recomputed from the unquantised Q, K, so P's rows
  no longer sum to 1 where quantisation moved S, and D = rowsum(dO ∘ O)
  stops matching rowsum(P ∘ dP).

Kernels run on the CPU with ``interpret=True`` (``--backend``: triton or
mosaic); float32 references at highest matmul precision.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashjax  # noqa: E402
from flashjax import fp8  # noqa: E402
from flashjax.masks import MaskSpec, dense  # noqa: E402
from pallas_kernels.common import fp8_p_scale  # noqa: E402


def rel(a, b) -> float:
  a, b = (np.asarray(x, np.float32) for x in (a, b))
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def shared_key_direction(k, rms_units: float, seed: int = 1):
  """``k`` plus ``rms_units`` RMS units of one random direction shared by
  every key (trained keys often have one; the softmax ignores it)."""
  shared = jax.random.normal(jax.random.key(seed), (k.shape[-1],))
  shared = shared / jnp.sqrt(jnp.mean(shared ** 2))
  return (k.astype(jnp.float32) + rms_units * shared).astype(k.dtype)


def policy_inputs(q, k, v, fp8_qk: bool = True):
  """The values the ``fp8=True`` policy multiplies, in float32: K centred
  (``fp8.center_keys``, in K's dtype) with its mean added back (the same
  attention); V, and with ``fp8_qk`` Q and centred K, quantised with
  power-of-2 scales and dequantised."""
  k_centred, k_mean = fp8.center_keys(k)
  quantised = lambda x: fp8.dequantize(*fp8.quantize(x, power_of_2=True))
  q, k = ((quantised(x) for x in (q, k_centred)) if fp8_qk else
          (x.astype(jnp.float32) for x in (q, k_centred)))
  return q, k + k_mean, quantised(v)


def emulate(q, k, v, *, causal, fmt="float8_e4m3fn", p_rounding=True,
            softcap=None):
  """The FP8 kernels' math in float32 on (dequantised) inputs: S exact
  (``softcap``: c · tanh(S / c)), P rounded to ``fmt`` after scaling by its
  largest value (``p_rounding``, :func:`pallas_kernels.common.fp8_p_scale`),
  O = P V / l."""
  group = q.shape[2] // k.shape[2]
  k, v = (jnp.repeat(x, group, axis=2) for x in (k, v))
  hi = jax.lax.Precision.HIGHEST
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=hi) / np.sqrt(q.shape[-1])
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)
  mask = dense(MaskSpec(q.shape[1], k.shape[1], causal=causal))[:, None]
  s = jnp.where(mask, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
  l = jnp.sum(p, axis=-1, keepdims=True)
  if p_rounding:
    top = fp8_p_scale(fmt)
    p = (p * top).astype(fmt).astype(jnp.float32) / top
  return jnp.einsum("bhqk,bkhd->bqhd", p / jnp.where(l == 0, 1.0, l), v,
                    precision=hi)


def reference_vjp(q, k, v, do):
  """(O, (dQ, dK, dV)) of float32 causal attention."""
  with jax.default_matmul_precision("highest"):
    o, vjp = jax.vjp(lambda *x: flashjax.attention(
        *x, causal=True, backend="reference"),
        *(x.astype(jnp.float32) for x in (q, k, v)))
    return o, vjp(do)


def unquantised_backward(q, k, v, o, lse, do):
  """The earlier policy's gradients in float32: P from the unquantised Q, K
  and the FP8 forward's L [batch, heads, seq], D from the FP8 forward's O."""
  with jax.default_matmul_precision("highest"):
    q, k, v, o, do = (x.astype(jnp.float32) for x in (q, k, v, o, do))
    scale = q.shape[-1] ** -0.5
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    n = q.shape[1]
    causal = jnp.tril(jnp.ones((n, n), bool))
    p = jnp.where(causal, jnp.exp(s - lse[..., None]), 0.0)
    dv = jnp.einsum("bhqk,bqhd->bkhd", p, do)
    dp = jnp.einsum("bqhd,bkhd->bhqk", do, v)
    delta = jnp.einsum("bqhd,bqhd->bhq", do, o)
    ds = p * (dp - delta[..., None])
    dq = jnp.einsum("bhqk,bkhd->bqhd", ds, k) * scale
    dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q) * scale
    return dq, dk, dv


def measure(args):
  b, s, h, d = 1, args.seq, 2, 64
  for alpha in args.logit_scales:
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, do = (jax.random.normal(kk, (b, s, h, d)) for kk in keys)
    k = shared_key_direction(k, args.key_bias)
    q, k, v = ((q * alpha).astype(jnp.bfloat16), k.astype(jnp.bfloat16),
               v.astype(jnp.bfloat16))
    o_ref, g_ref = reference_vjp(q, k, v, do)
    o_refq, g_refq = reference_vjp(*policy_inputs(q, k, v), do)

    def flash(policy):
      fn = lambda *x: flashjax.attention(*x, causal=True, fp8=policy,
                                         backend=args.backend, interpret=True)
      o, vjp = jax.vjp(fn, q, k, v)
      return o, vjp(do.astype(jnp.bfloat16))

    o16, g16 = flash(None)
    o8, g8 = flash(True)
    _, lse8 = flashjax.attention(q, k, v, causal=True, fp8=True,
                                 backend=args.backend, interpret=True,
                                 return_lse=True)
    g_old = unquantised_backward(q, k, v, o8, lse8, do)
    qq, kq, vq = policy_inputs(q, k, v)
    parts = {
        "FP8 Q, K only (emulated) vs f32 at inputs":
            ((qq, kq, v.astype(jnp.float32)), False),
        "FP8 P, V only (emulated) vs f32 at inputs":
            (policy_inputs(q, k, v, fp8_qk=False), True),
        "FP8 all (emulated) vs f32 at inputs": ((qq, kq, vq), True)}
    rows = {
        "bf16 vs f32 at inputs": (o16, g16, o_ref, g_ref),
        "fp8 policy vs f32 at inputs": (o8, g8, o_ref, g_ref),
        "fp8 policy vs f32 at quantised inputs": (o8, g8, o_refq, g_refq),
        **{name: (emulate(*x, causal=True, p_rounding=p_rounding),
                  reference_vjp(*x, do)[1], o_ref, g_ref)
           for name, (x, p_rounding) in parts.items()},
        "unquantised backward vs f32 at inputs": (o8, g_old, o_ref, g_ref),
        "unquantised backward vs f32 at quantised inputs":
            (o8, g_old, o_refq, g_refq),
    }
    for name, (o, g, o_r, g_r) in rows.items():
      row = dict(logit_std=alpha, key_bias=args.key_bias, case=name, seq=s,
                 o=rel(o, o_r),
                 dq=rel(g[0], g_r[0]), dk=rel(g[1], g_r[1]),
                 dv=rel(g[2], g_r[2]))
      print(json.dumps(row), flush=True)
      yield row


def table(rows) -> str:
  lines = ["| logit std | case | O | dQ | dK | dV |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['logit_std']:g} | {r['case']} | {r['o']:.4f} | "
                 f"{r['dq']:.4f} | {r['dk']:.4f} | {r['dv']:.4f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--out", default="benchmarks/results/fp8-gradients-cpu",
                      help="output prefix: writes PREFIX.json and PREFIX.md")
  parser.add_argument("--backend", default="triton", choices=("triton", "mosaic"))
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--logit-scales", type=float, nargs="+",
                      default=[1.0, 3.0, 6.0])
  parser.add_argument("--key-bias", type=float, default=0.0,
                      help="add this many RMS units of one shared direction "
                      "to every key")
  args = parser.parse_args(argv)
  rows = list(measure(args))
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
  out.with_suffix(".md").write_text(
      f"# FP8 policy gradients (relative error, {args.backend} kernels, "
      f"interpret mode)\n\n`python benchmarks/fp8_gradients.py "
      f"{' '.join(argv or sys.argv[1:])}`\n\n"
      f"bf16 causal inputs [1, seq, 2, 64], Q scaled to the logit std, keys "
      f"shifted by {args.key_bias:g} RMS units along one shared direction; "
      "the references are float32 attention at highest precision.\n\n"
      + table(rows) + "\n")
  print(table(rows))


if __name__ == "__main__":
  main()
