"""Training throughput of the Flax transformer: flash vs dense vs cuDNN attention.

    python benchmarks/bench_train.py --out benchmarks/results/train-h100

For each sequence length (tokens per step fixed, so batch = tokens // seq) and
each attention, a fresh process builds the model, compiles the jitted train
step, runs ``--warmup`` steps, then times ``--steps`` steps enqueued back to back
(one block at the end). Peak memory is XLA's memory analysis of the compiled
step (arguments + outputs + temporaries). A case that does not fit records its
error (e.g. dense attention's out-of-memory point); an attention that ran out
of memory is not run at longer sequences (its memory grows with the length at
a fixed number of tokens), its row saying so. Writes PREFIX.json, PREFIX.md
and PREFIX.png (steps/s and peak memory against seq).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_case(args) -> dict:
  """One (attention, seq) case in this process."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks.bench_attention import describe
  from examples import train
  from models.transformer import ModelConfig

  batch = max(1, args.tokens // args.seq)
  model = ModelConfig(max_seq_len=args.seq, num_layers=args.layers,
                      d_model=args.d_model, num_heads=args.heads,
                      num_kv_heads=args.kv_heads, attention=args.attention,
                      dtype=args.dtype, remat=args.remat)
  cfg = train.TrainConfig(steps=args.warmup + args.steps, batch_size=batch,
                          seq_len=args.seq)
  row = dict(attention=args.attention, seq=args.seq, batch=batch,
             layers=args.layers, d_model=args.d_model, heads=args.heads,
             kv_heads=args.kv_heads, dtype=args.dtype, remat=args.remat,
             device=jax.devices()[0].device_kind)
  try:
    tx, schedule = train.make_optimizer(cfg)
    state = train.init_state(model, tx, seed=0)
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.integers(0, 256, (batch, args.seq + 1)),
                           jnp.int32) for _ in range(2)]
    step = train.make_train_step(model, tx, schedule)
    compiled = step.lower(state, batches[0]).compile()
    mem = compiled.memory_analysis()
    row["peak_bytes"] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                            + mem.temp_size_in_bytes)
    for i in range(args.warmup):
      state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(args.steps):
      state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready(state)
    row["step_ms"] = (time.perf_counter() - start) / args.steps * 1e3
    row["steps_per_s"] = 1e3 / row["step_ms"]
    row["loss"] = float(metrics["loss"])
  except Exception as e:  # noqa: BLE001 - OOM is a result here
    row["error"] = describe(e)
  return row


def out_of_memory(row) -> bool:
  return "RESOURCE_EXHAUSTED" in row.get("error", "")


NOT_RUN = "not run: out of memory at seq "


def not_run(attention: str, seq: int, batch: int, oom: dict) -> dict | None:
  """The row of a case left out because ``attention`` ran out of memory at a
  shorter sequence (``oom``: attention -> that seq), or None to run it."""
  if attention in oom and oom[attention] < seq:
    return dict(attention=attention, seq=seq, batch=batch,
                error=f"{NOT_RUN}{oom[attention]}")
  return None


def was_left_out(row) -> bool:
  return row.get("error", "").startswith(NOT_RUN)


def table(rows) -> str:
  kinds = list(dict.fromkeys(r["attention"] for r in rows))
  lines = ["| seq × batch | " + " | ".join(
      f"{k} steps/s (peak GiB)" for k in kinds) + " | flash / dense | "
      "flash / cudnn |", "|" + "---|" * (3 + len(kinds))]
  for seq in sorted({r["seq"] for r in rows}):
    case = {r["attention"]: r for r in rows if r["seq"] == seq}
    cells = []
    for k in kinds:
      r = case.get(k, {})
      cells.append(f"{r['steps_per_s']:.2f} ({r['peak_bytes'] / 2**30:.1f})"
                   if "steps_per_s" in r else "—" if not r else
                   "timeout" if r["error"].startswith("timeout") else
                   "not run (OOM below)" if was_left_out(r) else "OOM/error")
    ratio = lambda other: (
        f"{case['flash']['steps_per_s'] / case[other]['steps_per_s']:.2f}"
        if "steps_per_s" in case.get("flash", {})
        and "steps_per_s" in case.get(other, {}) else "—")
    batch = next(iter(case.values()))["batch"]
    lines.append(f"| {seq} × {batch} | " + " | ".join(cells)
                 + f" | {ratio('dense')} | {ratio('cudnn')} |")
  return "\n".join(lines)


