"""Sample text from a flashjax-train checkpoint (``flashjax-generate``).

    flashjax-generate --ckpt runs/tiny --prompt "def main(" --max-new-tokens 200

The model config comes from the checkpoint. The prompt is prefilled with the
model's attention (the flash kernel by default, causal); each new token is one
KV-cache decode step.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp

from examples import data
from examples.train import Checkpoints
from models import transformer
from models.transformer import ATTENTIONS, ModelConfig


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="flashjax-generate",
      description="Sample text from a flashjax-train checkpoint with a KV "
                  "cache (prompt prefill on the flash kernel).",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--ckpt", required=True,
                      help="a flashjax-train --out folder (or its checkpoints/ "
                           "subfolder); the latest checkpoint is used")
  parser.add_argument("--prompt", default="def ",
                      help="text to continue (UTF-8, byte tokens)")
  parser.add_argument("--max-new-tokens", type=int, default=200,
                      help="tokens to generate; prompt + these must fit the "
                           "model's max_seq_len")
  parser.add_argument("--temperature", type=float, default=0.8,
                      help="softmax temperature; 0 is greedy")
  parser.add_argument("--top-k", type=int, default=40,
                      help="sample among the k most likely tokens (0: all)")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed")
  parser.add_argument("--attention", choices=ATTENTIONS, default="flash",
                      help="attention of the prompt prefill")
  return parser.parse_args(argv)


def load(ckpt: str, attention: str = "flash") -> tuple[ModelConfig, dict]:
  """(model config, params) of the latest checkpoint under ``ckpt``."""
  path = pathlib.Path(ckpt)
  if not path.is_dir():
    raise data.UserError(f"--ckpt {ckpt}: no such folder; pass the --out "
                         f"folder of a flashjax-train run.")
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  checkpoints = Checkpoints(path)
  model = ModelConfig(**checkpoints.load_meta()["model"])
  model = dataclasses.replace(model, attention=attention, attn_dtype="compute")
  template = jax.eval_shape(lambda: transformer.init_params(model))
  _, items = checkpoints.restore({"params": template})
  return model, items["params"]


def run(argv=None) -> str:
  """Parse flags, load, generate; returns (and prints) prompt + continuation."""
  args = parse_args(argv)
  model, params = load(args.ckpt, args.attention)
  prompt = data.encode(args.prompt)
  if len(prompt) == 0:
    raise data.UserError("--prompt is empty; give at least one character.")
  if len(prompt) + args.max_new_tokens > model.max_seq_len:
    raise data.UserError(
        f"prompt ({len(prompt)} tokens) + --max-new-tokens "
        f"({args.max_new_tokens}) exceeds the model's max_seq_len "
        f"{model.max_seq_len}; shorten one of them.")
  new = transformer.generate(
      params, model, jnp.asarray(prompt)[None], args.max_new_tokens,
      rng=jax.random.key(args.seed), temperature=args.temperature,
      top_k=args.top_k or None)
  text = args.prompt + data.decode(new[0])
  print(text)
  return text


def main(argv=None) -> None:
  try:
    run(argv)
  except data.UserError as e:
    print(f"flashjax-generate: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
