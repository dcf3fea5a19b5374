"""The README and docs/: every relative link and image points at a file in
the repository (the figures' raw files are cited by link), and the README's
tables of results are what the committed scripts' raw output says."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def links(page: pathlib.Path) -> list[str]:
  """The page's relative link targets (no URLs, no in-page anchors)."""
  return [x for x in LINK.findall(page.read_text())
          if not x.startswith(("http://", "https://", "mailto:"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
  found = links(page)
  missing = [x for x in found if not (page.parent / x).exists()]
  assert not missing, f"{page.name}: links to missing files: {missing}"


def test_the_readme_links_its_figures():
  """The README's plots and the docs it sends readers to are among the
  links checked above (the check sees the README's links at all)."""
  found = links(ROOT / "README.md")
  assert any(x.endswith(".png") for x in found)
  assert {"docs/benchmarks.md", "docs/fp8.md", "docs/training.md",
          "docs/defaults.md"} <= set(found)


RESULTS = ROOT / "benchmarks" / "results"


def table_rows(path: pathlib.Path) -> list[list[str]]:
  """A markdown file's table rows (headers included), split into cells."""
  return [[c.strip() for c in line.strip("|").split("|")]
          for line in path.read_text().splitlines() if line.startswith("| ")]


def readme_rows() -> list[list[str]]:
  return table_rows(ROOT / "README.md")


def test_the_readme_hopper_table_is_the_committed_results():
  """The README's table of the Hopper kernels against the peers is, row for
  row, ``bench_attention.py --joined`` of the committed merged results."""
  from benchmarks import bench_attention
  parts = [json.loads((RESULTS / name).read_text()) for name in
           ("attention-mosaic-h100.json", "attention-mosaic-fp16-h100.json")]
  table = bench_attention.joined_table(parts).splitlines()
  rows = [line for line in table if not line.startswith("|---")]
  readme = (ROOT / "README.md").read_text().splitlines()
  assert len(rows) == 25          # the header and 24 shapes × modes
  assert [line for line in rows if line not in readme] == []


def test_the_readme_fp8_accuracy_table_is_the_committed_results():
  """The README's FP8 RMSE table is ``fp8_accuracy.py``'s H100 run, every
  figure as the script rounds it."""
  data = json.loads((RESULTS / "fp8-accuracy-h100.json").read_text())
  rmse = {(r["inputs"], r["causal"], r["variant"]): r["rmse"]
          for r in data["rows"]}
  variants = ("bf16", "fp8_e4m3", "fp8_e4m3_per_head", "fp8_e4m3_rotated",
              "fp8_e5m2", "fp8_e5m2_rotated", "cudnn_fp8_unit_scales")
  rows = readme_rows()
  for inputs in ("normal", "outliers"):
    for causal in (False, True):
      want = [inputs, "yes" if causal else "no",
              *(f"{rmse[inputs, causal, v]:.2e}" for v in variants)]
      assert want in rows, want


def test_the_readme_training_table_is_the_committed_results():
  """The README's steps/s table is ``bench_train.py``'s H200 run, cell for
  cell, where the README words a missing figure ("out of memory ...",
  "not run") in place of the script's "OOM/error" or "—"."""
  script = table_rows(RESULTS / "train-h200.md")[1:]
  readme = {row[0]: row for row in readme_rows()}
  assert len(script) == 4
  for row in script:
    shown = readme[row[0]]
    assert len(shown) == len(row), row
    for cell, said in zip(row, shown):
      assert said == cell or cell in ("OOM/error", "—"), (row, shown)
