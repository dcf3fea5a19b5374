"""Attention kernels against their peers, all timed in one process on one GPU.

    python benchmarks/bench_attention.py --out benchmarks/results/attention-h100

Shapes are FlashAttention's benchmark set: 16k tokens per batch, hidden 2048
(head_dim 64 -> 32 heads, 128 -> 16 heads), seq 512 ... 16k. For each
(impl, dtype, head_dim, causal, seq, mode) it writes one JSON row with
``impl, dtype, b, s, h, kv_h, d, causal, mode, ms, tflops, peak_bytes, relerr``
and a markdown table with the ratio to cuDNN from the same run.

* Timing: a case's impls are all compiled and warmed up first; then one
  untimed round and ``--repeats`` timed rounds, each timing every impl in turn
  (the order rotating from round to round): enqueue ``--iters`` calls
  rotating over 3 input sets and block once. Each impl's median over the
  rounds is reported. Interleaved so that a drift of the GPU's clock over
  the case (it idles while the next impl compiles) falls on every impl
  alike, not on whichever ran first after a compile.
* FLOPs: 4·b·s²·h·d, halved for causal, ×3.5 for fwd_bwd (fwd + bwd = 1 + 2.5).
* peak_bytes: XLA's memory analysis of the compiled call (arguments + outputs +
  temporaries), i.e. what the call needs on the device.
* relerr: ||O - O_ref|| / ||O_ref|| on the first two heads, O_ref the float32
  dense reference at highest matmul precision.
* Matmul rate (``--matmul N``, default 8192): XLA's ``[N, N] @ [N, N]`` in each
  16-bit dtype, timed the same way first; the table then gives each impl's
  forward at the longest seq as a share of it.

Implementations (``--impls``): flashjax (portable Triton-lowered kernels),
flashjax_mosaic (the Hopper kernels), flashjax_mosaic_deterministic (the
Hopper kernels with ``deterministic=True``: the two-kernel backward),
cudnn, xla, jax_pallas_mha (JAX's Triton
``mha``), jax_attention_mgpu (JAX's Mosaic FA3 kernel; float16 only) and
tokamax_mosaic (needs tokamax installed); the FP8 training policy on 16-bit
inputs (quantisation inside the call; forward and forward+backward):
flashjax_fp8_policy, and flashjax_fp8pv_policy (``fp8_qk=False``: Q Kᵀ in
16 bits, P and V in FP8); FP8 forward: flashjax_fp8
(portable), flashjax_fp8_mosaic (Hopper) and cudnn_fp8 (cuDNN through JAX's
internal API), all on e4m3 inputs quantised per tensor by
``flashjax.fp8.quantize`` outside the timed call (``dtype`` then
names the source dtype of the inputs), and flashjax_fp8_mosaic_vt, the
Hopper FP8 forward with V from ``flashjax.fp8.quantize_v`` (the kernel's
key-major layout, so no transpose of V in the call). A peer that cannot run
a case records its error in the row. A Hopper impl name may carry options of the default
tiling after ``+``, e.g. ``flashjax_fp8_mosaic+block_kv=128`` (forward's
:class:`flashjax.MosaicBlocks`) or ``flashjax_mosaic+bwd.deferred_waits=True``
(the backward's; ``flashjax_mosaic+bwd.fused_dq=True`` is the fused
backward): an option against the default in the same process.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashjax  # noqa: E402


def impls(causal: bool):
  """name -> attention(q, k, v) over [batch, seq, heads, head_dim]."""
  def cudnn(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                        implementation="cudnn")

  def xla(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                        implementation="xla")

  def flash(q, k, v):
    return flashjax.attention(q, k, v, causal=causal, backend="triton")

  def flash_mosaic(q, k, v, deterministic=False):
    return flashjax.attention(q, k, v, causal=causal, backend="mosaic",
                              deterministic=deterministic)

  def jax_mgpu(q, k, v):
    # JAX's FA3-style Mosaic kernel: float16 only, no softmax scale (pre-scale
    # q), no causal backward in jax 0.11.2.
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    config = attention_mgpu.TuningConfig(
        block_q=64, block_kv=64, max_concurrent_steps=2, causal=causal,
        block_q_dkv=64, block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)
    return attention_mgpu.attention(q * q.shape[-1] ** -0.5, k, v, config)

  def tokamax_mosaic(q, k, v):
    import tokamax    # benchmark peer only: PyPI tokamax 0.0.17, from wheels
    return tokamax.dot_product_attention(q, k, v, is_causal=causal,
                                         implementation="mosaic")

  def pallas_mha(q, k, v):
    import warnings
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      from jax.experimental.pallas.ops.gpu import attention as jax_attention
    return jax_attention.mha(q, k, v, segment_ids=None, causal=causal,
                             sm_scale=q.shape[-1] ** -0.5)

  def flash_fp8_policy(q, k, v, fp8_qk=True):
    # the training policy on 16-bit inputs: quantisation (and K's centring)
    # inside the call, FP8 forward, 16-bit backward
    return flashjax.attention(q, k, v, causal=causal, fp8=True,
                              fp8_qk=fp8_qk)

  def flash_fp8(q8, k8, v8, qd, kd, vd):
    return flashjax.attention(q8, k8, v8, causal=causal, q_descale=qd,
                              k_descale=kd, v_descale=vd)

  def flash_fp8_mosaic(q8, k8, v8, qd, kd, vd):
    return flashjax.attention(q8, k8, v8, causal=causal, q_descale=qd,
                              k_descale=kd, v_descale=vd, backend="mosaic")

  def cudnn_fp8(q8, k8, v8, qd, kd, vd):
    # cuDNN's FP8 attention through JAX's internal API (the public one refuses
    # FP8 in jax 0.11.2), with the same descales; the output scale stays 1.
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_attn
    one = jnp.ones((1, 1, 1, 1), jnp.float32)
    params = {n: one for n in (
        "amax_dQ", "amax_dK", "amax_dV", "amax_dP", "descale_s", "scale_s",
        "scale_o", "descale_o", "descale_dO", "descale_dP", "scale_dQ",
        "scale_dK", "scale_dV", "scale_dP")}
    params.update(descale_q=qd.reshape(1, 1, 1, 1),
                  descale_k=kd.reshape(1, 1, 1, 1),
                  descale_v=vd.reshape(1, 1, 1, 1))
    o = cudnn_attn.dot_product_attention(
        q8, k8, v8, scale=q8.shape[-1] ** -0.5, use_fp8=True,
        fp8_params=params, mask_type=(cudnn_attn.MaskType.CAUSAL if causal
                                      else cudnn_attn.MaskType.NO_MASK))
    return o[0] if isinstance(o, (tuple, list)) else o

  return {"flashjax": flash, "flashjax_mosaic": flash_mosaic,
          "flashjax_mosaic_deterministic": functools.partial(
              flash_mosaic, deterministic=True),
          "cudnn": cudnn,
          "xla": xla, "jax_pallas_mha": pallas_mha,
          "jax_attention_mgpu": jax_mgpu, "tokamax_mosaic": tokamax_mosaic,
          "flashjax_fp8": flash_fp8, "flashjax_fp8_mosaic": flash_fp8_mosaic,
          "flashjax_fp8_mosaic_vt": flash_fp8_mosaic,
          "flashjax_fp8_policy": flash_fp8_policy,
          "flashjax_fp8pv_policy": functools.partial(flash_fp8_policy,
                                                     fp8_qk=False),
          "cudnn_fp8": cudnn_fp8}


FP8_IMPLS = ("flashjax_fp8", "flashjax_fp8_mosaic", "flashjax_fp8_mosaic_vt",
             "cudnn_fp8")
KEY_MAJOR_V_IMPLS = ("flashjax_fp8_mosaic_vt",)   # V from fp8.quantize_v


def base_name(name: str) -> str:
  return name.split("+")[0]


def parse_options(options: list[str]) -> tuple[dict, dict]:
  """``field=value`` (forward) and ``bwd.field=value`` (backward)
  MosaicBlocks fields, values True, False or ints."""
  fwd, bwd = {}, {}
  for option in options:
    field, value = option.split("=")
    target = bwd if field.startswith("bwd.") else fwd
    target[field.removeprefix("bwd.")] = (
        value == "True" if value in ("True", "False") else int(value))
  return fwd, bwd


def with_options(name: str, causal: bool):
  """The attention of ``name`` = ``flashjax_mosaic`` or
  ``flashjax_fp8_mosaic[_vt]`` followed by ``+field=value`` (forward
  MosaicBlocks) or ``+bwd.field=value`` (backward) options over the default
  tiling."""
  base, *options = name.split("+")
  if base not in ("flashjax_mosaic", "flashjax_fp8_mosaic",
                  "flashjax_fp8_mosaic_vt"):
    raise ValueError(f"options apply to the Hopper impls only, got {name!r}")
  fwd, bwd = parse_options(options)
  fp8_impl = base in FP8_IMPLS

  def configured(head_dim, seq_kv):
    config = flashjax.default_config(head_dim, causal=causal, fp8=fp8_impl,
                                     seq_kv=seq_kv)
    return dataclasses.replace(
        config, mosaic=dataclasses.replace(config.mosaic, **fwd),
        mosaic_bwd=dataclasses.replace(config.mosaic_bwd, **bwd))

  if fp8_impl:
    return lambda q8, k8, v8, qd, kd, vd: flashjax.attention(
        q8, k8, v8, causal=causal, q_descale=qd, k_descale=kd, v_descale=vd,
        backend="mosaic", config=configured(q8.shape[-1], k8.shape[1]))
  return lambda q, k, v: flashjax.attention(
      q, k, v, causal=causal, backend="mosaic",
      config=configured(q.shape[-1], k.shape[1]))


def resolve(name: str, causal: bool):
  return impls(causal)[name] if "+" not in name else with_options(name, causal)


def fp8_inputs(q, k, v, key_major: bool = False):
  """(q8, k8, v8, q_descale, k_descale, v_descale): e4m3, per-tensor amax
  scales (what the FP8 impls take; quantised once, outside the timed call);
  ``key_major``: v8 from ``fp8.quantize_v``."""
  from flashjax import fp8
  (q8, qd), (k8, kd) = (fp8.quantize(x, "float8_e4m3fn") for x in (q, k))
  v8, vd = (fp8.quantize_v if key_major else fp8.quantize)(v, "float8_e4m3fn")
  return q8, k8, v8, qd, kd, vd


def impl_inputs(name: str, x: tuple, mode: str) -> tuple:
  """What impl ``name`` is called with, from one input set (q, k, v, dO)."""
  base = base_name(name)
  if base in FP8_IMPLS:
    return fp8_inputs(*x[:3], key_major=base in KEY_MAJOR_V_IMPLS)
  return x if mode == "fwd_bwd" else x[:3]


def describe(e: Exception, limit: int = 200) -> str:
  """One line naming an exception (some, like a bare assert, have no message)."""
  return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:limit]}"


def flops(b, s, h, d, causal, mode):
  f = 4 * b * s * s * h * d / (2 if causal else 1)
  return f * (3.5 if mode == "fwd_bwd" else 1.0)


def make_call(fn, mode):
  if mode == "fwd":
    return jax.jit(fn)
  return jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do))


def warm_up(call, input_sets):
  """One call on each input set (a call that fails at run time raises here)."""
  for args in input_sets:
    jax.block_until_ready(call(*args))


def one_run(call, input_sets, iters):
  """ms per call: ``iters`` calls enqueued over the input sets, blocked once."""
  start = time.perf_counter()
  for i in range(iters):
    out = call(*input_sets[i % len(input_sets)])
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / iters * 1e3


def time_calls(calls, iters, repeats):
  """Median ms of each warmed-up call of ``calls`` ({name: (compiled, input
  sets)}) over ``repeats`` rounds, after one untimed round; a round runs
  :func:`one_run` of every call in turn, starting one further along each
  round."""
  names = list(calls)
  runs = {name: [] for name in names}
  for r in range(repeats + 1):
    k = r % len(names)
    for name in names[k:] + names[:k]:
      ms = one_run(*calls[name], iters)
      if r:
        runs[name].append(ms)
  return {name: statistics.median(ms) for name, ms in runs.items()}


def time_call(call, input_sets, iters, repeats):
  """:func:`time_calls` of one call, warmed up first."""
  warm_up(call, input_sets)
  return time_calls({"call": (call, input_sets)}, iters, repeats)["call"]


def peak_bytes(compiled):
  mem = compiled.memory_analysis()
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes
             + mem.temp_size_in_bytes)


def relerr(name, fn, q, k, v, causal):
  q, k, v = (x[:, :, :2] for x in (q, k, v))
  with jax.default_matmul_precision("highest"):
    ref = jax.jit(lambda q, k, v: flashjax.attention(
        q, k, v, causal=causal, backend="reference"))(
            *(x.astype(jnp.float32) for x in (q, k, v)))
  args = impl_inputs(name, (q, k, v), "fwd")
  out = jax.jit(fn)(*args).astype(jnp.float32)
  return float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))


def matmul_rate(dtype: str, n: int, iters: int, repeats: int) -> float:
  """TFLOP/s of XLA's ``[n, n] @ [n, n]`` in ``dtype``, timed like the
  attention calls (three input sets): the issue's yardstick, "≥ 90% of the
  matmul rate measured in the same run"."""
  keys = jax.random.split(jax.random.PRNGKey(1), 6)
  sets = [tuple(jax.random.normal(keys[2 * i + j], (n, n), jnp.dtype(dtype))
                for j in range(2)) for i in range(3)]
  call = jax.jit(jnp.matmul).lower(*sets[0]).compile()
  return 2 * n ** 3 / time_call(call, sets, iters, repeats) / 1e9


