"""Summarise a ``flashjax-train --compare`` run's compare.csv as a markdown table.

    python benchmarks/summarize_parity.py benchmarks/results/parity-h100

For each pair of attentions (flash vs each reference, and the references
against each other, which shows how far two correct bf16 implementations drift
apart on the same batches): median and max per-step relative loss difference,
and the final losses' relative difference (mean of the last 100 steps, which
averages out per-batch noise). Also each attention's median step time. Writes
DIR/summary.md and prints it.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np


def summarize(rows: list[dict]) -> str:
  kinds = [k[len("loss_"):] for k in rows[0] if k.startswith("loss_")]
  loss = {k: np.array([float(r[f"loss_{k}"]) for r in rows]) for k in kinds}
  ms = {k: np.array([float(r[f"ms_{k}"]) for r in rows[1:]]) for k in kinds}
  tail = min(100, len(rows))
  lines = [f"{len(rows)} steps.", "",
           "| pair | median per-step rel. diff | max per-step rel. diff | "
           f"final loss (mean of last {tail} steps) | rel. diff of final |",
           "|---|---|---|---|---|"]
  for a, b in itertools.combinations(kinds, 2):
    rel = np.abs(loss[a] - loss[b]) / np.abs(loss[b])
    fa, fb = loss[a][-tail:].mean(), loss[b][-tail:].mean()
    lines.append(f"| {a} vs {b} | {np.median(rel):.2e} | {rel.max():.2e} | "
                 f"{fa:.4f} vs {fb:.4f} | {abs(fa - fb) / fb:.2e} |")
  lines += ["", "| attention | median step ms | steps/s |", "|---|---|---|"]
  lines += [f"| {k} | {np.median(ms[k]):.1f} | {1e3 / np.median(ms[k]):.2f} |"
            for k in kinds]
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("run", help="folder holding compare.csv")
  args = p.parse_args(argv)
  run = Path(args.run)
  with open(run / "compare.csv", newline="") as f:
    text = summarize(list(csv.DictReader(f)))
  (run / "summary.md").write_text(f"# Loss parity: {run}\n\n{text}")
  print(text)


if __name__ == "__main__":
  main()
