"""Time flashjax's portable kernels over a set of block configs on the GPU.

    python benchmarks/tune_blocks.py --out benchmarks/results/tune-h100.json

For each (head_dim, causal) at batch 4 × seq 4096 × (2048 / head_dim) heads,
bf16, times the forward alone over FWD candidates (with the default backward),
then forward+backward over BWD candidates (with the best forward), and prints
the best of each. The defaults in flashjax/config.py cite this file's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashjax  # noqa: E402
from benchmarks.bench_attention import (describe, flops, make_call,  # noqa: E402
                                        time_call)
from flashjax import Blocks, Config, default_config  # noqa: E402

FWD = [Blocks(128, 64, 4, 3), Blocks(128, 64, 8, 3), Blocks(128, 128, 8, 3),
       Blocks(64, 64, 4, 3), Blocks(128, 32, 4, 4), Blocks(64, 128, 4, 3),
       Blocks(128, 64, 4, 4)]
BWD = [Blocks(64, 64, 4, 2), Blocks(64, 64, 8, 2), Blocks(128, 64, 8, 2),
       Blocks(64, 128, 8, 2), Blocks(32, 64, 4, 3), Blocks(64, 32, 4, 3),
       Blocks(128, 128, 8, 1), Blocks(32, 128, 8, 2)]


def run(args):
  rows = []
  for d in args.head_dims:
    h = 2048 // d
    for causal in (False, True):
      keys = jax.random.split(jax.random.PRNGKey(d + causal), 8)
      sets = [tuple(jax.random.normal(keys[4 * i + j], (4, 4096, h, d),
                                      jnp.bfloat16) for j in range(4))
              for i in range(2)]
      best = {}
      for mode, cands in (("fwd", FWD), ("fwd_bwd", BWD)):
        for blocks in cands:
          base = default_config(d)
          cfg = (Config(fwd=blocks, bwd=base.bwd) if mode == "fwd" else
                 Config(fwd=best["fwd"][1], bwd=blocks))
          fn = lambda q, k, v, cfg=cfg: flashjax.attention(
              q, k, v, causal=causal, config=cfg)
          inputs = [s if mode == "fwd_bwd" else s[:3] for s in sets]
          row = dict(d=d, h=h, causal=causal, mode=mode, blocks=str(blocks))
          try:
            call = make_call(fn, mode).lower(*inputs[0]).compile()
            row["ms"] = time_call(call, inputs, 10, 3)
            row["tflops"] = flops(4, 4096, h, d, causal, mode) / row["ms"] / 1e9
            if mode not in best or row["ms"] < best[mode][0]:
              best[mode] = (row["ms"], blocks)
          except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
            row["error"] = describe(e)
          print(json.dumps(row), flush=True)
          rows.append(row)
      print(f"BEST d={d} causal={causal}: fwd {best['fwd']} bwd {best['fwd_bwd']}",
            flush=True)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="benchmarks/results/tune.json")
  p.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
  args = p.parse_args(argv)
  rows = run(args)
  Path(args.out).write_text(json.dumps(dict(
      device=jax.devices()[0].device_kind, jax=jax.__version__, rows=rows),
      indent=1))


if __name__ == "__main__":
  main()
