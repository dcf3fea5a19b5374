"""Where the time goes: GPU time per kernel of one attention call, per impl.

    python benchmarks/profile_kernels.py --seq 16384 --head-dim 128 \\
        --impls flashjax_mosaic cudnn --out benchmarks/results/kernels-h100

For each impl (names as in bench_attention.py) it compiles the call (``fwd``
or ``fwd_bwd``), warms up, then runs ``--iters`` calls under the JAX profiler
and sums the GPU kernels' durations from the trace, per kernel name, divided
by ``--iters``: e.g. flashjax's forward, dQ and dK/dV kernels and XLA's
fusions around them (the backward's D = rowsum(dO ∘ O), casts), against
cuDNN's kernels for the same call. The FP8 impls (``--mode fwd``) take e4m3
inputs quantised outside the profiled calls. ``--sets N`` rotates the
calls over N input sets, as the benchmark does. Each impl's rows end with
its calls' span on the GPU (first kernel start to last end: the kernels
plus the GPU's idle gaps between them) and the traced loop's wall clock,
both per call. Writes PREFIX.json (rows: impl, kernel, calls and µs per
attention call; the span row's kernel is ``(span)``, with ``wall_us``)
and PREFIX.md.

The same script is a target for Nsight Compute: with ``--no-trace`` each
impl's ``--iters`` calls run between ``cudaProfilerStart`` and
``cudaProfilerStop`` (after the warm-up calls, so compiling and autotuning
stay outside), and ncu's ``--profile-from-start off`` profiles only those::

    ncu --clock-control none --profile-from-start off --set detailed -o prof \\
        python3 benchmarks/profile_kernels.py --seq 4096 --iters 1 --no-trace
    ncu --import prof.ncu-rep --csv --page details > prof.csv
    python3 benchmarks/profile_kernels.py --summarize prof.csv --out prof

``--summarize CSV`` tabulates ncu's details page (PREFIX.md): one row per
kernel launch, in launch order, with its duration and cycles, SM, memory
and DRAM throughput, instructions per active cycle, issue slots busy,
registers per thread, local-memory spills and shared memory per block.
``--stalls CSV`` tabulates ``--page raw`` output of the stall metrics
(``gpu_session.sh ncu-stalls``): per launch, the warps' stalled cycles per
issued instruction by reason. ``--source CSV[.gz]`` tabulates the source
page's per-SASS-instruction stall samples (``gpu_session.sh ncu-source``).
``--ptxas LOG`` tabulates the ptxas lines a run with
``MOSAIC_GPU_DUMP_PTXAS=1`` logged: per kernel, its stack frame and spills,
by step (``python benchmarks/profile_kernels.py --ptxas
benchmarks/results/raw/opts-bwd-next-h200.log``).
"""

from __future__ import annotations

import argparse
import collections
import csv
import ctypes
import ctypes.util
import glob
import gzip
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_attention import (impl_inputs,  # noqa: E402
                                        make_call, resolve)

# ncu details-page columns of --summarize (``--set detailed``): (title, metric
# names, first present; a name in two sections is read from the first)
NCU_METRICS = [
    ("duration", ("Duration",)),
    ("cycles", ("Elapsed Cycles",)),
    ("SM %", ("Compute (SM) Throughput",)),
    ("memory %", ("Memory Throughput",)),
    ("DRAM %", ("DRAM Throughput",)),
    ("L2 %", ("L2 Cache Throughput",)),
    ("IPC", ("Executed Ipc Active",)),
    ("issue slots %", ("Issue Slots Busy",)),
    ("registers", ("Registers Per Thread",)),
    ("spills", ("Local Memory Spilling Requests",)),
    ("shared memory", ("Dynamic Shared Memory Per Block",)),
]


SPAN = "(span)"   # the row of a profile's span on the GPU and wall clock


