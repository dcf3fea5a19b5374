"""A dumped kernel's PTX compiled and read on the CPU (descriptors, mix, budget).

What hoisted wgmma descriptors cost a kernel in registers (the default),
its wgmma loops' integer mix (``--mix``) and what a step asks of each unit
(``--budget``).

LLVM hoists the shared-memory matrix descriptors of a kernel's owned tiles
(64-bit ``add``/``or`` of a base address and a descriptor constant) out of
the loops that issue the wgmmas, so each one stays live across the loop. This
script takes a PTX file that Mosaic GPU dumped on a GPU
(``MOSAIC_GPU_DUMP_TO``, ``MOSAIC_GPU_DUMP_PTX=1``; ``gpu_session.sh
dump-fused``), sinks those descriptor definitions into every loop that uses
them (only the bases stay live), optionally gives the compute warpgroups 240
registers instead of 232 (``setmaxnreg``, the producer 24), and prints
ptxas's stack and spill line for each form; with ``--nvdisasm``, also the
local-memory stores and loads (spills and refills) per pass of each
wgmma loop of the SASS. It needs only ``ptxas`` (CUDA 12.8 or later for
sm_90a) and, optionally, ``nvdisasm`` (PyPI ``nvidia-cuda-nvdisasm``), no
GPU.

  python benchmarks/ptx_descriptors.py flashjax_dkdv_dq_2.ptx \
      --nvdisasm nvdisasm

``--mix`` instead: for each PTX file given, the innermost wgmma loops of
its SASS as dumped, with their integer instructions on the vector datapath
(``IMAD``, ``IADD3``, ``LOP3``, ``SHF``, ``R2UR`` to move a value to a
uniform register) and on the uniform one (``U...``): where a loop's slot or
descriptor arithmetic left the uniform datapath (thirty-third session,
``gpu_session.sh dump-split-tail``).

``--budget`` instead: for each innermost wgmma loop, what one pass (a step
of a compute warpgroup) asks of an SM's units, counted off the SASS: the
instructions a warp issues, its ``MUFU`` (exponentials), and its wgmmas'
FLOPs; and the cycles a pass of both compute warpgroups needs, at the
least, of each unit an SM sub-partition (one warp of each warpgroup) or
the SM has: the issue slot (one instruction a cycle), the special-function
unit (``MUFU``: 16 lanes a cycle an SM, so 8 cycles a warp instruction)
and the tensor cores (dense: 4096 FLOP a cycle an SM with 16-bit operands,
8192 with 8-bit; H100/H200). The largest is the pass's floor: a kernel
whose units overlap perfectly would run a pass in that many cycles.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import tempfile

# a wgmma descriptor of a 128-byte-swizzled tile (bit 62 set: the swizzle
# mode; the strides in bits 16-45), a 64-bit base address field plus a
# constant: the tile's k-step offset
DESCRIPTOR = re.compile(
    r"\s*(?:add|or)\.[bs]64\s+(%rd\d+),\s*%rd\d+,\s*4611686\d+;\s*$")
LABEL = re.compile(r"^(\$L__BB\d+_\d+):$")
BRANCH = re.compile(r"bra(?:\.uni)?\s+(\$L__BB\d+_\d+);")


def loops(lines: list[str], min_lines: int = 300) -> list[tuple[int, int]]:
  """(label line, back-branch line) of the loops longer than ``min_lines``."""
  labels = {m.group(1): i for i, line in enumerate(lines)
            if (m := LABEL.match(line.strip()))}
  found = []
  for i, line in enumerate(lines):
    m = BRANCH.search(line)
    if m and labels.get(m.group(1), i) < i - min_lines:
      found.append((labels[m.group(1)], i))
  return found


def sink_descriptors(lines: list[str]) -> tuple[list[str], int]:
  """The PTX with each hoisted descriptor defined again at the top of every
  loop that uses it (its hoisted definition removed); and how many moved."""
  defs = {m.group(1): i for i, line in enumerate(lines)
          if (m := DESCRIPTOR.match(line))}
  inserts, removed = {}, set()
  for start, end in loops(lines):
    body = "\n".join(lines[start:end])
    for reg, i in defs.items():
      if not start < i <= end and re.search(re.escape(reg) + r"\b", body):
        inserts.setdefault(start, []).append(lines[i])
        removed.add(i)
  out = []
  for i, line in enumerate(lines):
    if i not in removed:
      out.append(line)
    out += inserts.get(i, [])
  return out, len(removed)


def with_registers(lines: list[str], compute: int, producer: int) -> list[str]:
  text = "\n".join(lines)
  text = re.sub(r"setmaxnreg\.inc\.sync\.aligned\.u32 \d+",
                f"setmaxnreg.inc.sync.aligned.u32 {compute}", text)
  text = re.sub(r"setmaxnreg\.dec\.sync\.aligned\.u32 \d+",
                f"setmaxnreg.dec.sync.aligned.u32 {producer}", text)
  return text.split("\n")


def compile_ptx(ptxas: str, lines: list[str], nvdisasm: str | None):
  """(ptxas's stack/spill line, the SASS or None) for the PTX ``lines``."""
  with tempfile.TemporaryDirectory() as tmp:
    src, cubin = (pathlib.Path(tmp) / name for name in ("k.ptx", "k.cubin"))
    src.write_text("\n".join(lines))
    out = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(src), "-o",
                          str(cubin)], capture_output=True, text=True,
                         check=True)
    sass = None if nvdisasm is None else subprocess.run(
        [nvdisasm, "-c", str(cubin)], capture_output=True, text=True,
        check=True).stdout
  return next(line.strip() for line in out.stderr.splitlines()
              if "bytes stack frame" in line), sass