def bench(args):
  """Yields one result row per (impl, dtype, head_dim, causal, seq, mode)."""
  key = jax.random.PRNGKey(0)
  # a progress bar on a terminal (none in a log: disable=None)
  cases = list(itertools.product(args.dtypes, args.head_dims, args.causal,
                                 args.seqs))
  for dtype, d, causal, s in tqdm(cases, desc="cases", unit="case",
                                  disable=None):
    h, b = args.hidden // d, max(1, args.tokens // s)
    keys = jax.random.split(key, 12)
    sets = [tuple(jax.random.normal(keys[4 * i + j], (b, s, h, d),
                                    jnp.dtype(dtype)) for j in range(4))
            for i in range(3)]
    fns, errs = {}, {}
    for name in args.impls:
      fns[name] = resolve(name, causal)
      try:
        errs[name] = relerr(name, fns[name], *sets[0][:3], causal)
      except Exception as e:  # noqa: BLE001 - record, keep going
        errs[name] = None
        print(f"  {name} relerr failed: {describe(e, 120)}", flush=True)
    for mode in args.modes:
      # every impl compiled and warmed up, then timed in turns
      rows, calls = [], {}
      for name in args.impls:
        fp8_impl = base_name(name) in FP8_IMPLS
        if fp8_impl and mode != "fwd":
          continue        # FP8 attention is forward only
        row = dict(impl=name, dtype=dtype, b=b, s=s, h=h, kv_h=h, d=d,
                   causal=causal, mode=mode, relerr=errs[name])
        inputs = [impl_inputs(name, x, mode) for x in sets]
        try:
          call = make_call(fns[name], mode).lower(*inputs[0]).compile()
          row["peak_bytes"] = peak_bytes(call)
          warm_up(call, inputs)
          calls[name] = (call, inputs)
        except Exception as e:  # noqa: BLE001 - OOM / unsupported: record
          row["error"] = describe(e)
        rows.append(row)
      times = time_calls(calls, args.iters, args.repeats)
      for row in rows:
        if row["impl"] in times:
          row["ms"] = times[row["impl"]]
          row["tflops"] = flops(b, s, h, d, causal, mode) / row["ms"] / 1e9
        print(json.dumps(row), flush=True)
        yield row