def gpu_kernel_events(trace: dict) -> list:
  """The trace's GPU kernels (Chrome trace format: a device's ``pid`` is
  named ``/device:GPU:…``, its kernels are complete events on ``Stream``
  threads); says on stderr what GPU threads a trace without any has."""
  names = {(e["pid"], e.get("tid")): e["args"]["name"]
           for e in trace.get("traceEvents", [])
           if e.get("ph") == "M" and e.get("name") in ("process_name",
                                                        "thread_name")}
  gpu_pids = {pid for (pid, tid), n in names.items()
              if tid is None and "GPU" in n}
  events = [e for e in trace.get("traceEvents", [])
            if e.get("ph") == "X" and e["pid"] in gpu_pids
            and names.get((e["pid"], e.get("tid")), "").startswith("Stream")]
  if gpu_pids and not events:     # a trace laid out otherwise
    print("no kernel events on GPU Stream threads; GPU threads: "
          f"{sorted({n for (pid, tid), n in names.items() if pid in gpu_pids})}",
          file=sys.stderr)
  return events


def device_kernel_times(events: list) -> dict:
  """{kernel name: (count, total µs)} over GPU kernel ``events``
  (:func:`gpu_kernel_events`)."""
  out = collections.defaultdict(lambda: [0, 0.0])
  for e in events:
    out[e["name"]][0] += 1
    out[e["name"]][1] += float(e.get("dur", 0.0))
  return {k: tuple(v) for k, v in out.items()}


def device_span(events: list) -> float:
  """µs from the first of GPU kernel ``events``' starts to the last one's
  end: the kernels' total plus the GPU's idle gaps between them (NaN
  without a GPU kernel, as on the CPU)."""
  spans = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)))
           for e in events]
  if not spans:
    return float("nan")
  return max(end for _, end in spans) - min(start for start, _ in spans)


def read_trace(log_dir: Path) -> dict:
  """The perfetto/Chrome trace JAX's profiler wrote under ``log_dir``."""
  files = sorted(log_dir.rglob("*.trace.json.gz"))
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {log_dir}")
  with gzip.open(files[-1], "rt") as f:
    return json.load(f)


def profile(name, fn, mode, input_sets, iters, trace: bool):
  """Rows for one impl: its kernels' calls and µs per attention call, and a
  row of the calls' span on the GPU and wall clock (µs per call). The calls
  rotate over ``input_sets``, as the benchmark's do."""
  call = make_call(fn, mode).lower(*input_sets[0]).compile()
  for inputs in input_sets * 3:
    jax.block_until_ready(call(*inputs))
  if not trace:        # under ncu: launch the kernels inside the marked range
    cudart = cuda_runtime() if jax.default_backend() == "gpu" else None
    if cudart is not None:
      cudart.cudaProfilerStart()
    for i in range(iters):
      out = call(*input_sets[i % len(input_sets)])
    jax.block_until_ready(out)
    if cudart is not None:
      cudart.cudaProfilerStop()
    return []
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      for i in range(iters):
        out = call(*input_sets[i % len(input_sets)])
      jax.block_until_ready(out)
      wall = time.perf_counter() - start
    events = gpu_kernel_events(read_trace(Path(log_dir)))
  times = device_kernel_times(events)
  rows = [dict(impl=name, kernel=k, calls=n / iters, us=total / iters)
          for k, (n, total) in sorted(times.items(), key=lambda x: -x[1][1])]
  return rows + [dict(impl=name, kernel=SPAN, calls=iters,
                      us=device_span(events) / iters,
                      wall_us=wall * 1e6 / iters)]


def cuda_runtime():
  """libcudart (for cudaProfilerStart/Stop): the system's, or the one the
  NVIDIA wheels of JAX's CUDA plugin installed."""
  names = [ctypes.util.find_library("cudart")]
  for path in sys.path:
    names += sorted(glob.glob(os.path.join(path, "nvidia", "cu*", "lib",
                                           "libcudart.so*")))
  for name in filter(None, names):
    try:
      return ctypes.CDLL(name)
    except OSError:
      continue
  raise OSError("libcudart not found: cannot mark the range for ncu")


def _csv_rows(csv_text: str):
  """The rows of ncu's CSV output, skipping lines that are not CSV (its
  ``==PROF==`` log)."""
  return csv.DictReader(io.StringIO("\n".join(
      line for line in csv_text.splitlines() if line.startswith('"'))))


