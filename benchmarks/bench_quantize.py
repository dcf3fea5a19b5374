"""What V's layout costs outside the FP8 attention call (GPU).

The Hopper FP8 forward reads V key-major (``flashjax.fp8.KeyMajorV``). Given
V as ``fp8.quantize`` makes it (``[batch, seq, heads, d]``), the call
transposes it first, a pass over V; ``fp8.quantize_v`` makes that layout in
the quantisation's own pass. This times, on bf16 V ``[tokens // seq, seq,
heads, d]``, in one process and interleaved (``bench_attention.time_calls``):

* ``quantize``: ``fp8.quantize(v)``, V in ``[batch, seq, heads, d]``;
* ``quantize_v``: ``fp8.quantize_v(v)``, V key-major;
* ``transpose``: ``fp8.KeyMajorV.of(v8)`` on the FP8 V, the pass the call
  runs before its kernel when given ``quantize``'s V.

Writes PREFIX.json (rows: seq, shape, ms per call) and PREFIX.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_attention import time_calls, warm_up  # noqa: E402
from flashjax import fp8  # noqa: E402


def rows(seqs, tokens, heads, head_dim, iters, repeats):
  for s in seqs:
    shape = (max(1, tokens // s), s, heads, head_dim)
    keys = jax.random.split(jax.random.key(s), 3)
    sets = [(jax.random.normal(key, shape, jnp.bfloat16),) for key in keys]
    v8_sets = [(fp8.quantize(v)[0],) for v, in sets]
    calls = {"quantize": (jax.jit(fp8.quantize), sets),
             "quantize_v": (jax.jit(fp8.quantize_v), sets),
             "transpose": (jax.jit(fp8.KeyMajorV.of), v8_sets)}
    for call, inputs in calls.values():
      warm_up(call, inputs)
    ms = time_calls(calls, iters, repeats)
    row = dict(seq=s, shape=list(shape), ms=ms)
    print(json.dumps(row), flush=True)
    yield row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="benchmarks/results/quantize")
  p.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
  p.add_argument("--tokens", type=int, default=16384)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--iters", type=int, default=50)
  p.add_argument("--repeats", type=int, default=7)
  args = p.parse_args(argv)
  result = list(rows(args.seqs, args.tokens, args.heads, args.head_dim,
                     args.iters, args.repeats))
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(
      dict(meta=dict(device=str(jax.devices()[0]), argv=argv or sys.argv[1:]),
           rows=result), indent=1))
  lines = ["| b×s×h×d | quantize ms | quantize_v ms | transpose of FP8 V ms |",
           "|---|---|---|---|"]
  lines += [f"| {'×'.join(map(str, r['shape']))} | {r['ms']['quantize']:.4f} "
            f"| {r['ms']['quantize_v']:.4f} | {r['ms']['transpose']:.4f} |"
            for r in result]
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
