"""Where the time goes: GPU time per kernel of one attention call, per impl.

    python benchmarks/profile_kernels.py --seq 16384 --head-dim 128 \\
        --impls flashjax_mosaic cudnn --out benchmarks/results/kernels-h100

For each impl (names as in bench_attention.py) it compiles the call (``fwd``
or ``fwd_bwd``), warms up, then runs ``--iters`` calls under the JAX profiler
and sums the GPU kernels' durations from the trace, per kernel name, divided
by ``--iters``: e.g. flashjax's forward, dQ and dK/dV kernels and XLA's
fusions around them (the backward's D = rowsum(dO ∘ O), casts), against
cuDNN's kernels for the same call. Writes PREFIX.json (rows: impl, kernel,
calls and µs per attention call) and PREFIX.md.

The same script is a target for Nsight Compute, e.g. ``ncu --clock-control
none -k regex:mosaic --launch-skip 6 --launch-count 3 python3
benchmarks/profile_kernels.py --impls flashjax_mosaic --iters 1 --no-trace``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_attention import impls, make_call  # noqa: E402


def device_kernel_times(trace: dict) -> dict:
  """{kernel name: (count, total µs)} over the trace's GPU stream events
  (Chrome trace format: a device's ``pid`` is named ``/device:GPU:…``, its
  kernels are complete events on ``Stream`` threads)."""
  names = {(e["pid"], e.get("tid")): e["args"]["name"]
           for e in trace.get("traceEvents", [])
           if e.get("ph") == "M" and e.get("name") in ("process_name",
                                                        "thread_name")}
  gpu_pids = {pid for (pid, tid), n in names.items()
              if tid is None and "GPU" in n}
  out = collections.defaultdict(lambda: [0, 0.0])
  for e in trace.get("traceEvents", []):
    if (e.get("ph") == "X" and e["pid"] in gpu_pids
        and names.get((e["pid"], e.get("tid")), "").startswith("Stream")):
      out[e["name"]][0] += 1
      out[e["name"]][1] += float(e.get("dur", 0.0))
  if gpu_pids and not out:     # a trace laid out otherwise: say what it has
    print("no kernel events on GPU Stream threads; GPU threads: "
          f"{sorted({n for (pid, tid), n in names.items() if pid in gpu_pids})}",
          file=sys.stderr)
  return {k: tuple(v) for k, v in out.items()}


def read_trace(log_dir: Path) -> dict:
  """The perfetto/Chrome trace JAX's profiler wrote under ``log_dir``."""
  files = sorted(log_dir.rglob("*.trace.json.gz"))
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {log_dir}")
  with gzip.open(files[-1], "rt") as f:
    return json.load(f)


def profile(name, fn, mode, inputs, iters, trace: bool):
  """Rows for one impl: its kernels' calls and µs per attention call."""
  call = make_call(fn, mode).lower(*inputs).compile()
  for _ in range(3):
    jax.block_until_ready(call(*inputs))
  if not trace:        # under ncu: just launch the kernels
    for _ in range(iters):
      out = call(*inputs)
    jax.block_until_ready(out)
    return []
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      for _ in range(iters):
        out = call(*inputs)
      jax.block_until_ready(out)
    times = device_kernel_times(read_trace(Path(log_dir)))
  return [dict(impl=name, kernel=k, calls=n / iters, us=total / iters)
          for k, (n, total) in sorted(times.items(), key=lambda x: -x[1][1])]


def table(rows) -> str:
  lines = ["| impl | kernel | calls | µs per call | share |",
           "|---|---|---|---|---|"]
  for name in dict.fromkeys(r["impl"] for r in rows):
    mine = [r for r in rows if r["impl"] == name]
    total = sum(r["us"] for r in mine)
    for r in mine:
      lines.append(f"| {name} | `{r['kernel'][:70]}` | {r['calls']:g} | "
                   f"{r['us']:.1f} | {r['us'] / total:.0%} |")
    lines.append(f"| {name} | **all kernels** | | **{total:.1f}** | |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--impls", nargs="+", default=["flashjax_mosaic", "cudnn"])
  p.add_argument("--mode", choices=["fwd", "fwd_bwd"], default="fwd_bwd")
  p.add_argument("--seq", type=int, default=16384)
  p.add_argument("--tokens", type=int, default=16384,
                 help="tokens per batch (batch = tokens // seq)")
  p.add_argument("--hidden", type=int, default=2048,
                 help="heads = hidden // head_dim")
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--causal", action="store_true")
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--no-trace", dest="trace", action="store_false",
                 help="run without the profiler (for ncu)")
  p.add_argument("--out", default=None, help="PREFIX for PREFIX.json/.md")
  args = p.parse_args(argv)

  b, h = max(1, args.tokens // args.seq), args.hidden // args.head_dim
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  inputs = [jax.random.normal(key, (b, args.seq, h, args.head_dim),
                              args.dtype) for key in keys]
  if args.mode == "fwd":
    inputs = inputs[:3]
  fns = impls(args.causal)
  rows = []
  for name in args.impls:
    rows += profile(name, fns[name], args.mode, inputs, args.iters, args.trace)
  if not args.trace:
    return
  shape = (f"b={b} s={args.seq} h={h} d={args.head_dim} {args.dtype} "
           f"causal={args.causal} {args.mode}")
  md = (f"# GPU time per kernel ({jax.devices()[0].device_kind}, jax "
        f"{jax.__version__})\n\n`{' '.join(sys.argv)}`\n\n{shape}; µs per "
        f"attention call, from the profiler's trace of {args.iters} calls.\n\n"
        + table(rows) + "\n")
  print(md)
  if args.out:
    Path(args.out + ".json").write_text(json.dumps(
        dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
             shape=shape, command=" ".join(sys.argv), rows=rows), indent=1))
    Path(args.out + ".md").write_text(md)


if __name__ == "__main__":
  main()
