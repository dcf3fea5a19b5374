"""The README and docs/: every relative link and image points at a file in
the repository (the figures' raw files are cited by link)."""

from __future__ import annotations

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
