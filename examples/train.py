"""Train the byte-level transformer of :mod:`models.transformer` (``flashjax-train``).

    flashjax-train                       # preset tiny on CPU, gpu with a GPU
    flashjax-train --preset tiny --steps 50 --out runs/try
    flashjax-train --compare dense       # flash vs dense loss parity
    flashjax-train --compare dense cudnn # on a GPU: flash vs dense vs cuDNN

One jitted, pure ``train_step`` (AdamW, linear warmup + cosine decay, global
norm clipping); eval loss on held-out text; Orbax checkpoints under
``<out>/checkpoints`` (each save is written to a temporary directory and renamed
when complete, so an interrupted save never replaces a good checkpoint); a run
started again with the same ``--out`` resumes. Writes ``metrics.csv`` and
``loss.png`` to ``--out`` and ends with a loss summary and a generated sample.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from examples import data
from models import transformer
from models.transformer import ModelConfig


def progress(iterable, **kwargs):
  """A tqdm bar: redrawn up to 10 times a second on a terminal, every 30 s
  in a log file (a GPU run's log then holds a few updates, not one a
  step)."""
  return tqdm(iterable, mininterval=0.1 if sys.stderr.isatty() else 30,
              **kwargs)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation, data and bookkeeping of one run."""

  steps: int = 200
  batch_size: int = 8
  seq_len: int = 128
  lr: float = 3e-3
  warmup_steps: int = 20
  min_lr_ratio: float = 0.1      # final lr = lr * min_lr_ratio (cosine end)
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  eval_every: int = 50
  eval_batches: int = 4
  ckpt_every: int = 100
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Preset:
  model: ModelConfig
  train: TrainConfig


PRESETS = {
    # CPU, flash kernel in interpret mode: about 1-3 minutes.
    "tiny": Preset(
        ModelConfig(max_seq_len=128, num_layers=2, d_model=128, num_heads=4,
                    num_kv_heads=2, dtype="float32"),
        TrainConfig(steps=400, batch_size=16, seq_len=128, lr=3e-3,
                    warmup_steps=40, eval_every=100, ckpt_every=100)),
    # one H100: ~60M parameters, bf16 compute, 16 x 1024 tokens per step.
    "gpu": Preset(
        ModelConfig(max_seq_len=1024, num_layers=8, d_model=768, num_heads=12,
                    num_kv_heads=4, dtype="bfloat16"),
        TrainConfig(steps=3000, batch_size=16, seq_len=1024, lr=1e-3,
                    warmup_steps=200, eval_every=250, eval_batches=8,
                    ckpt_every=500)),
}

# Flags that override preset fields: field -> help. Their type is the field's.
MODEL_FLAGS = {
    "max_seq_len": "longest sequence the model accepts (training and generation)",
    "num_layers": "transformer blocks",
    "d_model": "residual stream width",
    "num_heads": "query heads (head_dim = d_model / num_heads, multiple of 8)",
    "num_kv_heads": "key/value heads; divides num_heads (fewer = GQA)",
    "mlp": "MLP kind: swiglu or gelu",
    "tie_embeddings": "share the input embedding with the output projection",
    "attention": "flash (flashjax kernel), dense (XLA dense attention) or cudnn "
                 "(jax.nn.dot_product_attention, GPU only)",
    "attn_dtype": "flash attention's forward: compute (the compute dtype), "
                  "fp8 (FP8 forward, backward in the compute dtype; needs "
                  "--dtype bfloat16 or float16) or fp8-pv (only P and V in "
                  "FP8, Q K^T in the compute dtype)",
    "dtype": "compute dtype: float32, bfloat16 or float16 (parameters stay "
             "float32; float16 trains with dynamic loss scaling)",
    "remat": "recompute each block's activations in the backward pass",
}
TRAIN_FLAGS = {
    "steps": "total optimizer steps (a resumed run continues up to this)",
    "batch_size": "sequences per step",
    "seq_len": "tokens per training sequence; at most --max-seq-len",
    "lr": "peak learning rate of AdamW",
    "warmup_steps": "steps of linear warmup from 0 to --lr",
    "min_lr_ratio": "the cosine decay ends at lr * this",
    "weight_decay": "AdamW decoupled weight decay (matrices only)",
    "grad_clip": "clip gradients to this global norm",
    "eval_every": "evaluate held-out loss every this many steps",
    "eval_batches": "batches per evaluation",
    "ckpt_every": "save a checkpoint every this many steps (and at the end)",
    "seed": "seed of parameter init and of the batch order",
}