def case_key(r):
  """Table order: dtype, head dim, causal, mode, then seq."""
  return r["dtype"], r["d"], r["causal"], r["mode"], r["s"]


def table(rows):
  """Markdown: one line per case, ms / TFLOP/s and ratio to cuDNN per impl."""
  names = list(dict.fromkeys(r["impl"] for r in rows))
  rows = sorted(rows, key=case_key)
  by_case = {}
  for r in rows:
    by_case.setdefault((r["dtype"], r["d"], r["causal"], r["mode"], r["s"]),
                       {})[r["impl"]] = r
  lines = ["| dtype | d | causal | mode | b×s×h | " + " | ".join(
      f"{n} ms (TFLOP/s, ×cuDNN)" for n in names) + " |",
           "|" + "---|" * (5 + len(names))]
  for (dtype, d, causal, mode, s), case in by_case.items():
    cells = []
    for n in names:
      # FP8 impls are compared with cuDNN's FP8 attention
      ref = case.get("cudnn_fp8" if base_name(n) in FP8_IMPLS else "cudnn",
                     {}).get("ms")
      r = case.get(n)
      if r is None or "ms" not in r:
        cells.append("—" if r is None else "error")
        continue
      ratio = f", ×{ref / r['ms']:.2f}" if ref else ""
      cells.append(f"{r['ms']:.3f} ({r['tflops']:.0f}{ratio})")
    any_row = next(iter(case.values()))
    lines.append(f"| {dtype} | {d} | {causal} | {mode} | "
                 f"{any_row['b']}×{s}×{any_row['h']} | " + " | ".join(cells)
                 + " |")
  return "\n".join(lines)


