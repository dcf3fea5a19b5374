"""benchmarks/bench_attention.py end to end on the CPU, tiny shapes: rows,
the matmul rate and its table (the GPU runs are what count; this keeps the
script working between them)."""

from __future__ import annotations

import json

from benchmarks import bench_attention


def test_bench_attention_writes_rows_and_the_matmul_share(tmp_path):
  out = tmp_path / "attention"
  bench_attention.main([
      "--out", str(out), "--impls", "xla", "flashjax", "--dtypes", "bfloat16",
      "--head-dims", "32", "--seqs", "64", "--tokens", "64", "--hidden", "64",
      "--causal", "false", "--modes", "fwd", "--iters", "2", "--repeats", "1",
      "--matmul", "64"])
  result = json.loads(out.with_suffix(".json").read_text())
  assert result["meta"]["matmul_tflops"]["bfloat16"] > 0
  rows = {r["impl"]: r for r in result["rows"]}
  assert set(rows) == {"xla", "flashjax"}
  for r in rows.values():
    assert r["ms"] > 0 and r["relerr"] < 2e-2, r
  md = out.with_suffix(".md").read_text()
  share = md.split("## Share of the matmul rate (forward, seq 64)")[1]
  share_row = next(line for line in share.splitlines()
                   if line.startswith("| bfloat16 | 32 | False | "))
  assert share_row.count("%") == 2, share_row
