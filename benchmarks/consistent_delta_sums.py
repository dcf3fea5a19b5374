"""Which row sums make the backward's D consistent, and how coarse may they be?

    python benchmarks/consistent_delta_sums.py [--out results/raw/X.md]

``MosaicBlocks(consistent_delta=True)`` (and the portable backward) sum each
row of G = P ∘ (dP − D) in float32, one row reduction a step in the dQ
kernel, which cost 3.5-6.3% of forward+backward on the H200 (thirty-seventh
session). A cheaper sum would come from the tensor cores: a product of the
dS tile with a tile of ones. This script emulates, in float64 with the
kernels' roundings written out (bf16 O from P V with P = exp(S − m)
rounded before its normalisation by l, as the forward's; P and dP in
float32 in the backward; dS rounded to bf16 before the dQ and dK
products), what each choice of the excess e (D + e for dK/dV, dQ − e ⊗
P'K with P'K = round(P) K summed beside dQ, the kernels' form since the
thirty-eighth session) gives against the float64 reference:

- ``none``: the defaults (D = rowsum(dO ∘ O), O in bf16);
- ``float32``: the row sums of G in float32 (what the kernels do);
- ``bf16``: the sums of dS as rounded to bf16 (a bf16 ones-product);
- ``tf32``: the sums of G rounded to tf32 (a tf32 ones-product);
- ``hi+lo``: the sums of dS and of G − dS, each rounded to bf16 (two
  bf16 ones-products);
- ``O + r``: no excess, D from the forward's O before its rounding, as
  ``MosaicBlocks(o_residual=True)`` gives it (O and its rounding residual
  r, each bf16).

Cases: the bf16 margin case (tests/test_attention.py::test_known_margin_case:
1 query, 5 keys of which its packed segment sees 2, d 40) and random
normal inputs of n queries and m keys,
d 64, with and without a direction shared by the keys (``bias``: each key
gets bias · u added, u a random unit vector scaled by sqrt(d) / 4), four
seeds each; the table gives each gradient's largest error over the seeds.

Thirty-ninth session: until then the margin case's row here saw all 5 keys
(its segment ids were dropped) and the forward rounded P after its
normalisation, where the kernels round exp(S − m), whose largest entry, 1,
is exact; so the ``O float32`` column then (D from the forward's O before
rounding) looked no better than none (dK 0.00225 both), which the kernels
in the interpreter do not bear out (results/raw/margin-case-mosaic-
session39-cpu.log: dK 0.00062 against 0.0048 with D from the rounded O).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Case, inputs  # noqa: E402

MODES = ("none", "float32", "bf16", "tf32", "hi+lo", "O + r")


def bf16(x):
  """x rounded to bfloat16 (to nearest even), as float64."""
  b = np.asarray(x, np.float32).view(np.uint32)
  b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
  return b.view(np.float32).astype(np.float64)


def tf32(x):
  """x rounded to tf32 (10 mantissa bits, to nearest), as float64."""
  b = np.asarray(x, np.float32).view(np.uint32)
  b = (b + 0x1000) & 0xFFFFE000
  return b.view(np.float32).astype(np.float64)


def softmax_grads(q, k, v, do, scale, seen):
  """The float64 reference dQ, dK of sum(O ∘ dO); ``seen``: the keys each
  query sees (bool [n, m])."""
  s = np.where(seen, q @ k.T * scale, -np.inf)
  p = np.exp(s - s.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  dp = do @ v.T
  ds = p * (dp - (p * dp).sum(1, keepdims=True))
  return ds @ k * scale, ds.T @ q * scale


def kernel_grads(q, k, v, do, scale, seen, mode):
  """dQ, dK as the kernels round them, with the row excess of ``mode``."""
  s = np.where(seen, q @ k.T * scale, -np.inf)
  m = s.max(1, keepdims=True)
  p_fwd = np.exp(s - m)                       # the forward's exp(S − m)
  l = p_fwd.sum(1, keepdims=True)
  lse = np.log(l[:, 0]) + m[:, 0]
  p = np.exp(s - lse[:, None])                # the backward's P (float32)
  o32 = bf16(p_fwd) @ v / l                   # the forward's P V, P rounded
  o = bf16(o32)                               # O as stored
  dp = do @ v.T
  r = bf16(o32 - o)                           # o_residual's r
  d = (do * (o + r if mode == "O + r" else o)).sum(1)
  g = p * (dp - d[:, None])
  ds = bf16(g)                                # dS of the dQ kernel
  e = {"float32": lambda: g.sum(1),
       "bf16": lambda: ds.sum(1),
       "tf32": lambda: tf32(g).sum(1),
       "hi+lo": lambda: ds.sum(1) + bf16(g - ds).sum(1)}.get(
           mode, lambda: np.zeros_like(d))()
  dq = ds @ k - e[:, None] * (bf16(p) @ k)    # dQ − e ⊗ P'K
  dk = bf16(p * (dp - (d + e)[:, None])).T @ q
  return dq * scale, dk * scale


def errors(q, k, v, do, seen):
  scale = q.shape[-1] ** -0.5
  ref = softmax_grads(q, k, v, do, scale, seen)
  return {m: [np.abs(x - r).max() for x, r in
              zip(kernel_grads(q, k, v, do, scale, seen, m), ref)]
          for m in MODES}


def margin_case():
  case = Case(dtype="bfloat16", seq_q=1, seq_kv=5, num_q_heads=1,
              num_kv_heads=1, head_dim=40, segments="packed")
  q, k, v, do, q_seg, kv_seg = inputs(case, seed=13)
  seen = np.asarray(q_seg)[0][:, None] == np.asarray(kv_seg)[0][None]
  return [bf16(np.asarray(x, np.float32)[0, :, 0])
          for x in (q, k, v, do)] + [seen]


def random_case(rng, n, m, bias, d=64):
  u = rng.standard_normal(d)
  u *= np.sqrt(d) / 4 / np.linalg.norm(u)
  q, k, v, do = (rng.standard_normal((r, d)) for r in (n, m, m, n))
  return [bf16(x) for x in (q, k + bias * u, v, do)] + [np.ones((n, m),
                                                                bool)]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", type=Path, help="also write the table here")
  args = p.parse_args(argv)
  rows = [("margin case (1 × 5, d 40)", [errors(*margin_case())])]
  rng = np.random.default_rng(0)
  for n, m in ((64, 5), (64, 64), (128, 512), (256, 2048)):
    for bias in (0, 4):
      rows.append((f"{n} × {m}, bias {bias}",
                   [errors(*random_case(rng, n, m, bias)) for _ in range(4)]))
  lines = ["| case | " + " | ".join(f"{m} dQ / dK" for m in MODES) + " |",
           "|---|" + "---|" * len(MODES)]
  for name, runs in rows:
    cells = [" / ".join(f"{max(r[m][i] for r in runs):.5f}" for i in (0, 1))
             for m in MODES]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  table = "\n".join(lines)
  print(table)
  if args.out:
    args.out.write_text(f"`python benchmarks/consistent_delta_sums.py`: the "
                        f"largest |error| against float64 over 4 seeds "
                        f"(margin case: 1).\n\n{table}\n")


if __name__ == "__main__":
  main()