def default_preset() -> str:
  return "gpu" if jax.default_backend() == "gpu" else "tiny"


CHOICES = {"attention": transformer.ATTENTIONS, "mlp": ("swiglu", "gelu"),
           "dtype": ("float32", "bfloat16", "float16"),
           "attn_dtype": transformer.ATTN_DTYPES}
# --compare kinds: name -> ModelConfig fields; "flash" is the run's own model.
COMPARE_KINDS = {"dense": dict(attention="dense", attn_dtype="compute"),
                 "cudnn": dict(attention="cudnn", attn_dtype="compute"),
                 "flash-fp8": dict(attention="flash", attn_dtype="fp8"),
                 "flash-fp8-pv": dict(attention="flash", attn_dtype="fp8-pv"),
                 "flash-bf16": dict(attention="flash", attn_dtype="compute")}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="flashjax-train",
      description="Train a byte-level decoder-only transformer on flashjax "
                  "attention; rerunning with the same --out resumes.")
  parser.add_argument(
      "--preset", choices=sorted(PRESETS), default=None,
      help="model + training preset (default: gpu if JAX sees a GPU, else "
           "tiny); the flags below override its fields")
  parser.add_argument(
      "--data", default=None,
      help="text file or folder to train on (default: the Python standard "
           "library's .py files; byte-level tokens)")
  parser.add_argument(
      "--out", default=None,
      help="output folder for metrics.csv, loss.png and checkpoints/ "
           "(default: runs/<preset>); rerunning with the same --out resumes")
  parser.add_argument(
      "--compare", nargs="+", choices=list(COMPARE_KINDS), default=None,
      help="instead of a normal run, train flash and these attentions (dense: "
           "XLA dense; cudnn: GPU only; flash-fp8 / flash-fp8-pv / "
           "flash-bf16: flash with "
           "that --attn-dtype) from the same init on the same batches in "
           "lockstep; write compare.csv/.png and print the max relative loss "
           "difference and each one's median step time")
  parser.add_argument(
      "--sample-tokens", type=int, default=200,
      help="length of the text sample generated at the end; 0: none "
           "(default: 200)")
  for group_name, part, flags in (("model", "model", MODEL_FLAGS),
                                  ("training", "train", TRAIN_FLAGS)):
    group = parser.add_argument_group(
        f"{group_name} (each defaults to the preset's value, shown in [])")
    fields = {f.name: f.type for f in dataclasses.fields(
        getattr(PRESETS["tiny"], part))}
    for name, help_text in flags.items():
      flag = "--" + name.replace("_", "-")
      defaults = ", ".join(f"{p}: {getattr(getattr(preset, part), name)}"
                           for p, preset in sorted(PRESETS.items()))
      kwargs = dict(default=None, help=f"{help_text} [{defaults}]")
      if fields[name] == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
      else:
        kwargs["type"] = {"int": int, "float": float}.get(fields[name], str)
        kwargs["choices"] = CHOICES.get(name)
      group.add_argument(flag, **kwargs)
  return parser.parse_args(argv)


def resolve(args) -> tuple[str, ModelConfig, TrainConfig]:
  """(preset name, model config, train config) with the flags applied."""
  name = args.preset or default_preset()
  preset = PRESETS[name]
  pick = lambda flags: {k: getattr(args, k) for k in flags
                        if getattr(args, k) is not None}
  try:
    model = dataclasses.replace(preset.model, **pick(MODEL_FLAGS))
  except ValueError as e:
    raise data.UserError(str(e)) from None
  train = dataclasses.replace(preset.train, **pick(TRAIN_FLAGS))
  if train.seq_len > model.max_seq_len:
    raise data.UserError(
        f"--seq-len {train.seq_len} is longer than the model's max_seq_len "
        f"{model.max_seq_len}; lower --seq-len or raise --max-seq-len.")
  if model.attention == "cudnn" and jax.default_backend() != "gpu":
    raise data.UserError("--attention cudnn needs an NVIDIA GPU; use flash or "
                         "dense here.")
  return name, model, train