def matmul_table(rows, rates: dict) -> str:
  """Markdown: the process's matmul rate per dtype, and each impl's forward at
  the longest seq as a share of it ("" when the rate was not timed)."""
  if not rates:
    return ""
  longest = max(r["s"] for r in rows) if rows else 0
  names = list(dict.fromkeys(r["impl"] for r in rows))
  merged = any("matmul_tflops" in r for r in rows)
  lines = [f"## Share of the matmul rate (forward, seq {longest})\n",
           ("XLA matmul in each row's process (merged runs): the last "
            "column" if merged else "XLA matmul in this process: " + ", ".join(
                f"{dt} {rate:.0f} TFLOP/s" for dt, rate in rates.items()))
           + f" (`[n, n] @ [n, n]`, `--matmul`).\n",
           "| dtype | d | causal | " + " | ".join(names)
           + (" | matmul TFLOP/s |" if merged else " |"),
           "|" + "---|" * (3 + len(names) + merged)]
  cases = {}
  for r in sorted(rows, key=case_key):
    if r["mode"] == "fwd" and r["s"] == longest and r["dtype"] in rates:
      cases.setdefault((r["dtype"], r["d"], r["causal"]), {})[r["impl"]] = r
  for (dtype, d, causal), case in cases.items():
    # a merged row carries the matmul rate of the process it was timed in
    rate = lambda r: r.get("matmul_tflops", rates[dtype])
    cells = [f"{case[n]['tflops'] / rate(case[n]):.0%}"
             if "tflops" in case.get(n, {}) else "—" for n in names]
    if merged:
      cells.append(f"{rate(next(iter(case.values()))):.0f}")
    lines.append(f"| {dtype} | {d} | {causal} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\n"


def memory_table(rows):
  names = list(dict.fromkeys(r["impl"] for r in rows))
  lines = ["| dtype | d | causal | mode | seq | " + " | ".join(
      f"{n} peak GiB" for n in names) + " |", "|" + "---|" * (5 + len(names))]
  cases = {}
  for r in sorted(rows, key=case_key):
    cases.setdefault((r["dtype"], r["d"], r["causal"], r["mode"], r["s"]),
                     {})[r["impl"]] = r
  for key, case in cases.items():
    cells = ["—" if n not in case else  # not run (a run cut short)
             f"{case[n]['peak_bytes'] / 2**30:.2f}" if "peak_bytes" in case[n]
             else "error" for n in names]
    lines.append("| " + " | ".join(str(x) for x in key) + " | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(rows, path):
  """TFLOP/s vs seq len, one line per impl; a panel per (dtype, d, causal, mode)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = list(dict.fromkeys((r["dtype"], r["d"], r["causal"], r["mode"])
                              for r in rows))
  cols = 4
  nrows = -(-len(panels) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows),
                           squeeze=False)
  for ax, key in zip(axes.flat, panels):
    for impl in dict.fromkeys(r["impl"] for r in rows):
      pts = sorted((r["s"], r["tflops"]) for r in rows if "tflops" in r
                   and (r["dtype"], r["d"], r["causal"], r["mode"]) == key
                   and r["impl"] == impl)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=impl)
    ax.set_xscale("log", base=2)
    ax.set(title="{} d={} {} {}".format(key[0], key[1],
                                        "causal" if key[2] else "full", key[3]),
           xlabel="seq len", ylabel="TFLOP/s")
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def joined_table(parts) -> str:
  """Markdown: the README's table, one column group per result file (one
  dtype each), TFLOP/s with ×cuDNN in brackets (cuDNN's own bare); rows by
  head dim (widest first), mode, causal, seq."""
  names = lambda rows: list(dict.fromkeys(r["impl"] for r in rows))
  groups = [(part["rows"][0]["dtype"], names(part["rows"]),
             {(*case_key(r), r["impl"]): r for r in part["rows"]})
            for part in parts]
  cases = sorted({case_key(r)[1:] + (r["b"], r["h"]) for part in parts
                  for r in part["rows"]},
                 key=lambda c: (-c[0], c[2], c[1], c[3]))
  short = {"flashjax_mosaic": "flashjax", "cudnn": "cuDNN",
           "tokamax_mosaic": "tokamax", "jax_attention_mgpu": "attention_mgpu"}
  head = ["b×s×h, d", "causal", "mode"] + [
      (f"{ {'bfloat16': 'bf16', 'float16': 'fp16'}.get(dtype, dtype)}: "
       if i == 0 else "")
      + short.get(n, n) for dtype, impls, _ in groups
      for i, n in enumerate(impls)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for d, causal, mode, s, b, h in cases:
    cells = [f"{b}×{s}×{h}, {d}", "yes" if causal else "no",
             "fwd+bwd" if mode == "fwd_bwd" else mode]
    for dtype, impls, by_case in groups:
      ref = by_case.get((dtype, d, causal, mode, s, "cudnn"), {}).get("ms")
      for n in impls:
        r = by_case.get((dtype, d, causal, mode, s, n), {})
        if "ms" not in r:
          cells.append("n/a")
        elif n == "cudnn" or not ref:
          cells.append(f"{r['tflops']:.0f}")
        else:
          cells.append(f"{r['tflops']:.0f} ({ref / r['ms']:.2f})")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(rows, meta, out: Path, with_plot: bool):
  """PREFIX.json (meta + rows), PREFIX.md (tables) and PREFIX.png (plot)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows),
                                                 indent=1))
  md = (f"# Attention benchmark ({meta['device']}, jax {meta['jax']}, "
        f"{meta['date']})\n\n`{meta['command']}`\n\nEach line's impls ran one "
        f"after another in one process on the same inputs; ×cuDNN = cuDNN ms / "
        f"impl ms (cuDNN FP8 ms for the FP8 impls).\n\n## Time: ms (TFLOP/s, ×cuDNN)\n\n{table(rows)}\n\n"
        + matmul_table(rows, meta.get("matmul_tflops", {}))
        + f"## Peak device memory of the call\n\n{memory_table(rows)}\n")
  out.with_suffix(".md").write_text(md)
  if with_plot:
    plot(rows, out.with_suffix(".png"))
  return md


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="benchmarks/results/attention",
                 help="output path prefix: writes PREFIX.json and PREFIX.md")
  p.add_argument("--impls", nargs="+",
                 default=["flashjax", "cudnn", "xla", "jax_pallas_mha"],
                 help="implementations to time")
  p.add_argument("--tokens", type=int, default=16384,
                 help="tokens per batch (batch = tokens // seq)")
  p.add_argument("--hidden", type=int, default=2048,
                 help="model width (heads = hidden // head_dim)")
  p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
  p.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
  p.add_argument("--seqs", nargs="+", type=int,
                 default=[512, 1024, 2048, 4096, 8192, 16384])
  p.add_argument("--causal", nargs="+", type=lambda x: x.lower() == "true",
                 default=[False, True], help="causal settings: true, false")
  p.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"])
  p.add_argument("--iters", type=int, default=20,
                 help="calls enqueued per timed run")
  p.add_argument("--repeats", type=int, default=5,
                 help="timed runs; the median is reported")
  p.add_argument("--matmul", type=int, default=8192, metavar="N",
                 help="first time XLA's [N, N] @ [N, N] in each 16-bit dtype "
                      "(the matmul rate the forward is compared with); 0: not")
  p.add_argument("--merge", nargs="+", metavar="JSON",
                 help="benchmark nothing: join the rows of these result files "
                      "(runs split to fit a time limit) into --out; a row of a "
                      "later file replaces the same case of an earlier one, "
                      "and each row keeps its own file's matmul rate")
  p.add_argument("--joined", nargs="+", metavar="JSON",
                 help="benchmark nothing: print the README's table joining "
                      "these result files (one dtype each), TFLOP/s (×cuDNN)")
  args = p.parse_args(argv)
  out = Path(args.out)
  if args.joined:
    print(joined_table([json.loads(Path(f).read_text()) for f in args.joined]))
    return
  if args.merge:
    parts = [json.loads(Path(f).read_text()) for f in args.merge]
    # the last part's meta; its rows supersede the others'
    meta = dict(parts[-1]["meta"], command=" ; ".join(
        part["meta"]["command"] for part in parts))
    rows = {}   # by case, so a re-run supersedes the row it re-measured
    for part in parts:
      rates = part["meta"].get("matmul_tflops", {})
      for r in part["rows"]:
        if r["dtype"] in rates:   # the matmul rate of the row's own process
          r = {"matmul_tflops": rates[r["dtype"]], **r}
        rows[(r["impl"], *case_key(r), r["b"], r["h"])] = r
    print(write_results(list(rows.values()), meta, out, with_plot=True))
    return
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}", flush=True)
  meta = dict(jax=jax.__version__, device=jax.devices()[0].device_kind,
              date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv))
  if args.matmul:
    meta["matmul_tflops"] = {
        dt: matmul_rate(dt, args.matmul, args.iters, args.repeats)
        for dt in args.dtypes if dt in ("bfloat16", "float16")}
    print(f"matmul {args.matmul}^3: {meta['matmul_tflops']}", flush=True)
  rows = []
  for row in bench(args):
    rows.append(row)
    # Rewritten after every row, so a run cut short still leaves its results.
    md = write_results(rows, meta, out, with_plot=False)
  write_results(rows, meta, out, with_plot=True)
  print(md)


if __name__ == "__main__":
  main()
