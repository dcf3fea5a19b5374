"""Which Hopper kernel hangs on the GPU in one test case, and under which options.

    python benchmarks/debug_hang.py [--timeout 90]

``tests/test_attention.py::test_parity[bfloat16-b2-sq150-skv300-h4:4-d64-
winNone-3-mosaic]`` started and never finished in two compiled runs (v6 on an
H100, `results/raw/tests-attention-large-mosaic-v6-h100-cut.log`; the H200,
`results/tests-mosaic-h200-cut.log`) while it passes in Mosaic GPU's CPU
interpreter. This runs its pieces (the forward; the forward and backward)
with the default tiling and with single options changed, and the test's
dense references alone, each in its own process under a time limit, and
prints one JSON line per piece: ``ok`` (and the max error against the float32
reference), ``hang`` or ``error``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

PIECE = r"""
import dataclasses, json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, ".")
import flashjax
mode, fwd_opts, bwd_opts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
b, sq, skv, h, d = 2, 150, 300, 4, 64
keys = jax.random.split(jax.random.key(0), 4)
q = jax.random.normal(keys[0], (b, sq, h, d), jnp.bfloat16)
k, v = (jax.random.normal(kk, (b, skv, h, d), jnp.bfloat16) for kk in keys[1:3])
do = jax.random.normal(keys[3], (b, sq, h, d), jnp.bfloat16)
config = flashjax.default_config(d)
config = dataclasses.replace(
    config, mosaic=dataclasses.replace(config.mosaic, **fwd_opts),
    mosaic_bwd=dataclasses.replace(config.mosaic_bwd, **bwd_opts))
kw = dict(window=(None, 3), backend="mosaic", config=config)
ref_kw = dict(window=(None, 3), backend="reference")
f32 = [x.astype(jnp.float32) for x in (q, k, v)]
if mode == "reference":     # the test's references alone (bf16 and float32)
  got = jax.vjp(lambda *y: flashjax.attention(*y, **ref_kw), q, k, v)[1](do)
  want = jax.vjp(lambda *y: flashjax.attention(*y, **ref_kw), *f32)[1](do.astype(jnp.float32))
elif mode == "fwd":
  got = [jax.jit(lambda *x: flashjax.attention(*x, **kw))(q, k, v)]
  want = [flashjax.attention(*f32, **ref_kw)]
else:
  got = jax.jit(lambda *x: jax.vjp(lambda *y: flashjax.attention(*y, **kw), *x)[1](do))(q, k, v)
  want = jax.vjp(lambda *y: flashjax.attention(*y, **ref_kw), *f32)[1](do.astype(jnp.float32))
jax.block_until_ready(got)
err = max(float(np.max(np.abs(np.asarray(g, np.float32) - np.asarray(w)))) for g, w in zip(got, want))
print(json.dumps(dict(max_err=err)))
"""

PIECES = [
    ("reference", {}, {}),
    ("fwd", {}, {}),
    ("fwd", {"persistent": False}, {}),
    ("fwd_bwd", {"persistent": False}, {}),
    ("fwd_bwd", {}, {}),
    ("fwd_bwd", {"persistent": False}, {"stages": 3}),
    ("fwd_bwd", {"persistent": False}, {"block_q_dkv": 128}),
]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--timeout", type=float, default=90.0,
                      help="seconds per piece before it counts as a hang")
  args = parser.parse_args(argv)
  for mode, fwd_opts, bwd_opts in PIECES:
    row = dict(mode=mode, fwd=fwd_opts, bwd=bwd_opts)
    try:
      out = subprocess.run(
          [sys.executable, "-c", PIECE, mode, json.dumps(fwd_opts),
           json.dumps(bwd_opts)], capture_output=True, text=True,
          timeout=args.timeout)
      if out.returncode == 0:
        row.update(status="ok", **json.loads(out.stdout.strip().splitlines()[-1]))
      else:
        row.update(status="error", stderr=out.stderr.strip().splitlines()[-3:])
    except subprocess.TimeoutExpired:
      row.update(status="hang", seconds=args.timeout)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