# --------------------------------------------------------------------- optimizer


def make_optimizer(train: TrainConfig):
  """(optax transform, lr schedule): clip, then AdamW with warmup + cosine."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.lr, warmup_steps=train.warmup_steps,
      decay_steps=max(train.steps, train.warmup_steps + 1),
      end_value=train.lr * train.min_lr_ratio)
  decay_matrices = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  tx = optax.chain(
      optax.clip_by_global_norm(train.grad_clip),
      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=train.weight_decay,
                  mask=decay_matrices))
  return tx, schedule


@dataclasses.dataclass(frozen=True)
class LossScale:
  """Dynamic loss scaling for float16 compute (as NVIDIA's AMP and jmp): the
  loss is multiplied by ``scale`` so that small float16 gradients do not
  flush to zero; a step whose gradients overflow is skipped and halves the
  scale, ``period`` good steps in a row double it."""

  init: float = 2.0 ** 15
  period: int = 2000
  factor: float = 2.0


def init_state(model: ModelConfig, tx, seed: int,
               loss_scale: LossScale = LossScale()) -> dict:
  """The train state pytree: ``{"step": int32 [], "params", "opt_state"}``,
  plus ``loss_scale`` (float32) and ``good_steps`` (int32) with float16
  compute. Checkpoints keep params and opt_state; a resumed float16 run
  starts again from the initial loss scale."""
  params = transformer.init_params(model, seed)
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": tx.init(params)}
  if model.dtype == "float16":
    state["loss_scale"] = jnp.float32(loss_scale.init)
    state["good_steps"] = jnp.zeros((), jnp.int32)
  return state


def make_train_step(model: ModelConfig, tx, schedule,
                    loss_scale: LossScale = LossScale()):
  """jit ``(state, tokens int32 [batch, seq+1]) -> (state, metrics)``."""

  @jax.jit
  def train_step(state, tokens):
    scaled = "loss_scale" in state
    scale = state["loss_scale"] if scaled else 1.0

    def loss_fn(params):
      loss = transformer.loss_fn(params, model, tokens)
      return loss * scale, loss
    (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    grads = jax.tree.map(lambda g: g / scale, grads) if scaled else grads
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1,
                 "params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": schedule(state["step"])}
    if scaled:
      # overflow: keep params and optimizer state, halve the scale; else
      # count the good step and double the scale after `period` of them
      finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g))
                                  for g in jax.tree.leaves(grads)]))
      for key in ("params", "opt_state"):
        new_state[key] = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), new_state[key],
            state[key])
      good = jnp.where(finite, state["good_steps"] + 1, 0)
      grow = good >= loss_scale.period
      new_state["loss_scale"] = jnp.where(
          finite, jnp.where(grow, scale * loss_scale.factor, scale),
          jnp.maximum(scale / loss_scale.factor, 1.0))
      new_state["good_steps"] = jnp.where(grow, 0, good)
      metrics["loss_scale"] = scale
    return new_state, metrics

  return train_step


def make_eval(model: ModelConfig, train: TrainConfig, eval_data):
  """``params -> mean loss`` over fixed held-out batches (same every call)."""
  loss = jax.jit(transformer.loss_fn, static_argnums=1)
  batches = [data.batch(eval_data, step=i, batch_size=train.batch_size,
                        seq_len=train.seq_len, seed=train.seed + 1)
             for i in range(train.eval_batches)]
  return lambda params: float(np.mean([loss(params, model, b) for b in batches]))


# ------------------------------------------------------------------- checkpoints


class Checkpoints:
  """Orbax checkpoints in ``directory`` (the last two kept), one per step.

  A checkpoint holds named pytrees (``params``, ``opt_state``) and ``meta``
  (JSON: the model config). Restoring checks ``meta`` against the expected one,
  ignoring the fields in ``RUNTIME_FIELDS`` that do not change the parameters,
  and raises :class:`data.UserError` on a mismatch.
  """

  RUNTIME_FIELDS = ("attention", "attn_dtype", "dtype", "remat")

  def __init__(self, directory, meta: dict | None = None):
    self.directory = pathlib.Path(directory).absolute()
    self.meta = meta
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, items: dict) -> None:
    """Write ``items`` ({name: pytree}) as checkpoint ``step`` (once per step)."""
    if step == self.latest_step():
      return
    self._manager.save(step, args=ocp.args.Composite(
        meta=ocp.args.JsonSave(self.meta),
        **{k: ocp.args.StandardSave(v) for k, v in items.items()}))
    self._manager.wait_until_finished()

  def load_meta(self) -> dict:
    """The latest checkpoint's meta; UserError if there is no checkpoint."""
    step = self.latest_step()
    if step is None:
      raise data.UserError(f"no checkpoint in {self.directory}; pass the --out "
                           f"folder of a flashjax-train run.")
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, templates: dict) -> tuple[int, dict] | None:
    """(step, {name: pytree}) of the latest checkpoint, each item shaped like
    ``templates[name]``; None if there is no checkpoint."""
    if self.latest_step() is None:
      return None
    if self.meta is not None:
      self._check_meta(self.load_meta())
    step = self.latest_step()
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        k: ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, v))
        for k, v in templates.items()}))
    return step, {k: restored[k] for k in templates}

  def _check_meta(self, saved: dict) -> None:
    strip = lambda meta: {k: v for k, v in meta.get("model", {}).items()
                          if k not in self.RUNTIME_FIELDS}
    saved, wanted = strip(saved), strip(self.meta)
    if saved != wanted:
      diff = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now "
                       f"{wanted.get(k)!r}" for k in sorted(set(saved) | set(wanted))
                       if saved.get(k) != wanted.get(k))
      raise data.UserError(
          f"checkpoint in {self.directory} is from another model config "
          f"({diff}); use another --out, matching flags, or delete that folder "
          f"to start over.")


