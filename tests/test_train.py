"""examples.train / examples.generate: smoke, loss parity, resume, bad input.

All runs use one shrunken float32 model so that the flash kernel compiles for a
single shape.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

from examples import data, generate, train

SMALL = ["--preset", "tiny", "--num-layers", "1", "--d-model", "32",
         "--num-heads", "4", "--num-kv-heads", "2", "--max-seq-len", "32",
         "--seq-len", "32", "--batch-size", "2", "--dtype", "float32",
         "--eval-batches", "1", "--sample-tokens", "0"]
# Flash and dense losses must agree to this relative tolerance at every step
# of a float32 run (they differ only in summation order).
PARITY_RTOL = 1e-5


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> pathlib.Path:
  """~40 KB of real text: the sources of this repo's examples and models."""
  root = pathlib.Path(__file__).parents[1]
  text = b"".join(p.read_bytes() for p in sorted(
      [*root.glob("examples/*.py"), *root.glob("models/*.py")]))
  path = tmp_path_factory.mktemp("data") / "corpus.txt"
  path.write_bytes(text * (1 + 40_000 // len(text)))
  return path


def _train(out, text_file, *flags):
  return train.run([*SMALL, "--data", str(text_file), "--out", str(out),
                    *flags])


def test_smoke_one_step_writes_outputs(tmp_path, text_file):
  rows = _train(tmp_path, text_file, "--steps", "1", "--sample-tokens", "8")
  assert len(rows) == 1 and np.isfinite(rows[0]["loss"])
  assert abs(rows[0]["loss"] - np.log(256)) < 0.1    # uniform at init
  assert np.isfinite(rows[0]["eval_loss"])
  for name in ("metrics.csv", "loss.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert train.Checkpoints(tmp_path / "checkpoints").latest_step() == 1


def test_resume_continues_exactly(tmp_path, text_file):
  """4 steps in one go == 2 steps, stop, resume to 4 (same losses)."""
  straight = _train(tmp_path / "straight", text_file, "--steps", "4",
                    "--ckpt-every", "2")
  _train(tmp_path / "resumed", text_file, "--steps", "2", "--ckpt-every", "2")
  resumed = _train(tmp_path / "resumed", text_file, "--steps", "4",
                   "--ckpt-every", "2")
  assert [r["step"] for r in resumed] == [2, 3]
  np.testing.assert_allclose([r["loss"] for r in resumed],
                             [r["loss"] for r in straight[2:]], rtol=1e-6)
  rows = train.read_csv(tmp_path / "resumed" / "metrics.csv")
  assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]


def test_loss_parity_flash_vs_dense(tmp_path, text_file, capsys):
  rows = _train(tmp_path, text_file, "--compare", "dense", "--steps", "20",
                "--lr", "3e-3", "--warmup-steps", "5")
  assert len(rows) == 20
  assert rows[-1]["loss_flash"] < rows[0]["loss_flash"] - 0.5   # it learns
  worst = max(r["rel_diff"] for r in rows)
  assert worst <= PARITY_RTOL, worst
  assert "max relative loss difference" in capsys.readouterr().out
  assert (tmp_path / "compare.png").stat().st_size > 0
  assert len(train.read_csv(tmp_path / "compare.csv")) == 20
  from benchmarks import summarize_parity
  summarize_parity.main([str(tmp_path)])
  summary = (tmp_path / "summary.md").read_text()
  assert "| flash vs dense |" in summary and "20 steps." in summary


def _error_of(main, argv, capsys) -> str:
  """main(argv)'s exit code must be 2 and its stderr one line; returns it."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err
  return err


def test_bad_input_gives_one_line_errors(tmp_path, text_file, capsys):
  main = lambda *flags: _error_of(train.main, [*SMALL, "--out", str(tmp_path),
                                               *flags], capsys)
  assert "no such file or folder" in main("--data", str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  assert "no text found" in main("--data", str(tmp_path / "empty"))
  assert "longer than the model's max_seq_len" in main("--seq-len", "64")
  assert "multiple of 8" in main("--d-model", "36")
  assert "needs an NVIDIA GPU" in main(
      "--attention", "cudnn") or jax.default_backend() == "gpu"
  _train(tmp_path, text_file, "--steps", "1")
  assert "from another model config (d_model" in main(
      "--data", str(text_file), "--d-model", "64")
  gen = lambda *flags: _error_of(generate.main, list(flags), capsys)
  assert "no such folder" in gen("--ckpt", str(tmp_path / "nope"))
  assert "exceeds the model's max_seq_len" in gen(
      "--ckpt", str(tmp_path), "--max-new-tokens", "100")


def test_generate_from_checkpoint(tmp_path, text_file):
  _train(tmp_path, text_file, "--steps", "1")
  text = generate.run(["--ckpt", str(tmp_path), "--prompt", "def ",
                       "--max-new-tokens", "8", "--temperature", "0"])
  assert text.startswith("def ") and len(text.encode()) >= 4


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
  meta = {"model": {"d_model": 8}}
  good = {"w": np.arange(4.0)}
  train.Checkpoints(tmp_path, meta).save(1, {"params": good})
  broken = train.Checkpoints(tmp_path, {"model": {"d_model": object()}})
  with pytest.raises(TypeError):
    broken.save(2, {"params": {"w": np.zeros(4)}})
  ckpt = train.Checkpoints(tmp_path, meta)
  assert ckpt.latest_step() == 1
  step, items = ckpt.restore({"params": good})
  assert step == 1
  np.testing.assert_array_equal(items["params"]["w"], good["w"])


def test_batches_are_deterministic_and_split_is_disjoint():
  corpus = np.arange(1000, dtype=np.uint8)
  train_part, eval_part = data.split(corpus, seq_len=16)
  assert len(train_part) + len(eval_part) == 1000
  a = data.batch(train_part, step=3, batch_size=4, seq_len=16, seed=0)
  b = data.batch(train_part, step=3, batch_size=4, seq_len=16, seed=0)
  c = data.batch(train_part, step=4, batch_size=4, seq_len=16, seed=0)
  assert a.shape == (4, 17) and a.dtype == np.int32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert data.decode(data.encode("héllo")) == "héllo"


def test_bench_train_runs_a_case_and_merges(tmp_path):
  """benchmarks/bench_train.py: one (attention, seq) case in this process,
  then the merge of two result files into a table and a plot."""
  import json
  from benchmarks import bench_train
  parts = []
  for attention in ("flash", "dense"):
    ns = type("Args", (), dict(attention=attention, seq=32, tokens=64,
                               layers=1, d_model=32, heads=4, kv_heads=2,
                               dtype="float32", remat=False, warmup=1,
                               steps=1))()
    row = bench_train.run_case(ns)
    assert row["steps_per_s"] > 0 and np.isfinite(row["loss"]), row
    path = tmp_path / f"{attention}.json"
    path.write_text(json.dumps(dict(command=attention, rows=[row])))
    parts.append(str(path))
  bench_train.main(["--merge", *parts, "--out", str(tmp_path / "merged")])
  merged = json.loads((tmp_path / "merged.json").read_text())
  assert [r["attention"] for r in merged["rows"]] == ["flash", "dense"]
  assert "| 32 × 2 |" in (tmp_path / "merged.md").read_text()
  assert (tmp_path / "merged.png").stat().st_size > 0


def test_bench_train_leaves_out_lengths_past_an_out_of_memory():
  """Once an attention runs out of memory, bench_train.py records its longer
  sequences as not run (saying where it ran out) instead of compiling them
  to fail again; shorter ones and other attentions still run."""
  from benchmarks import bench_train
  row = dict(attention="dense", seq=16384, batch=2, error=(
      "JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to "
      "allocate 157.93GiB"))
  assert bench_train.out_of_memory(row)
  assert not bench_train.out_of_memory(dict(error="timeout after 120 s"))
  oom = {"dense": 16384}
  skipped = bench_train.not_run("dense", 32768, 1, oom)
  assert skipped["error"] == "not run: out of memory at seq 16384"
  assert bench_train.not_run("dense", 16384, 2, oom) is None
  assert bench_train.not_run("flash", 32768, 1, oom) is None
  table = bench_train.table([row, skipped])
  assert "| 32768 × 1 | not run (OOM below) |" in table


def test_fp8_attention_trains_beside_bf16_and_dense(tmp_path, text_file):
  """--compare dense flash-fp8 flash-fp8-pv on bf16: the FP8-forward models
  (all of it, and P V only) learn and their losses stay within the 1% the
  H100 parity run asks of the final losses."""
  rows = _train(tmp_path, text_file, "--dtype", "bfloat16", "--compare",
                "dense", "flash-fp8", "flash-fp8-pv", "--steps", "10", "--lr",
                "3e-3", "--warmup-steps", "3")
  for kind in ("flash-fp8", "flash-fp8-pv"):
    assert rows[-1][f"loss_{kind}"] < rows[0][f"loss_{kind}"] - 0.3
    assert max(r[f"rel_diff_{kind}"] for r in rows) < 0.01


def test_fp8_attention_needs_flash_and_bf16(capsys):
  msg = _error_of(train.main, [*SMALL, "--attn-dtype", "fp8", "--steps", "1"],
                  capsys)       # SMALL is float32
  assert ("attn_dtype='fp8' needs attention='flash' and dtype 'bfloat16' or "
          "'float16'") in msg


def test_float16_trains_with_loss_scaling(tmp_path, text_file):
  """--dtype float16 (dynamic loss scale): the flash model learns and follows
  the float32 run of the same init and batches within 1% at every step (XLA
  on the CPU has no float16 dense attention to compare with here; the GPU
  parity run compares fp16 with dense)."""
  flags = ["--steps", "10", "--lr", "3e-3", "--warmup-steps", "3"]
  fp16 = _train(tmp_path / "fp16", text_file, "--dtype", "float16", *flags)
  fp32 = _train(tmp_path / "fp32", text_file, *flags)
  assert fp16[-1]["loss"] < fp16[0]["loss"] - 0.3
  np.testing.assert_allclose([r["loss"] for r in fp16],
                             [r["loss"] for r in fp32], rtol=0.01)


def test_loss_scale_skips_an_overflowing_step_and_halves():
  """Good steps apply their update and, ``period`` of them in a row, double
  the scale; a scale that overflows the float16 gradients makes the step
  leave params and optimizer state as they were and halves the scale."""
  model = train.ModelConfig(max_seq_len=16, num_layers=1, d_model=32,
                            num_heads=4, num_kv_heads=2, dtype="float16")
  tx, schedule = train.make_optimizer(train.TrainConfig(steps=10, lr=1e-2,
                                                        warmup_steps=1))
  scaling = train.LossScale(init=2.0 ** 15, period=2)
  state = train.init_state(model, tx, seed=0, loss_scale=scaling)
  step = train.make_train_step(model, tx, schedule, scaling)
  tokens = jax.numpy.asarray(
      np.random.default_rng(0).integers(0, 256, (2, 17)), jax.numpy.int32)
  leaves = lambda s: jax.tree.leaves((s["params"], s["opt_state"]))
  first, _ = step(state, tokens)      # lr 0 (warmup): params unchanged
  assert int(first["good_steps"]) == 1
  assert float(first["loss_scale"]) == 2.0 ** 15
  second, _ = step(first, tokens)     # period 2: the scale doubles
  assert float(second["loss_scale"]) == 2.0 ** 16
  assert int(second["good_steps"]) == 0
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(second["params"]), jax.tree.leaves(first["params"])))
  huge = dict(second, loss_scale=jax.numpy.float32(3e38))
  skipped, _ = step(huge, tokens)
  assert float(skipped["loss_scale"]) == float(np.float32(3e38) / 2)
  assert int(skipped["good_steps"]) == 0
  for new, old in zip(leaves(skipped), leaves(huge)):
    np.testing.assert_array_equal(new, old)
