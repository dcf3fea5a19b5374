"""Time flashjax's kernels over a set of tilings on the GPU.

    python benchmarks/tune_blocks.py --out benchmarks/results/tune-h100.json
    python benchmarks/tune_blocks.py --backend mosaic --out benchmarks/results/tune-mosaic-h100.json

For each (head_dim, causal) at batch 4 × seq 4096 × (2048 / head_dim) heads,
bf16. Triton: times the forward alone over FWD candidates (with the default
backward), then forward+backward over BWD candidates (with the best forward).
Mosaic: the forward's tiling over MOSAIC candidates, then the backward's over
MOSAIC_BWD (forward+backward timed with the best forward); only tilings that fit
in shared memory; with ``--fp8``, the FP8 forward (e4m3 inputs) over
MOSAIC_FP8. Prints the best of each; the defaults in flashjax/config.py
cite these files. The JSON is rewritten after every row, so a run cut short
keeps what it timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashjax  # noqa: E402
from benchmarks.bench_attention import (describe, flops,  # noqa: E402
                                        fp8_inputs, make_call, time_call)
from flashjax import Blocks, Config, MosaicBlocks, default_config  # noqa: E402
from flashjax.config import SMEM_BYTES  # noqa: E402

FWD = [Blocks(128, 64, 4, 3), Blocks(128, 64, 8, 3), Blocks(128, 128, 8, 3),
       Blocks(64, 64, 4, 3), Blocks(128, 32, 4, 4), Blocks(64, 128, 4, 3),
       Blocks(128, 64, 4, 4)]
BWD = [Blocks(64, 64, 4, 2), Blocks(64, 64, 8, 2), Blocks(128, 64, 8, 2),
       Blocks(64, 128, 8, 2), Blocks(32, 64, 4, 3), Blocks(64, 32, 4, 3),
       Blocks(128, 128, 8, 1), Blocks(32, 128, 8, 2)]
MOSAIC = [MosaicBlocks(64, 2), MosaicBlocks(128, 2), MosaicBlocks(64, 3),
          MosaicBlocks(128, 3), MosaicBlocks(64, 4), MosaicBlocks(128, 4),
          MosaicBlocks(256, 2), MosaicBlocks(256, 3)]
# the backward's own: the above with 128-row query tiles in dK/dV too, and
# the likeliest on a persistent grid, fused, with deferred waits (dK/dV)
# and the intra-warpgroup overlap (dQ)
MOSAIC_BWD = MOSAIC + [MosaicBlocks(m.block_kv, m.stages, 128) for m in MOSAIC] \
    + [MosaicBlocks(128, stages, 64, persistent=True) for stages in (2, 3)] \
    + [MosaicBlocks(128, stages, 64, persistent=persistent, fused_dq=True)
       for stages in (2, 3) for persistent in (False, True)] \
    + [MosaicBlocks(128, stages, 64, fused_dq=True, deferred_waits=True)
       for stages in (2, 3)] \
    + [MosaicBlocks(kv, stages, 64, deferred_waits=deferred,
                    intra_wg_overlap=overlap)
       for kv in (64, 128) for stages in (2, 3)
       for deferred, overlap in ((True, False), (False, True), (True, True))]
# the forward's: the above, the likeliest of them with a persistent grid, and
# those with the intra-warpgroup overlap, on either grid
MOSAIC_FWD = MOSAIC + [
    MosaicBlocks(kv, stages, persistent=True)
    for kv, stages in ((128, 2), (128, 3), (256, 2))] + [
        MosaicBlocks(kv, stages, persistent=persistent, intra_wg_overlap=True)
        for kv, stages in ((64, 3), (128, 2), (128, 3), (256, 2))
        for persistent in (False, True)]


# the FP8 forward: half the bytes per K/V tile, so deeper pipelines fit
MOSAIC_FP8 = MOSAIC_FWD + [MosaicBlocks(128, 5), MosaicBlocks(128, 6),
                           MosaicBlocks(256, 4)]


def tiling_of(cfg, backend, mode):
  """The part of ``cfg`` that ``mode`` tunes."""
  if backend == "mosaic":
    return cfg.mosaic if mode == "fwd" else cfg.mosaic_bwd
  return cfg.fwd if mode == "fwd" else cfg.bwd


def candidates(backend, mode, d, causal, best, fp8=False, seq=None):
  """The Configs to time for one mode (best: the fastest so far, by mode),
  the default tiling first (each run's baseline); what a mode does not tune
  is the default for (d, causal, fp8, seq)."""
  base = default_config(d, causal=causal, fp8=fp8, seq_kv=seq)
  best_fwd = best.get("fwd", (None, base))[1]   # the default if not tuned
  if backend == "mosaic":
    # the forward's tiling first, then the backward's with that forward
    if mode == "fwd":
      tilings = [m for m in (MOSAIC_FP8 if fp8 else MOSAIC_FWD)
                 if m.smem_bytes(d, 2, fp8=fp8) <= SMEM_BYTES]
      make = lambda m: dataclasses.replace(base, mosaic=m)
    else:
      tilings = [m for m in MOSAIC_BWD
                 if m.smem_bytes(d, 2, backward=True) <= SMEM_BYTES]
      make = lambda m: dataclasses.replace(best_fwd, mosaic_bwd=m)
  elif mode == "fwd":
    tilings, make = FWD, lambda b: Config(fwd=b, bwd=base.bwd)
  else:
    tilings, make = BWD, lambda b: Config(fwd=best_fwd.fwd, bwd=b)
  default = tiling_of(base, backend, mode)
  return [make(t) for t in [default] + [t for t in tilings if t != default]]


def save(path, rows):
  Path(path).write_text(json.dumps(dict(
      device=jax.devices()[0].device_kind, jax=jax.__version__, rows=rows),
      indent=1))


def run(args):
  rows = []
  for d in args.head_dims:
    h = args.hidden // d
    for causal in args.causal:
      keys = jax.random.split(jax.random.PRNGKey(d + causal), 8)
      sets = [tuple(jax.random.normal(keys[4 * i + j],
                                      (args.batch, args.seq, h, d),
                                      jnp.bfloat16) for j in range(4))
              for i in range(2)]
      if args.fp8:     # e4m3 inputs quantised per tensor, outside the timing
        sets = [fp8_inputs(*s[:3]) for s in sets]
      best = {}
      for mode in ("fwd",) if args.fp8 else args.modes:
        for i, cfg in enumerate(candidates(args.backend, mode, d, causal,
                                           best, args.fp8, args.seq)):
          tiling = tiling_of(cfg, args.backend, mode)
          # the default (first) is always timed: the baseline of --only
          if i > 0 and not any(part in str(tiling) for part in args.only):
            continue
          def fn(q, k, v, *descales, cfg=cfg):
            kw = dict(zip(("q_descale", "k_descale", "v_descale"), descales))
            return flashjax.attention(q, k, v, causal=causal, config=cfg,
                                      backend=args.backend, **kw)
          inputs = [s if mode == "fwd_bwd" or args.fp8 else s[:3]
                    for s in sets]
          row = dict(backend=args.backend, d=d, h=h, causal=causal, mode=mode,
                     blocks=str(tiling), fp8=args.fp8, default=i == 0)
          try:
            call = make_call(fn, mode).lower(*inputs[0]).compile()
            row["ms"] = time_call(call, inputs, 10, 3)
            row["tflops"] = flops(args.batch, args.seq, h, d, causal,
                                  mode) / row["ms"] / 1e9
            if mode not in best or row["ms"] < best[mode][0]:
              best[mode] = (row["ms"], cfg)
          except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
            row["error"] = describe(e)
          print(json.dumps(row), flush=True)
          rows.append(row)
          save(args.out, rows)
      for mode, (ms, cfg) in best.items():
        print(f"BEST {args.backend} d={d} causal={causal} {mode}: {ms:.3f} ms "
              f"{cfg}", flush=True)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="benchmarks/results/tune.json")
  p.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
  p.add_argument("--backend", choices=["triton", "mosaic"], default="triton")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=4096)
  p.add_argument("--hidden", type=int, default=2048,
                 help="heads = hidden // head_dim")
  p.add_argument("--modes", nargs="+", choices=["fwd", "fwd_bwd"],
                 default=["fwd", "fwd_bwd"],
                 help="fwd alone tunes only the forward's tiling")
  p.add_argument("--fp8", action="store_true",
                 help="tune the FP8 forward (e4m3 inputs) instead")
  p.add_argument("--causal", nargs="+", default=[False, True],
                 type=lambda x: {"true": True, "false": False}[x.lower()],
                 help="causal settings: true, false")
  p.add_argument("--only", nargs="+", default=[""],
                 help="time only the tilings whose text contains one of "
                      "these, e.g. 'fused_dq=True' (a time-limited run), "
                      "and the default")
  args = p.parse_args(argv)
  run(args)


if __name__ == "__main__":
  main()