def checkpoint_meta(model: ModelConfig) -> dict:
  return {"model": dataclasses.asdict(model)}


# ----------------------------------------------------------------------- outputs


def write_csv(path, rows: list[dict]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def read_csv(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def plot(path, title: str, curves: dict, diff: tuple | None = None) -> None:
  """PNG of ``curves`` ({label: (steps, values)}), plus a second panel for
  ``diff`` (label, steps, values) on a log scale."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = 2 if diff else 1
  fig, axes = plt.subplots(panels, 1, figsize=(7, 3.2 * panels), squeeze=False)
  for label, (steps, values) in curves.items():
    axes[0, 0].plot(steps, values, label=label)
  axes[0, 0].set(title=title, xlabel="step", ylabel="loss (nats/byte)")
  axes[0, 0].legend()
  if diff:
    label, steps, values = diff
    axes[1, 0].semilogy(steps, np.maximum(values, 1e-12))
    axes[1, 0].set(xlabel="step", ylabel=label)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def loss_summary(losses: list[float]) -> str:
  """First, quartile and last losses of a curve, one line."""
  marks = sorted({0, len(losses) // 4, len(losses) // 2, 3 * len(losses) // 4,
                  len(losses) - 1})
  return "  ".join(f"[{i}] {losses[i]:.3f}" for i in marks)


# --------------------------------------------------------------------- the runs


def train(model: ModelConfig, cfg: TrainConfig, train_data, eval_data,
          out: pathlib.Path, sample_tokens: int = 200) -> list[dict]:
  """Train (resuming from ``out/checkpoints``); returns this call's metrics
  rows (``metrics.csv`` gets those of the resumed run too)."""
  tx, schedule = make_optimizer(cfg)
  state = init_state(model, tx, cfg.seed)
  ckpt = Checkpoints(out / "checkpoints", checkpoint_meta(model))
  restored = ckpt.restore({"params": state["params"],
                           "opt_state": state["opt_state"]})
  history = []     # metrics rows of the run being resumed
  if restored is not None:
    step, items = restored
    # via host memory: device arrays as fresh as init's, so that train_step
    # compiles once (Orbax returns them committed to a device, which costs a
    # second compilation).
    state = jax.tree.map(jnp.asarray, jax.device_get(
        {**state, "step": np.int32(step), **items}))
    if (out / "metrics.csv").exists():
      history = [{**r, "step": int(r["step"])}
                 for r in read_csv(out / "metrics.csv") if int(r["step"]) < step]
    print(f"resumed from {ckpt.directory} at step {int(state['step'])}")
  train_step = make_train_step(model, tx, schedule)
  evaluate = make_eval(model, cfg, eval_data)
  tokens_per_step = cfg.batch_size * cfg.seq_len
  start, rows = int(state["step"]), []
  bar = progress(range(start, cfg.steps), initial=start, total=cfg.steps,
                 desc=f"train ({model.attention})", unit="step")
  for step in bar:
    batch = data.batch(train_data, step=step, batch_size=cfg.batch_size,
                       seq_len=cfg.seq_len, seed=cfg.seed)
    t0 = time.perf_counter()
    state, metrics = train_step(state, batch)
    loss = float(metrics["loss"])
    tokens_per_s = tokens_per_step / (time.perf_counter() - t0)
    row = {"step": step, "loss": loss, "eval_loss": "",
           "lr": float(metrics["lr"]), "grad_norm": float(metrics["grad_norm"]),
           "tokens_per_s": round(tokens_per_s)}
    done = step + 1
    if done % cfg.eval_every == 0 or done == cfg.steps:
      row["eval_loss"] = evaluate(state["params"])
    if done % cfg.ckpt_every == 0 or done == cfg.steps:
      ckpt.save(done, {"params": state["params"],
                       "opt_state": state["opt_state"]})
    rows.append(row)
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}",
                    refresh=False)     # drawn at the bar's own interval
  bar.close()
  if not rows:
    print(f"nothing to do: the checkpoint is already at step {cfg.steps}")
    return rows
  curve = history + rows
  write_csv(out / "metrics.csv", curve)
  evals = [(r["step"], float(r["eval_loss"])) for r in curve
           if r["eval_loss"] != ""]
  plot(out / "loss.png", f"{model.attention} attention",
       {"train": ([r["step"] for r in curve], [float(r["loss"]) for r in curve]),
        "eval": tuple(zip(*evals)) if evals else ([], [])})
  print("train loss by step: " + loss_summary([float(r["loss"]) for r in curve]))
  if evals:
    print(f"eval loss at step {evals[-1][0]}: {evals[-1][1]:.3f}")
  print(f"wrote {out / 'metrics.csv'}, {out / 'loss.png'}, checkpoints in "
        f"{ckpt.directory}")
  if sample_tokens:
    print("sample:\n" + sample(state["params"], model, "def ", sample_tokens))
  return rows


def sample(params, model: ModelConfig, prompt: str, max_new_tokens: int, *,
           temperature: float = 0.8, top_k: int | None = 40,
           seed: int = 0) -> str:
  """Prompt + continuation as text (KV-cache generation, byte tokens)."""
  tokens = data.encode(prompt)
  max_new_tokens = min(max_new_tokens, model.max_seq_len - len(tokens))
  new = transformer.generate(params, model, jnp.asarray(tokens)[None],
                             max_new_tokens, rng=jax.random.key(seed),
                             temperature=temperature, top_k=top_k)
  return prompt + data.decode(new[0])


def compare(model: ModelConfig, cfg: TrainConfig, train_data, eval_data,
            out: pathlib.Path, against=("dense",),
            sample_tokens: int = 200) -> list[dict]:
  """Flash vs each attention in ``against`` ("dense", "cudnn") from the same
  init on the same batches, in lockstep; returns rows with each kind's loss and
  step time and the relative loss difference of flash to each. Ends with each
  kind's held-out loss and (``sample_tokens`` > 0) a sample from each."""
  tx, schedule = make_optimizer(cfg)
  names = ("flash",) + tuple(against)
  kinds = {k: model if k == "flash" else
           dataclasses.replace(model, **COMPARE_KINDS[k]) for k in names}
  steps = {k: make_train_step(m, tx, schedule) for k, m in kinds.items()}
  states = {k: init_state(model, tx, cfg.seed) for k in kinds}
  rows = []
  for step in progress(range(cfg.steps), desc="compare " + " vs ".join(names),
                       unit="step"):
    batch = data.batch(train_data, step=step, batch_size=cfg.batch_size,
                       seq_len=cfg.seq_len, seed=cfg.seed)
    row = {"step": step}
    for k in kinds:
      t0 = time.perf_counter()
      states[k], metrics = steps[k](states[k], batch)
      row[f"loss_{k}"] = float(metrics["loss"])      # waits for the step
      row[f"ms_{k}"] = (time.perf_counter() - t0) * 1e3
    for k in against:
      row[f"rel_diff_{k}"] = (abs(row["loss_flash"] - row[f"loss_{k}"])
                              / abs(row[f"loss_{k}"]))
    row["rel_diff"] = max(row[f"rel_diff_{k}"] for k in against)
    rows.append(row)
    if (step + 1) % 100 == 0:    # a run stopped early keeps what it measured
      write_csv(out / "compare.csv", rows)
  write_csv(out / "compare.csv", rows)
  steps_axis = [r["step"] for r in rows]
  plot(out / "compare.png", f"{' vs '.join(names)} attention ({model.dtype})",
       {k: (steps_axis, [r[f"loss_{k}"] for r in rows]) for k in kinds},
       diff=(f"max relative loss diff, flash vs\n{', '.join(against)} "
             f"(0 drawn at 1e-12)",
             steps_axis, [r["rel_diff"] for r in rows]))
  worst = max(rows, key=lambda r: r["rel_diff"])
  print(f"max relative loss difference flash vs {', '.join(against)}: "
        f"{worst['rel_diff']:.3g} (step {worst['step']}); final losses "
        + ", ".join(f"{k} {rows[-1][f'loss_{k}']:.4f}" for k in kinds))
  timed = rows[1:] or rows     # step 0 includes compilation
  print("median step time (steps/s): " + ", ".join(
      f"{k} {np.median([r[f'ms_{k}'] for r in timed]):.1f} ms "
      f"({1e3 / np.median([r[f'ms_{k}'] for r in timed]):.2f})" for k in kinds))
  for k, m in kinds.items():
    print(f"eval loss {k}: {make_eval(m, cfg, eval_data)(states[k]['params']):.4f}")
    if sample_tokens:
      print(f"sample ({k}):\n" + sample(states[k]["params"], m, "def ",
                                         sample_tokens))
  print(f"wrote {out / 'compare.csv'}, {out / 'compare.png'}")
  return rows


def run(argv=None) -> list[dict]:
  """Parse flags, load data, train or compare; returns the metrics rows."""
  args = parse_args(argv)
  name, model, cfg = resolve(args)
  out = pathlib.Path(args.out or os.path.join("runs", name))
  corpus = data.load_corpus(args.data)
  train_data, eval_data = data.split(corpus, cfg.seq_len)
  out.mkdir(parents=True, exist_ok=True)
  print(f"preset {name}: {model}\n{cfg}\ncorpus {len(corpus):,} bytes, "
        f"backend {jax.default_backend()}, out {out}")
  if args.compare:
    return compare(model, cfg, train_data, eval_data, out,
                   tuple(args.compare), args.sample_tokens)
  return train(model, cfg, train_data, eval_data, out, args.sample_tokens)


def main(argv=None) -> None:
  try:
    run(argv)
  except data.UserError as e:
    print(f"flashjax-train: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
