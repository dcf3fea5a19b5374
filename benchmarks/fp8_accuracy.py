"""RMSE of attention outputs against the float32 reference: bf16, FP8, FP8 with
a random rotation (FlashAttention 3's incoherent processing), per tensor and
per head, on normal inputs and on inputs with a few large outliers.

    python benchmarks/fp8_accuracy.py --out benchmarks/results/fp8-accuracy-cpu

Inputs as in the FlashAttention 3 paper's accuracy test: Q, K, V ~ N(0, 1),
and "outliers": Q and K plus N(0, 100) on 0.1% of the entries. The reference
is float32 dense attention at highest matmul precision on the unquantised
inputs; every variant runs flashjax's kernel (interpret mode on a CPU,
compiled on a GPU). On a GPU it adds ``cudnn_fp8_unit_scales``: cuDNN's FP8
attention through JAX's internal API (the public one refuses FP8), inputs cast
to e4m3 and every scale 1, as JAX's own tests call it. Writes PREFIX.json and
PREFIX.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashjax  # noqa: E402
from flashjax import fp8  # noqa: E402


def make_inputs(key, q_shape, kv_shape=None, outliers: bool = False):
  """float32 Q ``q_shape``, K and V ``kv_shape`` (default: q_shape) ~ N(0, 1);
  ``outliers``: Q and K plus N(0, 100) on 0.1% of their entries."""
  kq, kk, kv, ko = jax.random.split(key, 4)
  kv_shape = kv_shape or q_shape
  q = jax.random.normal(kq, q_shape, jnp.float32)
  k, v = (jax.random.normal(x, kv_shape, jnp.float32) for x in (kk, kv))
  if outliers:
    def spike(x, key):
      big = jax.random.bernoulli(key, 1e-3, x.shape)
      return x + 10.0 * jax.random.normal(jax.random.fold_in(key, 1),
                                          x.shape) * big
    q, k = spike(q, ko), spike(k, jax.random.fold_in(ko, 2))
  return q, k, v


def variants(causal: bool, key):
  """name -> f(q, k, v float32) -> O."""
  def bf16(q, k, v):
    return flashjax.attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)),
                              causal=causal)

  def fp8_attention(fmt, per_head=False, rotate=False):
    def run(q, k, v):
      if rotate:
        q, k = fp8.rotate(q, k, fp8.random_rotation(q.shape[-1], key))
      (q8, qd), (k8, kd), (v8, vd) = (fp8.quantize(x.astype(jnp.bfloat16), fmt,
                                                   per_head=per_head)
                                      for x in (q, k, v))
      return flashjax.attention(q8, k8, v8, q_descale=qd, k_descale=kd,
                                v_descale=vd, causal=causal)
    return run

  out = {"bf16": bf16,
         "fp8_e4m3": fp8_attention("float8_e4m3fn"),
         "fp8_e4m3_per_head": fp8_attention("float8_e4m3fn", per_head=True),
         "fp8_e4m3_rotated": fp8_attention("float8_e4m3fn", rotate=True),
         "fp8_e5m2": fp8_attention("float8_e5m2"),
         "fp8_e5m2_rotated": fp8_attention("float8_e5m2", rotate=True)}
  if jax.default_backend() == "gpu":
    def cudnn_fp8(q, k, v):
      from jax._src.cudnn import fused_attention_stablehlo as cudnn
      q8, k8, v8 = (x.astype(jnp.float8_e4m3fn) for x in (q, k, v))
      one = jnp.ones((1, 1, 1, 1), jnp.float32)
      o = cudnn.dot_product_attention(
          q8, k8, v8, scale=q.shape[-1] ** -0.5,
          mask_type=cudnn.MaskType.CAUSAL if causal else cudnn.MaskType.NO_MASK,
          use_fp8=True, fp8_params={k: one for k in (
              "amax_dQ", "amax_dK", "amax_dV", "amax_dP", "descale_q",
              "descale_k", "descale_v", "descale_s", "scale_s", "scale_o",
              "descale_o", "descale_dO", "descale_dP", "scale_dQ", "scale_dK",
              "scale_dV", "scale_dP")})
      return o[0] if isinstance(o, (tuple, list)) else o
    out["cudnn_fp8_unit_scales"] = cudnn_fp8
  return out


def run(args):
  rows = []
  shape = (args.batch, args.seq, args.heads, args.head_dim)
  for inputs in ("normal", "outliers"):
    for causal in args.causal:
      q, k, v = make_inputs(jax.random.key(args.seed), shape,
                            outliers=inputs == "outliers")
      ref = flashjax.attention(q, k, v, causal=causal, backend="reference")
      for name, f in variants(causal, jax.random.key(args.seed + 1)).items():
        row = dict(inputs=inputs, causal=causal, variant=name, shape=shape)
        try:
          o = jnp.asarray(f(q, k, v), jnp.float32)
          row["rmse"] = float(jnp.sqrt(jnp.mean((o - ref) ** 2)))
          row["ref_rms"] = float(jnp.sqrt(jnp.mean(ref ** 2)))
        except Exception as e:  # noqa: BLE001 - a peer that cannot run
          row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
  return rows


def table(rows) -> str:
  names = list(dict.fromkeys(r["variant"] for r in rows))
  lines = ["| inputs | causal | " + " | ".join(names) + " |",
           "|" + "---|" * (2 + len(names))]
  for key in dict.fromkeys((r["inputs"], r["causal"]) for r in rows):
    case = {r["variant"]: r for r in rows if (r["inputs"], r["causal"]) == key}
    lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(
        f"{case[n]['rmse']:.2e}" if "rmse" in case.get(n, {}) else "error"
        for n in names) + " |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="benchmarks/results/fp8-accuracy")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--causal", nargs="+", type=lambda x: x.lower() == "true",
                 default=[False, True])
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  rows = run(args)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__,
              backend=jax.default_backend(), date=time.strftime("%Y-%m-%d"),
              command=" ".join(sys.argv))
  out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows),
                                                 indent=1))
  md = (f"# FP8 accuracy: RMSE of O against the float32 reference\n\n"
        f"`{meta['command']}` ({meta['device']}, jax {meta['jax']}, "
        f"{meta['date']})\n\nshape {rows[0]['shape']}, RMS of the reference "
        f"O: {rows[0]['ref_rms']:.3f} (normal inputs)\n\n{table(rows)}\n")
  out.with_suffix(".md").write_text(md)
  print(md)


if __name__ == "__main__":
  main()
