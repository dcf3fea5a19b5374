"""Random parity sweep: many more draws of the property test's space.

``tests/test_attention.py::test_property_random_shapes`` runs 5 fixed
examples in CI. This draws ``--cases`` random cases (dtype, lengths 1-299,
GQA/MQA, head dims, causal, window, softcap, padded or packed segment ids)
from a seeded generator and checks each with the test suite's own rule
(``tests/harness.check_attention``: O, L, dQ, dK, dV against the float32
dense reference), on one backend. On the CPU the kernels run in interpret
mode (``mosaic``: Mosaic GPU's interpreter, whose race detector must find
no race either); on a GPU compiled. Prints one
line a case (the worst error as a fraction of its tolerance) and the
failures at the end; exits 1 if any case failed. ``--options`` sets
Hopper options over each case's default tiling, as bench_attention.py's
impl names do (``field=value`` for the forward, ``bwd.field=value`` for
the backward), to check an option on many shapes before it runs on a GPU.

  python benchmarks/parity_sweep.py --backend triton --cases 400 --seed 1
  NPROC=8 python benchmarks/parity_sweep.py --backend mosaic --cases 150
  NPROC=8 python benchmarks/parity_sweep.py --backend mosaic --cases 60 \
      --options shared_full=True bwd.shared_full=True
  NPROC=8 python benchmarks/parity_sweep.py --backend mosaic --cases 40 \
      --unbanded --options multicast=True
  NPROC=8 python benchmarks/parity_sweep.py --backend mosaic --cases 40 \
      --head-dims 160 192 256          # the d 256 forward, portable backward
  NPROC=8 python benchmarks/parity_sweep.py --backend mosaic --cases 40 \
      --deterministic
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np
from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import Case, check_attention, inputs  # noqa: E402

from benchmarks.bench_attention import parse_options  # noqa: E402
from flashjax.checks import make_plan  # noqa: E402


def draw(rng: np.random.Generator, backend: str,
         unbanded: bool = False,
         head_dims: list[int] | None = None) -> tuple[Case, int]:
  """One random case and its input seed. The Hopper backend takes bf16/fp16
  and head dims 64/128 (40 and 96 padded); the portable one everything.
  ``unbanded``: neither causal nor a window (the same draws otherwise);
  ``head_dims``: the head dims to draw from instead (e.g. d 256's)."""
  mosaic = backend == "mosaic"
  dtypes = ["bfloat16", "float16"] + ([] if mosaic else ["float32"])
  if head_dims is None:
    head_dims = [40, 64, 96, 128] + ([] if mosaic else [8])
  kv_heads, group = int(rng.choice([1, 2])), int(rng.choice([1, 3]))
  side = lambda: None if rng.integers(3) == 0 else int(rng.integers(0, 100))
  case = Case(
      dtype=str(rng.choice(dtypes)), batch=int(rng.integers(1, 3)),
      seq_q=int(rng.integers(1, 300)), seq_kv=int(rng.integers(1, 300)),
      num_q_heads=kv_heads * group, num_kv_heads=kv_heads,
      head_dim=int(rng.choice(head_dims)), causal=bool(rng.integers(2)),
      window=None if rng.integers(2) else (side(), side()),
      softcap=None if rng.integers(3) else float(rng.uniform(1, 50)),
      segments=[None, "padded", "packed"][int(rng.integers(3))])
  if unbanded:
    case = dataclasses.replace(case, causal=False, window=None)
  return case, int(rng.integers(2**16))


def configured(case: Case, seed: int, fwd: dict, bwd: dict):
  """The Hopper config the case would run with, ``fwd``/``bwd`` fields set
  (None without options)."""
  if not fwd and not bwd:
    return None
  q, k, v, _, q_seg, kv_seg = inputs(case, seed)
  plan, _, _ = make_plan(q, k, v, backend="mosaic",
                         **case.kwargs(q_seg, kv_seg))
  config = plan.config
  return dataclasses.replace(
      config, mosaic=dataclasses.replace(config.mosaic, **fwd),
      mosaic_bwd=dataclasses.replace(config.mosaic_bwd, **bwd))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--backend", choices=["triton", "mosaic"],
                      default="triton")
  parser.add_argument("--cases", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the case generator")
  parser.add_argument("--options", nargs="*", default=[],
                      help="mosaic only: MosaicBlocks fields over the "
                      "default tiling, field=value (forward) or "
                      "bwd.field=value (backward)")
  parser.add_argument("--unbanded", action="store_true",
                      help="only cases without a band (neither causal nor "
                      "a window), where the persistent grid's unbanded "
                      "options (multicast, Stream-K) apply")
  parser.add_argument("--head-dims", type=int, nargs="+", default=None,
                      help="draw the head dim from these (default: 40, 64, "
                      "96, 128, and 8 on the portable backend)")
  parser.add_argument("--deterministic", action="store_true",
                      help="flashjax.attention(deterministic=True)")
  args = parser.parse_args(argv)
  fwd, bwd = parse_options(args.options)
  if (fwd or bwd) and args.backend != "mosaic":
    parser.error("--options needs --backend mosaic")
  rng = np.random.default_rng(args.seed)
  failures, start = [], time.time()
  # a progress bar on a terminal (none in a log: disable=None)
  for i in tqdm(range(args.cases), desc=args.backend, unit="case",
                disable=None):
    case, seed = draw(rng, args.backend, args.unbanded, args.head_dims)
    try:
      extra = {} if not (fwd or bwd) else dict(
          config=configured(case, seed, fwd, bwd))
      if args.deterministic:
        extra["deterministic"] = True
      races = args.backend == "mosaic" and jax.default_backend() != "gpu"
      if races:
        interpret_pallas_call.reset_gpu_interpret_mode_state()
      _, report = check_attention(case, seed=seed, backend=args.backend,
                                  **extra)
      if races and interpret_pallas_call.get_races().races_found:
        raise AssertionError(f"{case.id}: the interpreter found a race")
      worst = max(err / tol for err, tol in report.values())
      print(f"{i} ok {case.id} seed={seed} worst err/tol {worst:.2f}",
            flush=True)
    except Exception as e:  # a failed rule (AssertionError) or a crash
      failures.append(f"{case.id} seed={seed}: {type(e).__name__}: "
                      f"{str(e)[:300]}")
      print(f"{i} FAIL {failures[-1]}", flush=True)
  print(f"{args.backend}{''.join(' +' + o for o in args.options)}"
        f"{' (unbanded)' * args.unbanded}: "
        f"{args.cases - len(failures)} of {args.cases} cases passed "
        f"(generator seed {args.seed}, {time.time() - start:.0f} s)")
  for f in failures:
    print("FAIL", f)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
