"""Which Hopper kernel hangs on the GPU in one test case, and under which options.

    python benchmarks/debug_hang.py [--case window|persistent|softcap] [--timeout 90] [--pieces I ...]

``tests/test_attention.py::test_parity[bfloat16-b2-sq150-skv300-h4:4-d64-
winNone-3-mosaic]`` started and never finished in two compiled runs (v6 on an
H100, `results/raw/tests-attention-large-mosaic-v6-h100-cut.log`; the H200,
`results/tests-mosaic-h200-cut.log`) while it passes in Mosaic GPU's CPU
interpreter. This runs its pieces (the forward; the forward and backward)
with the default tiling and with single options changed, and the test's
dense references alone, each in its own process under a time limit, and
prints one JSON line per piece: ``ok`` (and the max error against the float32
reference), ``hang`` or ``error``. ``--case persistent``: the same for
``tests/test_mosaic.py``'s first case (causal, window (50, None), d 128),
whose persistent-grid and intra-warpgroup-overlap tests did not finish on the
H200.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

PIECE = r"""
import dataclasses, json, sys, time
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, ".")
import flashjax
mode, fwd_opts, bwd_opts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
case = json.loads(sys.argv[4])
b, sq, skv, h, kvh, d = (case[n] for n in ("b", "sq", "skv", "h", "kvh", "d"))
mask_kw = dict(causal=case["causal"], softcap=case.get("softcap"),
               window=case["window"] and tuple(case["window"]))
keys = jax.random.split(jax.random.key(0), 4)
q = jax.random.normal(keys[0], (b, sq, h, d), jnp.bfloat16)
k, v = (jax.random.normal(kk, (b, skv, kvh, d), jnp.bfloat16) for kk in keys[1:3])
do = jax.random.normal(keys[3], (b, sq, h, d), jnp.bfloat16)
config = flashjax.default_config(d, causal=case["causal"], seq_kv=skv)
config = dataclasses.replace(
    config, mosaic=dataclasses.replace(config.mosaic, **fwd_opts),
    mosaic_bwd=dataclasses.replace(config.mosaic_bwd, **bwd_opts))
kw = dict(mask_kw, backend="mosaic", config=config)
ref_kw = dict(mask_kw, backend="reference")
f32 = [x.astype(jnp.float32) for x in (q, k, v)]
if mode == "reference":     # the test's references alone (bf16 and float32)
  fn = lambda *x: jax.vjp(lambda *y: flashjax.attention(*y, **ref_kw), *x)[1](do)
  want = jax.vjp(lambda *y: flashjax.attention(*y, **ref_kw), *f32)[1](do.astype(jnp.float32))
elif mode == "fwd":
  fn = lambda *x: [flashjax.attention(*x, **kw)]
  want = [flashjax.attention(*f32, **ref_kw)]
else:
  fn = lambda *x: jax.vjp(lambda *y: flashjax.attention(*y, **kw), *x)[1](do)
  want = jax.vjp(lambda *y: flashjax.attention(*y, **ref_kw), *f32)[1](do.astype(jnp.float32))
jax.block_until_ready(want)
# compiling (XLA, Mosaic GPU, ptxas) and running timed apart, each reported as
# soon as it is done, so a piece cut by its time limit says which one it was in
t0 = time.perf_counter()
compiled = jax.jit(fn).lower(q, k, v).compile()
print(json.dumps(dict(compiled_s=round(time.perf_counter() - t0, 2))), flush=True)
if sys.argv[5:] == ["compile_only"]:
  sys.exit(0)