def ncu_table(csv_text: str) -> str:
  """Markdown table of ``ncu --csv --page details`` output."""
  rows = _csv_rows(csv_text)
  launches: dict[int, dict] = {}
  for row in rows:
    launch = launches.setdefault(int(row["ID"]), {
        "kernel": row["Kernel Name"],
        "launch": f"{row.get('Grid Size', '')} × {row.get('Block Size', '')}"})
    unit = row.get("Metric Unit", "")
    launch.setdefault(row["Metric Name"], row["Metric Value"] + (
        f" {unit}" if unit and unit != "%" else ""))
  if not launches:
    raise ValueError("no ncu details rows in the CSV")
  titles = [title for title, _ in NCU_METRICS]
  lines = ["| # | kernel | grid × block | " + " | ".join(titles) + " |",
           "|---" * (len(titles) + 3) + "|"]
  for i in sorted(launches):
    launch = launches[i]
    cells = [next((launch[n] for n in names if n in launch), "—")
             for _, names in NCU_METRICS]
    lines.append(f"| {i} | `{launch['kernel'][:60]}` | {launch['launch']} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"
PIPE_PREFIX = "sm__"      # sm__inst_executed_pipe_*, sm__pipe_*
PIPE_SUFFIX = ".avg.pct_of_peak_sustained_active"


def _metrics(row: dict, prefix: str, suffix: str) -> dict:
  """{short name: value} of ``row``'s numeric metrics named prefix…suffix."""
  out = {}
  for name, value in row.items():
    if name and name.startswith(prefix) and name.endswith(suffix):
      try:
        out[name[len(prefix):-len(suffix)]] = float(value.replace(",", ""))
      except ValueError:
        continue
  return out


# SM balance: each SM's active cycles, fewest / mean / most
SM_ACTIVE = tuple(f"sm__cycles_active.{s}" for s in ("min", "avg", "max"))


def stall_table(csv_text: str, top: int = 6) -> str:
  """Markdown table of ``ncu --page raw --csv`` over the metrics
  ``gpu_session.sh ncu-stalls`` collects (stall reasons, pipelines): per
  kernel launch, the warps' stalled cycles per issued instruction by reason
  (largest ``top``, and their sum over every reason), and the busiest
  pipelines (% of peak over active cycles); where the CSV has
  ``sm__cycles_active.{min,avg,max}``, the SMs' active cycles (millions),
  fewest / mean / most: how evenly the kernel's work fell on them. Rows
  after the header whose ID is not a number (ncu's units row) are
  skipped."""
  rows = [r for r in _csv_rows(csv_text)
          if r.get("ID", "").strip().isdigit()]
  if not rows:
    raise ValueError("no ncu raw rows in the CSV")
  balance = all(name in rows[0] for name in SM_ACTIVE)
  lines = ["| # | kernel | stalled cycles per issue | largest reasons | "
           "busiest pipes (% of peak) |"
           + (" SM active Mcycles: fewest / mean / most |" if balance else ""),
           "|---" * (6 if balance else 5) + "|"]
  for r in rows:
    stalls = _metrics(r, STALL_PREFIX, STALL_SUFFIX)
    pipes = _metrics(r, PIPE_PREFIX, PIPE_SUFFIX)
    largest = sorted(stalls.items(), key=lambda x: -x[1])[:top]
    busiest = sorted(pipes.items(), key=lambda x: -x[1])[:4]
    line = (f"| {r['ID']} | `{r['Kernel Name'][:60]}` | "
            f"{sum(stalls.values()):.2f} | "
            + ", ".join(f"{k} {v:.2f}" for k, v in largest) + " | "
            + ", ".join(f"{k} {v:.0f}" for k, v in busiest) + " |")
    if balance:
      line += " " + " / ".join(
          f"{float(r[name].replace(',', '')) / 1e6:.3f}"
          for name in SM_ACTIVE) + " |"
    lines.append(line)
  return "\n".join(lines) + "\n"


def source_table(csv_text: str, top: int = 12) -> str:
  """Markdown of ``ncu --page source --csv --print-source sass``
  (``gpu_session.sh ncu-source``): per kernel, the warps' stall samples by
  reason, by opcode (each opcode's largest reasons), the ``top``
  instructions with the most samples, and the instructions executed
  (warp-level) by opcode. Samples count every warp, the producer's waits for
  free slots included (its ``SYNCS.PHASECHK`` loop's ``BRA``), so compare
  the compute warps' opcodes across kernels, not the totals."""
  out = []
  for part in csv_text.split('"Kernel Name",')[1:]:
    name, body = part.split("\n", 1)
    rows = list(csv.DictReader(io.StringIO(body)))
    reasons = [k for k in rows[0] if k.startswith("stall_")
               and "Not Issued" not in k]
    count = lambda r, k: int(r[k] or 0)
    samples = lambda r: count(r, "Warp Stall Sampling (All Samples)")
    total = sum(samples(r) for r in rows) or 1
    by_reason = collections.Counter()
    by_op = collections.defaultdict(collections.Counter)
    executed = collections.Counter()
    for r in rows:
      words = r["Source"].split()
      op = (words[1] if words[0].startswith("@") else words[0]).split(".")[0]
      executed[op] += int(r["Instructions Executed"].replace(",", "") or 0)
      for k in reasons:
        by_reason[k[6:]] += count(r, k)
        by_op[op][k[6:]] += count(r, k)
    pct = lambda n: f"{100 * n / total:.1f}%"
    out += [f"## `{name.strip(chr(34) + ',')[:90]}`", "",
            f"{total} samples; by reason: " + ", ".join(
                f"{k} {pct(v)}" for k, v in by_reason.most_common(8)), "",
            "| opcode | samples | largest reasons |", "|---|---|---|"]
    for op, c in sorted(by_op.items(), key=lambda x: -sum(x[1].values()))[:10]:
      out.append(f"| {op} | {pct(sum(c.values()))} | " + ", ".join(
          f"{k} {pct(v)}" for k, v in c.most_common(3)) + " |")
    out += ["", "| instruction | executed | samples | largest reasons |",
            "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -samples(r))[:top]:
      largest = sorted(((count(r, k), k[6:]) for k in reasons), reverse=True)
      out.append(f"| `{r['Source'].strip()[:60]}` | "
                 f"{r['Instructions Executed']} | {pct(samples(r))} | " + ", ".join(
                     f"{k} {pct(n)}" for n, k in largest[:3]) + " |")
    out += ["", f"{sum(executed.values()):,} instructions executed; by opcode "
            "(millions): " + ", ".join(
                f"{op} {n / 1e6:.1f}" for op, n in executed.most_common(16)),
            ""]
  if not out:
    raise ValueError("no ncu source page (\"Kernel Name\" sections) in the CSV")
  return "\n".join(out)


# ptxas's note (C7512 and kin) that it issued a kernel's wgmmas one at a
# time, each awaited before the next, and why
SERIALIZED = re.compile(r"wgmma\.mma_async instructions are serialized due to "
                        r"(.*?) (?:for|in) the function")


def ptxas_table(log_text: str) -> str:
  """Markdown of ptxas's lines in a log (``MOSAIC_GPU_DUMP_PTXAS=1``): per
  kernel compiled, in order, its stack frame and spill stores/loads, and
  whether ptxas serialised its wgmmas (the reason, from the note it prints
  before the kernel's properties), under the ``== step: command`` header
  that ran it (gpu_session.sh's logs). The Hopper kernels are named since
  the twenty-first session (``flashjax_fwd``, ``flashjax_dkdv``, ...;
  ``anonymous`` before)."""
  props = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack "
                     r"frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
  parts = re.split(r"(?m)^== (.*)$", log_text)   # text, header, text, ...
  out = []
  for header, chunk in zip(["(before any step)"] + parts[1::2], parts[::2]):
    kernels, start = [], 0
    for m in props.finditer(chunk):
      notes = SERIALIZED.findall(chunk[start:m.start()])
      kernels.append((*m.groups(), "; ".join(notes) or "no"))
      start = m.end()
    if not kernels:
      continue
    out += [f"`{header[:160]}`", "",
            "| # | kernel | stack frame | spill stores | spill loads | "
            "wgmmas serialised |",
            "|---|---|---|---|---|---|"]
    out += [f"| {i} | `{name}` | {stack} | {stores} | {loads} | {why} |"
            for i, (name, stack, stores, loads, why) in enumerate(kernels)]
    out.append("")
  if not out:
    raise ValueError("no ptxas 'Function properties' lines in the log")
  return "\n".join(out)


def table(rows) -> str:
  """Per impl: its kernels' µs per call, their total, then the calls' span on
  the GPU (the total plus idle gaps) and the traced loop's wall clock."""
  lines = ["| impl | kernel | calls | µs per call | share |",
           "|---|---|---|---|---|"]
  for name in dict.fromkeys(r["impl"] for r in rows):
    mine = [r for r in rows if r["impl"] == name and r["kernel"] != SPAN]
    total = sum(r["us"] for r in mine)
    for r in mine:
      lines.append(f"| {name} | `{r['kernel'][:70]}` | {r['calls']:g} | "
                   f"{r['us']:.1f} | {r['us'] / total:.0%} |")
    lines.append(f"| {name} | **all kernels** | | **{total:.1f}** | |")
    span = next((r for r in rows if r["impl"] == name and r["kernel"] == SPAN),
                None)
    if span and total:     # a profile on the GPU
      lines.append(f"| {name} | span on the GPU, first start to last end | | "
                   f"{span['us']:.1f} | {span['us'] / total:.2f}× |")
      lines.append(f"| {name} | wall clock of the traced loop | | "
                   f"{span['wall_us']:.1f} | {span['wall_us'] / total:.2f}× |")
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
  p.add_argument("--sets", type=int, default=1,
                 help="input sets the calls rotate over (the benchmark's: 3)")
  p.add_argument("--no-trace", dest="trace", action="store_false",
                 help="run without the profiler (for ncu)")
  p.add_argument("--out", default=None, help="PREFIX for PREFIX.json/.md")
  p.add_argument("--summarize", metavar="CSV",
                 help="instead: tabulate ncu's details page (PREFIX.md)")
  p.add_argument("--stalls", metavar="CSV",
                 help="instead: tabulate ncu's raw stall metrics (PREFIX.md)")
  p.add_argument("--source", metavar="CSV[.gz]",
                 help="instead: tabulate ncu's per-instruction stall samples "
                      "(source page; PREFIX.md)")
  p.add_argument("--ptxas", metavar="LOG",
                 help="instead: tabulate ptxas's spill lines in a log "
                      "(MOSAIC_GPU_DUMP_PTXAS=1; PREFIX.md)")
  args = p.parse_args(argv)
  if args.summarize or args.stalls or args.source or args.ptxas:
    if args.ptxas:
      md = ptxas_table(Path(args.ptxas).read_text())
    elif args.source:
      opener = gzip.open if args.source.endswith(".gz") else open
      with opener(args.source, "rt") as f:
        md = source_table(f.read())
    else:
      md = (ncu_table(Path(args.summarize).read_text()) if args.summarize
            else stall_table(Path(args.stalls).read_text()))
    print(md)
    if args.out:
      Path(args.out + ".md").write_text(md)
    return

  b, h = max(1, args.tokens // args.seq), args.hidden // args.head_dim
  keys = jax.random.split(jax.random.PRNGKey(0), 4 * args.sets)
  sets = [tuple(jax.random.normal(key, (b, args.seq, h, args.head_dim),
                                  args.dtype) for key in keys[4 * i:4 * i + 4])
          for i in range(args.sets)]
  rows = []
  for name in args.impls:
    # the FP8 impls (forward only) take e4m3 inputs quantised outside the call
    rows += profile(name, resolve(name, args.causal), args.mode,
                    [impl_inputs(name, x, args.mode) for x in sets],
                    args.iters, args.trace)
  if not args.trace:
    return
  shape = (f"b={b} s={args.seq} h={h} d={args.head_dim} {args.dtype} "
           f"causal={args.causal} {args.mode}")
  md = (f"# GPU time per kernel ({jax.devices()[0].device_kind}, jax "
        f"{jax.__version__})\n\n`{' '.join(sys.argv)}`\n\n{shape}; µs per "
        f"attention call, from the profiler's trace of {args.iters} calls "
        f"over {args.sets} input set(s).\n\n"
        + table(rows) + "\n")
  print(md)
  if args.out:
    Path(args.out + ".json").write_text(json.dumps(
        dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
             shape=shape, command=" ".join(sys.argv), rows=rows), indent=1))
    Path(args.out + ".md").write_text(md)


if __name__ == "__main__":
  main()
