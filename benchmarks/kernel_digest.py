"""Fingerprints of the Hopper kernels as shipped, computed on the CPU.

    python benchmarks/kernel_digest.py --out benchmarks/results/kernel-digests.json
    python benchmarks/kernel_digest.py --check benchmarks/results/kernel-digests-v6-h100.json
    python benchmarks/kernel_digest.py --check benchmarks/results/kernel-digests-v6-normalized.json [--only fp8]

Lowers every default Hopper kernel for CUDA against an abstract H100 (the
forward, dQ and dK/dV or the fused backward, for head dim 64/128, bf16/fp16,
no mask / causal / causal + segment ids; the FP8 forward, causal and not;
since v12 also bf16 and FP8 causal at 1k, since v14 at 16k: the causal
forward's tiling follows the length) and
hashes each Mosaic GPU module printed as MLIR without source locations, so a
moved line or a renamed helper does not change it, and any change to what the
GPU compiles does. ``--check FILE`` compares with a record written when the
kernels last ran compiled on a GPU: a match means a change since then (a
refactor, a new option off by default) compiles to the same kernels, which
the GPU logs of that run cover; a mismatch names the cases to run on a GPU.

The module's ``mosaic_gpu.dump_basename`` attribute numbers the kernels
lowered so far in the process, so digests of the whole text depend on which
cases ran before (the v6 record holds such digests, of the full run in
order). Records written now hash the text with that attribute blanked
(``"normalized": true``), the same whichever cases run: ``--only`` is then a
valid check. A record of either kind is checked against digests of its kind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax._src.interpreters import mlir as jax_mlir
from jax._src.lib import mosaic_gpu_dialect
from jax._src.lib.mlir import ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashjax  # noqa: E402
from pallas_kernels import mosaic as mosaic_kernels  # noqa: E402

# the Hopper kernels' names, longest first (``flashjax_fwd_fp8`` before
# ``flashjax_fwd``), as a pattern
KERNEL_NAMES = r"\b(?:%s)" % "|".join(sorted({
    mosaic_kernels.kernel_name(fp8) for fp8 in (False, True)} | {
    name for fused in (False, True) for name in mosaic_kernels.kernel_names(
        flashjax.MosaicBlocks(fused_dq=fused))}, key=len, reverse=True))

H100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3",
                                   platform="gpu", num_cores=132)
SEQ, BATCH, HEADS, KV_HEADS = 4096, 2, 4, 2


def cases():
  """name -> (head_dim, dtype, causal, segment ids, fp8, seq): at ``SEQ``,
  and causal at 1k and (since v14) 16k too: the causal forward's tiling
  follows the length (``default_config(..., seq_kv=)``: 128-row K/V tiles
  below 4k keys, the persistent grid up to 8k, FP8's 256-row tiles from
  16k)."""
  out = {}
  for d in (64, 128):
    for dtype in ("bfloat16", "float16"):
      for masking in ("none", "causal", "causal+segments"):
        out[f"d{d}-{dtype}-{masking}-grad"] = (
            d, dtype, masking != "none", "segments" in masking, False, SEQ)
    for masking in ("none", "causal"):
      out[f"d{d}-bfloat16-{masking}-fp8"] = (d, "bfloat16", masking != "none",
                                            False, True, SEQ)
    for kind in ("grad", "fp8"):
      for name, seq in (("1k", 1024), ("16k", 16384)):
        out[f"d{d}-bfloat16-causal-{name}-{kind}"] = (
            d, "bfloat16", True, False, kind == "fp8", seq)
  return out


def lowered(head_dim, dtype, causal, segments, fp8, seq):
  """The StableHLO module of the case's call: the FP8 forward, or the
  gradient (forward + backward) of a 16-bit one, lowered for CUDA."""
  q = jax.ShapeDtypeStruct((BATCH, seq, HEADS, head_dim), jnp.dtype(dtype))
  kv = jax.ShapeDtypeStruct((BATCH, seq, KV_HEADS, head_dim), jnp.dtype(dtype))
  ids = jax.ShapeDtypeStruct((BATCH, seq), jnp.int32) if segments else None

  def attend(q, k, v, ids):
    return flashjax.attention(q, k, v, causal=causal, q_segment_ids=ids,
                              backend="mosaic", interpret=False, fp8=fp8)

  def loss(q, k, v, ids):
    return jnp.sum(attend(q, k, v, ids).astype(jnp.float32))

  f = attend if fp8 else jax.grad(loss, argnums=(0, 1, 2))
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=H100)
  with jax.sharding.use_abstract_mesh(mesh):
    low = jax.jit(f).trace(q, kv, kv, ids).lower(lowering_platforms=("cuda",))
  return low.compiler_ir("stablehlo")


def mosaic_modules(module) -> list[str]:
  """Each Mosaic GPU kernel of ``module``, in call order, as MLIR text
  without locations (the kernel is serialised in its custom call's
  ``module`` attribute)."""
  texts = []

  def walk(op):
    for region in op.regions:
      for block in region:
        for inner in block:
          if (inner.name == "stablehlo.custom_call" and "mosaic_gpu" in
              str(inner.attributes["call_target_name"])):
            config = inner.attributes["mhlo.backend_config"]
            data = ir.StringAttr(config["module"]).value_bytes
            with jax_mlir.make_ir_context() as ctx:
              mosaic_gpu_dialect.register_dialect(ctx)
              # the serialised ops keep their versioned names (stable_mosaic_gpu.*)
              ctx.allow_unregistered_dialects = True
              kernel = ir.Module.parse(data)
              texts.append(kernel.operation.get_asm(enable_debug_info=False))
          walk(inner)
  walk(module.operation)
  return texts


def normalized(text: str) -> str:
  """``text`` with the process-wide kernel counter in the dump name blanked
  and the kernels' names (``flashjax_fwd``, ``flashjax_dq``, ... since the
  twenty-first session; ``anonymous`` before) read as ``anonymous``: a name
  is a symbol, not code, so records from before the names still check."""
  text = re.sub(r'mosaic_gpu\.dump_basename = "[^"]*"',
                'mosaic_gpu.dump_basename = ""', text)
  return re.sub(KERNEL_NAMES, "anonymous", text)


def digests(only: str | None = None) -> tuple[dict, dict]:
  """case -> [sha1 of each kernel's MLIR text, in call order], of the text
  as printed and of its :func:`normalized` form."""
  raw, norm = {}, {}
  for name, case in cases().items():
    if only and only not in name:
      continue
    texts = mosaic_modules(lowered(*case))
    raw[name] = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    norm[name] = [hashlib.sha1(normalized(t).encode()).hexdigest()
                  for t in texts]
    print(f"{name}: {' '.join(h[:12] for h in norm[name])}", flush=True)
  return raw, norm


def main(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", help="write the digests to this JSON file")
  p.add_argument("--check", help="compare with the digests in this JSON file; "
                 "exit 1 if any case differs")
  p.add_argument("--only", help="only the cases whose name contains this")
  args = p.parse_args(argv)

  raw, norm = digests(args.only)
  if args.out:
    Path(args.out).write_text(json.dumps(
        dict(jax=jax.__version__, command=" ".join(sys.argv), normalized=True,
             digests=norm), indent=1) + "\n")
  if args.check:
    record = json.loads(Path(args.check).read_text())
    want = record["digests"]
    got = norm if record.get("normalized") else raw
    differ = [n for n in got if want.get(n) != got[n]]
    print(f"{len(got) - len(differ)} of {len(got)} cases compile to the "
          f"kernels of {args.check}")
    for name in differ:
      print(f"  {'differs' if name in want else 'not in the record'}: {name}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
  main()