# a wgmma's opcode (16-bit operands, 8-bit) and its m x n x k
GMMA = re.compile(r"\b([HQ])GMMA\.(\d+)x(\d+)x(\d+)")
# dense tensor-core FLOPs a cycle an SM (H100/H200), by operand width
TENSOR_FLOPS = {"H": 4096, "Q": 8192}
# cycles of an SM sub-partition's MUFU unit a warp instruction takes
MUFU_CYCLES = 8


def wgmma_loops(sass: str) -> list[list[str]]:
  """The instructions (nvdisasm's addresses and ``;`` dropped) of each
  innermost SASS loop that issues wgmmas (``HGMMA``, 8-bit ``QGMMA``) and
  branches back, in order; the wait loops' retries, placed at the
  function's end, are left out (they branch into these)."""
  labels, code = {}, []
  for line in sass.split("\n"):
    line = line.strip()
    if m := re.match(r"^(\.L_x_\d+):", line):
      labels[m.group(1)] = len(code)
    elif line:
      code.append(re.sub(r"^/\*[0-9a-f]+\*/\s*|\s*;$", "", line))
  found = []
  for i, ins in enumerate(code):
    m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", ins)
    start = labels.get(m.group(1), i) if m else i
    body = code[start:i + 1]
    if start < i and any(GMMA.search(x) for x in body) and not any(
        "EXIT" in x for x in body):
      found.append((start, i))
  # innermost: drop loops that contain another
  inner = [f for f in found if not any(
      g != f and f[0] <= g[0] and g[1] <= f[1] for g in found)]
  return [code[a:b + 1] for a, b in inner]


def opcode(ins: str) -> str:
  """An instruction's opcode without predicate or modifiers."""
  return (ins.split()[1] if ins.startswith("@") else ins.split()[0]).split(
      ".")[0]


def pass_budget(body: list[str], warpgroups: int = 2) -> dict:
  """One pass of a wgmma loop (:func:`wgmma_loops`), as ``--budget`` counts
  it: a warp's instructions, MUFU and FSEL (masking), the wgmmas' FLOPs (a
  warpgroup's), and the cycles ``warpgroups`` compute warpgroups, each
  running the pass, need of a sub-partition's issue slot and MUFU unit and
  of the SM's tensor cores; ``floor`` is the largest."""
  ops = [opcode(x) for x in body]
  flops = cycles = 0
  for x in body:
    if m := GMMA.search(x):
      f = 2 * int(m.group(2)) * int(m.group(3)) * int(m.group(4))
      flops += f
      cycles += f / TENSOR_FLOPS[m.group(1)]
  b = dict(instructions=len(body), mufu=ops.count("MUFU"),
           fsel=ops.count("FSEL"), flops=flops,
           issue=warpgroups * len(body),
           mufu_cycles=warpgroups * MUFU_CYCLES * ops.count("MUFU"),
           tensor=round(warpgroups * cycles))
  b["floor"] = max(b["issue"], b["mufu_cycles"], b["tensor"])
  return b


