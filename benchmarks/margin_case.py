"""The bf16 margin case (tests/test_attention.py::test_known_margin_case):
its dQ error against float32, as the kernels compute it and with K centred
on its mean over the sequence (the same attention in exact arithmetic).

    python benchmarks/margin_case.py [--backend mosaic] [--case second|third]

The backward's D = rowsum(dO ∘ O) comes from the bf16 O, so dS's rows do not
sum exactly to 0, and dQ = dS K carries rowsum(dS) times the keys' mean; with
5 keys that mean is large. Centring K (flashjax.fp8.center_keys) takes that
term out of dQ, at the price of rounding K − k̄ to bf16 (which moves O).
Since the thirty-fourth session the portable backward corrects it inside:
its dQ kernel sums each row of dS (the excess over dL) and hands the dK/dV
kernel D + excess, consistent with its own P; dQ was taken as dS (K − k̄)
until the thirty-eighth session, since then exactly as dQ − excess ⊗ P'K
(P'K summed beside dQ: one more product a step). The
log before that: results/margin-case-cpu.log; after:
results/margin-case-session34-cpu.log. ``--backend mosaic`` runs the
Hopper kernels (in the interpreter on a CPU; d 40 is padded to 64) with
their defaults, ``MosaicBlocks(o_residual=True)`` since the thirty-ninth
session: the forward also writes O's rounding residual r so that the
backward kernels take D from the unrounded O + r
(results/raw/margin-case[-2,-3]-mosaic-session39-cpu.log); with D from the
rounded O (``o_residual=False``, the defaults before), and with that and
``MosaicBlocks(consistent_delta=True)``, which does what the portable
backward does (thirty-sixth session: results/raw/margin-case-mosaic-
session36-cpu.log). ``--case second``: the fp16 case benchmarks/
parity_sweep.py found in the thirty-eighth session (causal, packed, 6
keys), ``--case third`` the bf16 one it found next, which the k̄ form missed
on every backend (results/raw/margin-case-{2,3}-{mosaic,triton}-session38-
cpu.log; the k̄ form's runs: margin-case[-2]-*-session38-kbar-cpu.log).
Each run prints
the errors and the pass rule's tolerances (tests/harness.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

# a host thread per interpreted warpgroup (as tests/conftest.py sets it)
os.environ.setdefault("NPROC", "8")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashjax  # noqa: E402
from flashjax import fp8  # noqa: E402
from harness import (FLOOR, Case, inputs, max_err, reference_outputs,  # noqa: E402
                     run)

# (case, seed): the property test's draw (eighth session) and
# parity_sweep.py's (thirty-eighth)
CASES = {
    "first": (Case(dtype="bfloat16", seq_q=1, seq_kv=5, num_q_heads=1,
                   num_kv_heads=1, head_dim=40, segments="packed"), 13),
    "second": (Case(dtype="float16", batch=2, seq_q=100, seq_kv=6,
                    num_q_heads=3, num_kv_heads=1, head_dim=40, causal=True,
                    segments="packed"), 65007),
    "third": (Case(dtype="bfloat16", batch=2, seq_q=221, seq_kv=6,
                   num_q_heads=3, num_kv_heads=1, head_dim=64, causal=True,
                   segments="packed"), 61349)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--backend", default="auto", choices=["auto", "triton",
                                                       "mosaic"])
  p.add_argument("--case", default="first", choices=sorted(CASES))
  args = p.parse_args(argv)
  case, seed = CASES[args.case]
  q, k, v, do, q_seg, kv_seg = inputs(case, seed=seed)
  kw = dict(case.kwargs(q_seg, kv_seg), backend=args.backend)
  ref32 = reference_outputs(q, k, v, do, kw, upcast=True)
  lowp = reference_outputs(q, k, v, do, kw, upcast=False)
  # the pass rule's tolerance of each output (tests/harness.check_attention)
  print(json.dumps(dict(case=case.id, seed=seed, **{
      f"{n}_tol": 2 * float(max_err(lowp[n], ref32[n])) + FLOOR[case.dtype]
      * max(1.0, float(abs(ref32[n]).max()))
      for n in ("o", "dq", "dk", "dv")})))
  k_centred, _ = fp8.center_keys(k)
  runs = [("as given", k, {}), ("K centred", k_centred, {})]
  if args.backend == "mosaic":
    base = flashjax.default_config(64, causal=case.causal)
    rounded = dataclasses.replace(base, mosaic=dataclasses.replace(
        base.mosaic, o_residual=False))
    runs.append(("as given, D from the rounded O", k, dict(config=rounded)))
    runs.append(("as given, D from the rounded O, consistent_delta", k, dict(
        config=dataclasses.replace(rounded, mosaic_bwd=dataclasses.replace(
            base.mosaic_bwd, consistent_delta=True)))))
  for name, keys, extra in runs:
    got = run(flashjax.attention, q, keys, v, do, {**kw, **extra})
    print(json.dumps(dict(keys=name, **{
        f"{n}_max_err": float(max_err(got[n], ref32[n]))
        for n in ("o", "dq", "dk", "dv") if n in got})))


if __name__ == "__main__":
  main()