def plot(rows, path) -> None:
  """PNG: steps/s and peak memory against seq, one line per attention; a
  case that failed (out of memory) is drawn as an x on the axis."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (speed, memory) = plt.subplots(1, 2, figsize=(10, 3.6))
  for i, kind in enumerate(dict.fromkeys(r["attention"] for r in rows)):
    ok = sorted((r["seq"], r) for r in rows
                if r["attention"] == kind and "steps_per_s" in r)
    failed = [r["seq"] for r in rows if r["attention"] == kind
              and "error" in r and not was_left_out(r)]
    color = f"C{i}"
    if ok:
      seqs = [s for s, _ in ok]
      speed.plot(seqs, [r["steps_per_s"] for _, r in ok], "o-", color=color,
                 label=kind)
      memory.plot(seqs, [r["peak_bytes"] / 2**30 for _, r in ok], "o-",
                  color=color, label=kind)
    if failed:
      speed.plot(failed, [0] * len(failed), "x", color=color, ms=10,
                 label=f"{kind}: out of memory")
  for ax, label in ((speed, "train steps/s"), (memory, "peak memory (GiB)")):
    ax.set_xscale("log", base=2)
    ax.set(xlabel="seq len (tokens per step fixed)", ylabel=label)
  speed.legend(fontsize=8)
  speed.set_title(f"{rows[0].get('device', '')}: training throughput")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="benchmarks/results/train",
                 help="output prefix: PREFIX.json and PREFIX.md")
  p.add_argument("--seqs", nargs="+", type=int,
                 default=[1024, 2048, 4096, 8192, 16384, 32768])
  p.add_argument("--attentions", nargs="+", default=["flash", "dense", "cudnn"])
  p.add_argument("--tokens", type=int, default=32768, help="tokens per step")
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--d-model", type=int, default=1024)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv-heads", type=int, default=8)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--remat", action=argparse.BooleanOptionalAction, default=False)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--timeout", type=int, default=300,
                 help="seconds per case before it is recorded as a timeout")
  p.add_argument("--merge", nargs="+", metavar="JSON",
                 help="benchmark nothing: concatenate the rows of these result "
                      "files (runs split to fit a time limit) into --out, with "
                      "a plot")
  p.add_argument("--attention", help=argparse.SUPPRESS)   # internal: one case
  p.add_argument("--seq", type=int, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.attention:
    print(json.dumps(run_case(args)))
    return
  if args.merge:
    parts = [json.loads(Path(f).read_text()) for f in args.merge]
    command = " ; ".join(part["command"] for part in parts)
    rows = [r for part in parts for r in part["rows"]]
    write(Path(args.out), command, rows)
    plot(rows, Path(args.out).with_suffix(".png"))
    print(table(rows))
    return
  rows, oom = [], {}
  shared = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k in ("tokens", "layers", "d_model", "heads", "kv_heads",
                     "dtype", "warmup", "steps")]
  shared.append("--remat" if args.remat else "--no-remat")
  # a progress bar on a terminal (none in a log: disable=None)
  cases = [(seq, attention) for seq in args.seqs for attention in args.attentions]
  for seq, attention in tqdm(cases, desc="cases", unit="case", disable=None):
    batch = max(1, args.tokens // seq)
    row = not_run(attention, seq, batch, oom) or run_in_subprocess(
        attention, seq, batch, shared, args.timeout)
    if out_of_memory(row):
      oom.setdefault(attention, seq)
    rows.append(row)
    print(json.dumps(row), flush=True)
    write(Path(args.out), " ".join(sys.argv), rows)   # after every case
  plot(rows, Path(args.out).with_suffix(".png"))
  print(table(rows))


def run_in_subprocess(attention: str, seq: int, batch: int, shared,
                      timeout: int) -> dict:
  """One case in a fresh process (its row, or an error row)."""
  cmd = [sys.executable, __file__, f"--attention={attention}", f"--seq={seq}",
         *shared]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(attention=attention, seq=seq, batch=batch,
                error=f"timeout after {timeout} s")
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  return json.loads(lines[-1]) if lines else dict(
      attention=attention, seq=seq, batch=batch,
      error=f"exit {done.returncode}: {done.stderr.strip()[-200:]}")


def write(out: Path, command: str, rows) -> None:
  """PREFIX.json (command + rows) and PREFIX.md (the table)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(
      dict(command=command, rows=rows), indent=1))
  out.with_suffix(".md").write_text(
      f"# Training throughput\n\n`{command}`\n\n{table(rows)}\n")


if __name__ == "__main__":
  main()