BUDGET = ("instructions", "mufu", "fsel", "flops", "tensor", "mufu_cycles",
          "issue", "floor")


def loop_spills(sass: str) -> list[str]:
  """``STL n, LDL m`` for each innermost wgmma loop (:func:`wgmma_loops`)."""
  return [f"STL {sum('STL' in x for x in body)}, "
          f"LDL {sum('LDL' in x for x in body)}"
          for body in wgmma_loops(sass)]


MIX = ("GMMA", "R2UR", "IMAD", "IADD3", "VIADD", "LOP3", "SHF", "UIADD3",
       "UIMAD", "ULOP3", "USHF")


def loop_mix(sass: str) -> list[str]:
  """Markdown rows: per innermost wgmma loop, its instructions and the
  count of each opcode of ``MIX`` (predicates and modifiers dropped;
  ``GMMA``: the wgmmas, 16-bit ``HGMMA`` and 8-bit ``QGMMA``)."""
  rows = []
  for body in wgmma_loops(sass):
    ops = ["GMMA" if op in ("HGMMA", "QGMMA") else op
           for op in map(opcode, body)]
    rows.append(f"| {len(body)} | " + " | ".join(
        str(ops.count(op)) for op in MIX) + " |")
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("ptx", nargs="+", help="PTX file(s) Mosaic GPU dumped")
  p.add_argument("--ptxas", default="ptxas")
  p.add_argument("--nvdisasm", help="to count spills per loop pass")
  p.add_argument("--mix", action="store_true",
                 help="the wgmma loops' integer instructions, per file")
  p.add_argument("--budget", action="store_true",
                 help="each wgmma loop's pass: instructions, MUFU, FLOPs "
                 "and the cycles it needs of each unit, per file")
  args = p.parse_args()
  if args.budget:
    print("| PTX | loop | a warp's instructions | MUFU | FSEL | wgmma FLOP "
          "(a warpgroup) | tensor cycles | MUFU cycles | issue cycles | "
          "floor |")
    print("|---|---|" + "---|" * len(BUDGET))
    for path in args.ptx:
      lines = pathlib.Path(path).read_text().split("\n")
      _, sass = compile_ptx(args.ptxas, lines, args.nvdisasm or "nvdisasm")
      for i, body in enumerate(wgmma_loops(sass)):
        b = pass_budget(body)
        print(f"| `{path}` | {i} | "
              + " | ".join(str(b[k]) for k in BUDGET) + " |")
    return
  if args.mix:
    print("| PTX | loop instructions | " + " | ".join(MIX) + " |")
    print("|---|---|" + "---|" * len(MIX))
    for path in args.ptx:
      lines = pathlib.Path(path).read_text().split("\n")
      _, sass = compile_ptx(args.ptxas, lines, args.nvdisasm or "nvdisasm")
      for row in loop_mix(sass):
        print(f"| `{pathlib.Path(path).name}` {row}")
    return
  args.ptx, = args.ptx
  lines = pathlib.Path(args.ptx).read_text().split("\n")
  sunk, moved = sink_descriptors(lines)
  print(f"{args.ptx}: {len(loops(lines))} loops, {moved} hoisted descriptor "
        f"definitions sunk into them")
  for name, form in (("as dumped", lines), ("descriptors sunk", sunk)):
    for regs in (232, 240):
      ptx = form if regs == 232 else with_registers(form, 240, 24)
      line, sass = compile_ptx(args.ptxas, ptx, args.nvdisasm)
      per_pass = "" if sass is None else f" {'; '.join(loop_spills(sass))} |"
      print(f"| {name} | {regs} registers | {line} |{per_pass}")


if __name__ == "__main__":
  main()
