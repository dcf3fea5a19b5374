"""Byte-level text data with no download.

The default corpus is the Python standard library's own ``.py`` sources (found
via ``sysconfig``), read in sorted path order; ``path`` may instead name any text
file or folder. Tokens are bytes (vocab 256). The first ``1 - eval_fraction`` of
the byte stream is for training, the rest for evaluation; batch ``step`` of a
split is a pure function of ``(seed, step)``, so a resumed run sees exactly the
batches it would have seen.
"""

from __future__ import annotations

import os
import pathlib
import sysconfig

import numpy as np

VOCAB_SIZE = 256
DEFAULT_MAX_BYTES = 32 * 2**20


class UserError(Exception):
  """Bad input the user can fix; the command-line tools print it as one line."""


def stdlib_dir() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def load_corpus(path: str | os.PathLike | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
  """The corpus as uint8 ``[n]``: the file ``path``, every file under the folder
  ``path`` (sorted; hidden files and binary files skipped), or, for None, the
  stdlib's ``.py`` files (``site-packages`` excluded). Stops after ``max_bytes``.
  """
  if path is None:
    root = stdlib_dir()
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    source = f"the Python standard library at {root}"
  else:
    root = pathlib.Path(path)
    if not root.exists():
      raise UserError(f"--data {path}: no such file or folder; pass an existing "
                      f"text file or folder, or omit --data for the stdlib "
                      f"corpus.")
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts))
    source = str(path)
  chunks, total = [], 0
  for file in files:
    data = file.read_bytes()
    if b"\0" in data[:4096]:
      continue    # binary
    chunks.append(data[:max_bytes - total])
    total += len(chunks[-1])
    if total >= max_bytes:
      break
  if total == 0:
    raise UserError(f"no text found in {source}; pass --data with a non-empty "
                    f"text file or folder.")
  return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def split(corpus: np.ndarray, seq_len: int,
          eval_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """(train, eval) byte arrays; each must hold at least one window of
  ``seq_len + 1`` tokens."""
  cut = int(len(corpus) * (1 - eval_fraction))
  train, held_out = corpus[:cut], corpus[cut:]
  if len(held_out) <= seq_len:
    raise UserError(f"corpus of {len(corpus)} bytes is too small for "
                    f"sequences of {seq_len}: the eval split needs more than "
                    f"{seq_len} bytes; use more text or a smaller --seq-len.")
  return train, held_out


def batch(data: np.ndarray, *, step: int, batch_size: int, seq_len: int,
          seed: int) -> np.ndarray:
  """int32 ``[batch_size, seq_len + 1]``: random windows (inputs plus the next
  token), a pure function of ``(seed, step)``."""
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(data) - seq_len, size=batch_size)
  return np.stack([data[s:s + seq_len + 1] for s in starts]).astype(np.int32)


def encode(text: str) -> np.ndarray:
  """UTF-8 bytes as int32 tokens ``[len]``."""
  return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)


def decode(tokens) -> str:
  """Tokens (bytes) to text; invalid UTF-8 shows as U+FFFD."""
  return bytes(np.asarray(tokens, dtype=np.uint8).tolist()).decode(
      "utf-8", errors="replace")