t0 = time.perf_counter()
got = jax.block_until_ready(compiled(q, k, v))
print(json.dumps(dict(first_run_s=round(time.perf_counter() - t0, 2))), flush=True)
err = max(float(np.max(np.abs(np.asarray(g, np.float32) - np.asarray(w)))) for g, w in zip(got, want))
print(json.dumps(dict(max_err=err)))
"""

# Each case: a test case's shape and mask, and its pieces (mode, forward
# options, backward options) over default_config(d, causal=...).
CASES = {
    # tests/test_attention.py's winNone-3 case. On the H200
    # (results/debug-hang-h200.md) the persistent forward with 256-row K/V
    # tiles and the dK/dV kernel with 128-row query tiles did not finish; the
    # others did.
    "window": (dict(b=2, sq=150, skv=300, h=4, kvh=4, d=64, causal=False,
                    window=[None, 3]), [
        ("fwd", {"persistent": False}, {}),
        ("fwd", {"persistent": True}, {}),
        ("fwd", {"persistent": True, "block_kv": 128}, {}),
        ("fwd_bwd", {"persistent": False}, {}),
        # the register split: more for the producer (56; compute 224), or
        # more for the compute warpgroups (240; producer 24)
        ("fwd", {"persistent": True, "compute_registers": 224}, {}),
        ("fwd", {"persistent": True, "compute_registers": 240}, {}),
        ("fwd_bwd", {"persistent": False}, {"block_q_dkv": 128}),
    ]),
    # tests/test_mosaic.py's CASES[0], whose persistent-grid and
    # intra-warpgroup-overlap tests (both with 64-row K/V tiles, forward and
    # backward persistent) did not finish on the H200
    # (results/tests-options-h200.log): which kernel, under which option.
    "persistent": (dict(b=1, sq=200, skv=300, h=4, kvh=2, d=128, causal=True,
                        window=[50, None]), [
        ("fwd", {"block_kv": 64}, {}),
        ("fwd", {"block_kv": 64, "persistent": True}, {}),
        ("fwd", {"block_kv": 128, "persistent": True}, {}),
        ("fwd", {"block_kv": 64, "intra_wg_overlap": True}, {}),
        ("fwd_bwd", {}, {"block_kv": 64, "persistent": True}),
        ("fwd_bwd", {}, {"block_kv": 64}),
    ]),
    # tests/test_attention.py's d 64 causal softcap case, whose worker ended
    # on the H200 when short causal forwards were persistent (mirrored pairs;
    # results/raw/tests-prefetch-h200.log): there the persistent forward did
    # not finish with or without the Q prefetch, one tile a CTA did
    # (results/raw/debug-hang-softcap-h200.log). Its 113 query rows are one
    # tile, so each CTA of the persistent grid runs one tile, as without it:
    # the kernels differ in code (loops, dynamic indices and phases), not in
    # work. Now the pairs run through one copy of the tile body
    # (pipeline.Tiles.run), and the register split is varied: ptxas failing
    # to fit a warpgroup's code in its setmaxnreg budget can leave the other
    # warpgroups' setmaxnreg.inc waiting for ever (triton-lang/triton#9786).
    # The producer gets 504 - 2 · compute_registers: 40 by default, 56 at
    # 224, 72 at 216, 24 at 240. On the H200 (fifteenth session,
    # results/debug-hang-h200.md) every split hung with nothing spilled, as
    # did --override kvh=8, softcap=null and b=1; skv=113 finished: at 203
    # keys the two warpgroups ran different steps (--steps 128). Since both
    # mask over the CTA's rows it finishes (sixteenth session,
    # results/raw/hang-check-session16-h200.log).
    "softcap": (dict(b=2, sq=113, skv=203, h=8, kvh=2, d=64, causal=True,
                     window=None, softcap=20.0), [
        ("fwd", {}, {}),
        ("fwd", {"persistent": True}, {}),
        ("fwd", {"persistent": True, "compute_registers": 224}, {}),
        ("fwd", {"persistent": True, "compute_registers": 216}, {}),
        ("fwd", {"persistent": True, "compute_registers": 240}, {}),
        ("fwd_bwd", {}, {}),
    ]),
}

def warpgroup_steps(case, block_kv: int, per_warpgroup: bool) -> list:
  """Per query tile (128 rows) of ``case``: each compute warpgroup's K/V
  steps, "M" masked or "U" not, as the forward's loop runs them: with the
  split of masked tiles ``per_warpgroup`` (each warpgroup's 64 rows apart,
  the kernels before the fifteenth session) or over the CTA's rows (now)."""
  from flashjax.masks import MaskSpec
  window = case["window"] and tuple(case["window"])
  mask = MaskSpec(case["sq"], case["skv"], causal=case["causal"],
                  window=window, has_segments=case.get("segments", False))
  num_kv = -(-case["skv"] // block_kv)
  tiles = []
  for cta in range(0, -(-case["sq"] // 128) * 128, 128):
    lo, hi = (int(x) for x in mask.kv_block_range(cta, 128, block_kv, num_kv))
    steps = []
    for wg in range(2):
      if mask.is_trivial(num_kv * block_kv):
        steps.append("U" * max(hi - lo, 0))
        continue
      rows = (cta + 64 * wg, 64) if per_warpgroup else (cta, 128)
      a, b = (int(x) for x in mask.kv_full_range(*rows, block_kv))
      a = min(max(a, lo), hi)
      b = min(max(b, a), hi)
      steps.append("M" * (a - lo) + "U" * (b - a) + "M" * (hi - b))
    tiles.append(steps)
  return tiles


def _reports(stdout) -> dict:
  """The JSON lines a piece printed (all of them, or those before it was cut)."""
  if isinstance(stdout, bytes):
    stdout = stdout.decode(errors="replace")
  out = {}
  for line in (stdout or "").splitlines():
    if line.startswith("{"):
      out.update(json.loads(line))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--timeout", type=float, default=90.0,
                      help="seconds per piece before it counts as a hang")
  parser.add_argument("--ptxas", action="store_true",
                      help="compile each piece only, with MOSAIC_GPU_DUMP_PTXAS=1, "
                      "and report ptxas's register and spill lines per kernel")
  parser.add_argument("--case", choices=sorted(CASES), default="window",
                      help="the test case and its pieces")
  parser.add_argument("--pieces", type=int, nargs="*",
                      help="run only these pieces of the case (0-based)")
  parser.add_argument("--steps", type=int, metavar="BLOCK_KV",
                      help="run nothing: print each warpgroup's masked (M) and "
                      "unmasked (U) K/V steps per query tile at these K/V tiles, "
                      "split per warpgroup (before) and per CTA (now)")
  parser.add_argument("--override", nargs="*", default=[], metavar="KEY=JSON",
                      help="change the case's shape or mask, e.g. kvh=8 softcap=null")
  args = parser.parse_args(argv)
  env = dict(os.environ, MOSAIC_GPU_DUMP_PTXAS="1") if args.ptxas else None
  case, pieces = CASES[args.case]
  case = dict(case, **{k: json.loads(v) for k, v in
                       (item.split("=", 1) for item in args.override)})
  if args.override:
    print(json.dumps(dict(case=case)), flush=True)
  if args.steps:
    print(json.dumps(dict(case=case, block_kv=args.steps, **{
        split: warpgroup_steps(case, args.steps, split == "per_warpgroup")
        for split in ("per_warpgroup", "per_cta")})))
    return
  for i, (mode, fwd_opts, bwd_opts) in enumerate(pieces):
    if args.pieces is not None and i not in args.pieces:
      continue
    row = dict(mode=mode, fwd=fwd_opts, bwd=bwd_opts)
    try:
      out = subprocess.run(
          [sys.executable, "-c", PIECE, mode, json.dumps(fwd_opts),
           json.dumps(bwd_opts), json.dumps(case)] + (["compile_only"] if args.ptxas else []),
          capture_output=True, text=True, timeout=args.timeout, env=env)
      row.update(_reports(out.stdout))
      if args.ptxas:
        row.update(ptxas=[line.strip() for line in
                          (out.stdout + out.stderr).splitlines()
                          if re.search(r"registers|spill|stack frame", line)])
      if out.returncode == 0:
        row.update(status="compiled" if args.ptxas else "ok")
      else:
        row.update(status="error", stderr=out.stderr.strip().splitlines()[-3:])
    except subprocess.TimeoutExpired as cut:
      row.update(_reports(cut.stdout), status="hang", seconds=args.timeout)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
