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


def test_fp8_rows_with_v_as_given_and_key_major(tmp_path):
  """flashjax_fp8_mosaic_vt takes V from fp8.quantize_v: the same kernel and
  the same output as flashjax_fp8_mosaic (relerr equal), V not transposed in
  the call; FP8 rows are compared with cuDNN FP8 (absent here: no ratio)."""
  out = tmp_path / "fp8"
  bench_attention.main([
      "--out", str(out), "--impls", "flashjax_fp8_mosaic",
      "flashjax_fp8_mosaic_vt", "--dtypes", "bfloat16", "--head-dims", "64",
      "--seqs", "128", "--tokens", "128", "--hidden", "64", "--causal",
      "true", "--modes", "fwd", "--iters", "1", "--repeats", "1",
      "--matmul", "0"])
  rows = {r["impl"]: r for r in json.loads(out.with_suffix(".json")
                                           .read_text())["rows"]}
  assert set(rows) == {"flashjax_fp8_mosaic", "flashjax_fp8_mosaic_vt"}
  given, key_major = rows.values()
  assert given["ms"] > 0 and key_major["ms"] > 0
  assert given["relerr"] == key_major["relerr"] < 0.1, rows


def test_merge_keeps_each_rows_matmul_rate(tmp_path):
  """``--merge``: a later part's row supersedes an earlier one's for the
  same case, and each row's share of the matmul rate is taken against the
  rate of the process that timed it (the last column says which)."""
  def part(name, rate, causal, tflops, command):
    row = dict(impl="flashjax_mosaic", dtype="bfloat16", b=1, s=16384, h=16,
               kv_h=16, d=128, causal=causal, mode="fwd", ms=1.0,
               tflops=tflops, peak_bytes=1, relerr=0.0)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(dict(
        meta=dict(jax="0.11.2", device="H200", date="2026-12-04",
                  command=command, matmul_tflops={"bfloat16": rate}),
        rows=[row, dict(row, causal=not causal, tflops=1.0)])))
    return str(path)
  # part a: causal 690 of 700; part b: non-causal 600 of 600 (and a causal
  # row that a is listed after, so a's supersedes it)
  b = part("b", 600.0, False, 600.0, "run b")
  a = part("a", 700.0, True, 690.0, "run a")
  out = tmp_path / "merged"
  bench_attention.main(["--merge", b, a, "--out", str(out)])
  rows = json.loads(out.with_suffix(".json").read_text())["rows"]
  assert {(r["causal"], r["tflops"], r["matmul_tflops"]) for r in rows} == {
      (True, 690.0, 700.0), (False, 1.0, 700.0)}
  bench_attention.main(["--merge", a, b, "--out", str(out)])
  md = out.with_suffix(".md").read_text()
  assert "| bfloat16 | 128 | False | 100% | 600 |" in md
  assert "| bfloat16 | 128 | True | 0% | 600 |" in md


def test_profile_kernels_tabulates_ncu_details(tmp_path):
  """benchmarks/profile_kernels.py --summarize on a CSV laid out as ncu's
  ``--csv --page details`` (its ==PROF== log lines mixed in): one row per
  launch in ID order, the metrics it has, '—' for those it lacks; a metric
  name in two sections is read from the first (Speed Of Light's %)."""
  from benchmarks import profile_kernels
  header = ('"ID","Process ID","Process Name","Host Name","Kernel Name",'
            '"Context","Stream","Block Size","Grid Size","Device","CC",'
            '"Section Name","Metric Name","Metric Unit","Metric Value"')

  def row(i, kernel, section, name, unit, value):
    return (f'"{i}","1","python3","h","{kernel}","1","7","(384, 1, 1)",'
            f'"(132, 1, 1)","0","9.0","{section}","{name}","{unit}","{value}"')
  csv_text = "\n".join([
      "==PROF== Connected to process 1", header,
      row(1, "anonymous_dkdv", "GPU Speed Of Light Throughput", "Duration",
          "us", "2,104.35"),
      row(0, "anonymous_fwd", "GPU Speed Of Light Throughput", "Duration",
          "us", "812.10"),
      row(0, "anonymous_fwd", "GPU Speed Of Light Throughput",
          "Compute (SM) Throughput", "%", "71.5"),
      row(0, "anonymous_fwd", "GPU Speed Of Light Throughput",
          "Memory Throughput", "%", "46.5"),
      row(0, "anonymous_fwd", "Memory Workload Analysis",
          "Memory Throughput", "Gbyte/s", "319.1"),
      row(0, "anonymous_fwd", "Launch Statistics", "Registers Per Thread",
          "register/thread", "168"),
      "==PROF== Disconnected from process 1"])
  (tmp_path / "prof.csv").write_text(csv_text)
  profile_kernels.main(["--summarize", str(tmp_path / "prof.csv"),
                        "--out", str(tmp_path / "prof")])
  lines = (tmp_path / "prof.md").read_text().splitlines()
  assert lines[0].startswith(
      "| # | kernel | grid × block | duration | cycles | SM % | memory % |")
  fwd, dkdv = lines[2], lines[3]
  assert fwd.startswith("| 0 | `anonymous_fwd` | (132, 1, 1) × (384, 1, 1) |")
  assert "| 812.10 us | — | 71.5 | 46.5 |" in fwd
  assert "| 168 register/thread |" in fwd
  assert dkdv.startswith("| 1 | `anonymous_dkdv` |")
  assert "| 2,104.35 us | — |" in dkdv


def test_profile_kernels_span_counts_the_gaps_between_kernels():
  """The span of a trace's GPU kernels runs from the first start to the last
  end (gaps included; host events and other streams left out), and the
  table gives it and the loop's wall clock against the kernels' total."""
  from benchmarks import profile_kernels

  def meta(pid, tid, name):
    return {"ph": "M", "pid": pid, "tid": tid, "args": {"name": name},
            "name": "thread_name" if tid is not None else "process_name"}

  def kernel(pid, tid, name, ts, dur):
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts,
            "dur": dur}
  trace = {"traceEvents": [
      meta(1, None, "/device:GPU:0"), meta(1, 7, "Stream #7"),
      meta(2, None, "/host:CPU"), meta(2, 3, "python"),
      kernel(1, 7, "fwd", 100.0, 50.0), kernel(1, 7, "merge", 160.0, 5.0),
      kernel(1, 7, "fwd", 200.0, 50.0), kernel(1, 7, "merge", 255.0, 5.0),
      kernel(2, 3, "dispatch", 0.0, 1000.0)]}
  events = profile_kernels.gpu_kernel_events(trace)
  assert profile_kernels.device_kernel_times(events) == {
      "fwd": (2, 100.0), "merge": (2, 10.0)}
  assert profile_kernels.device_span(events) == 160.0     # 100 to 260
  rows = [dict(impl="a", kernel="fwd", calls=1, us=50.0),
          dict(impl="a", kernel="merge", calls=1, us=5.0),
          dict(impl="a", kernel=profile_kernels.SPAN, calls=2, us=80.0,
               wall_us=88.0)]
  lines = profile_kernels.table(rows).splitlines()
  assert lines[-3] == "| a | **all kernels** | | **55.0** | |"
  assert lines[-2] == ("| a | span on the GPU, first start to last end | | "
                       "80.0 | 1.45× |")
  assert lines[-1] == "| a | wall clock of the traced loop | | 88.0 | 1.60× |"


def test_profile_kernels_tabulates_ncu_stalls(tmp_path):
  """--stalls on ncu's ``--csv --page raw`` layout (a units row under the
  header): per launch, the stall reasons' sum and the largest first, and the
  busiest pipelines."""
  from benchmarks import profile_kernels
  stall = lambda r: f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio"
  pipe = lambda p: f"sm__{p}.avg.pct_of_peak_sustained_active"
  names = [stall(r) for r in ("long_scoreboard", "wait", "barrier")] + [
      pipe(p) for p in ("inst_executed_pipe_xu", "pipe_tensor_op_gmma_cycles_active")]
  csv_text = "\n".join([
      "==PROF== Connected to process 1",
      '"ID","Kernel Name",' + ",".join(f'"{n}"' for n in names),
      '"","","ratio","ratio","ratio","%","%"',
      '"0","anonymous_fwd","0.50","1.25","2.00","71.2","55.0"',
      '"1","cudnn_fprop","0.10","0.90","0.30","60.0","66.6"'])
  (tmp_path / "stalls.csv").write_text(csv_text)
  profile_kernels.main(["--stalls", str(tmp_path / "stalls.csv"),
                        "--out", str(tmp_path / "stalls")])
  lines = (tmp_path / "stalls.md").read_text().splitlines()
  assert lines[2] == ("| 0 | `anonymous_fwd` | 3.75 | barrier 2.00, "
                      "wait 1.25, long_scoreboard 0.50 | inst_executed_pipe_xu "
                      "71, pipe_tensor_op_gmma_cycles_active 55 |")
  assert lines[3].startswith("| 1 | `cudnn_fprop` | 1.30 | wait 0.90,")

  # with the SMs' active cycles: fewest / mean / most, in millions
  active = [f"sm__cycles_active.{s}" for s in ("min", "avg", "max")]
  rows = csv_text.splitlines()
  rows[1] += "," + ",".join(f'"{n}"' for n in active)
  rows[2] += ',"cycle","cycle","cycle"'
  rows[3] += ',"5,900,000","6,000,000","6,150,000"'
  rows[4] += ',"1,000","2,000","3,000"'
  (tmp_path / "stalls.csv").write_text("\n".join(rows))
  profile_kernels.main(["--stalls", str(tmp_path / "stalls.csv"),
                        "--out", str(tmp_path / "stalls")])
  lines = (tmp_path / "stalls.md").read_text().splitlines()
  assert lines[0].endswith("| SM active Mcycles: fewest / mean / most |")
  assert lines[2].endswith("55 | 5.900 / 6.000 / 6.150 |")
  assert lines[3].endswith("| 0.001 / 0.002 / 0.003 |")


def test_profile_kernels_tabulates_ptxas_spills(tmp_path):
  """--ptxas on a gpu_session.sh log with ptxas's lines: per step, each
  kernel's stack frame and spills in compile order, and the reason ptxas
  gives, before a kernel's properties, for issuing its wgmmas one at a
  time; a step without ptxas lines is left out."""
  from benchmarks import profile_kernels
  props = lambda name, stack, st, ld: (
      f"ptxas info    : Compiling entry function '{name}' for 'sm_90a'\n"
      f"ptxas info    : Function properties for {name}\n"
      f"    {stack} bytes stack frame, {st} bytes spill stores, {ld} bytes "
      f"spill loads\nptxas info    : Used 168 registers, used 16 barriers\n")
  log = ("== tests: python3 -m pytest tests/test_mosaic.py\n1 passed\n"
         "== opts: python3 benchmarks/bench_attention.py --impls a b\n"
         + props("flashjax_fwd_mosaic_gpu", 0, 0, 0)
         + "ptxas info    : (C7512) Potential Performance Loss: "
         "wgmma.mma_async instructions are serialized due to insufficient "
         "register resources for the function 'flashjax_dkdv_mosaic_gpu'\n"
         + props("flashjax_dkdv_mosaic_gpu", 112, 168, 192)
         + '{"impl": "a", "ms": 1.0}\n')
  (tmp_path / "run.log").write_text(log)
  profile_kernels.main(["--ptxas", str(tmp_path / "run.log"),
                        "--out", str(tmp_path / "ptxas")])
  lines = (tmp_path / "ptxas.md").read_text().splitlines()
  assert lines[0] == "`opts: python3 benchmarks/bench_attention.py --impls a b`"
  assert lines[4:6] == [
      "| 0 | `flashjax_fwd_mosaic_gpu` | 0 | 0 | 0 | no |",
      "| 1 | `flashjax_dkdv_mosaic_gpu` | 112 | 168 | 192 | insufficient "
      "register resources |"]
  assert "tests:" not in "\n".join(lines)


def test_ptx_descriptors_sinks_hoisted_descriptors():
  """benchmarks/ptx_descriptors.py: a descriptor (a 64-bit base plus a
  128-byte-swizzle constant) defined before a loop that uses it is defined
  again at the loop's top instead, in every such loop, and its hoisted
  definition goes; other lines stay. setmaxnreg's counts are rewritten; the
  SASS count takes each wgmma loop's local stores and loads, not the
  enclosing loop's or a wait loop's; ``--budget`` counts a pass's
  instructions, exponentials and wgmma FLOPs (8-bit ones too) and the
  cycles they need of each unit."""
  from benchmarks import ptx_descriptors as pd
  filler = ["\tadd.s32 \t%r1, %r1, 1;"] * 301
  ptx = ["\tsetmaxnreg.inc.sync.aligned.u32 232;",
         "\tor.b64 \t%rd89, %rd354, 4611686568183201792;",
         "\tadd.s64 \t%rd91, %rd354, 4611686568183201794;",
         "\tadd.s64 \t%rd7, %rd354, 16;",
         "$L__BB0_8:", "\twgmma %rd89, %rd91;", *filler,
         "\t@%p1 bra \t$L__BB0_8;",
         "$L__BB0_11:", "\twgmma %rd89;", *filler,
         "\t@%p2 bra \t$L__BB0_11;"]
  sunk, moved = pd.sink_descriptors(ptx)
  assert moved == 2 and len(pd.loops(ptx)) == 2
  first, second = sunk.index("$L__BB0_8:"), sunk.index("$L__BB0_11:")
  assert sunk[:first] == [ptx[0], ptx[3]]
  assert sunk[first + 1:first + 3] == ptx[1:3]
  assert sunk[second + 1] == ptx[1]            # only what this loop uses
  assert sunk[second + 2] == "\twgmma %rd89;"
  assert pd.with_registers(ptx, 240, 24)[0] == (
      "\tsetmaxnreg.inc.sync.aligned.u32 240;")
  sass = "\n".join([
      ".L_x_1:", "STL [R1], R2", ".L_x_2:", "LDL R3, [R1]", "HGMMA.64x64x16",
      "LDL R4, [R1+0x4]", "BRA `(.L_x_2)", "STL [R1+0x8], R5",
      "BRA `(.L_x_1)", ".L_x_3:", "LDL R6, [R1]", "BRA `(.L_x_3)"])
  assert pd.loop_spills(sass) == ["STL 0, LDL 2"]
  # --mix: nvdisasm's lines, the innermost wgmma loop's integer opcodes
  sass = "\n".join(f"        /*{i:04x}*/ {x} ;" if not x.startswith(".")
                    else x for i, x in enumerate([
      ".L_x_1:", "R2UR UR4, R2", ".L_x_2:", "@!P1 IMAD.WIDE.U32 R4, R2, 3, RZ",
      "UIADD3 UR5, UR5, 0x8, URZ", "HGMMA.64x64x16.F32.BF16 R8, gdesc[UR4]",
      "BRA `(.L_x_2)", "BRA `(.L_x_1)"]))
  row = dict(zip(pd.MIX, pd.loop_mix(sass)[0].strip("| ").split(" | ")[1:]))
  assert pd.loop_mix(sass)[0].startswith("| 4 | ")
  assert (row["GMMA"], row["IMAD"], row["UIADD3"], row["R2UR"]) == (
      "1", "1", "1", "0")
  # --budget: an 8-bit wgmma loop (QGMMA counts as a wgmma loop too); two
  # warpgroups' passes: 2 x 2·64·256·32 FLOP at 8192 a cycle, 2 x 2 MUFU
  # at 8 cycles, 2 x 5 instructions
  sass = "\n".join(f"        /*{i:04x}*/ {x} ;" if not x.startswith(".")
                    else x for i, x in enumerate([
      ".L_x_4:", "MUFU.EX2 R1, R1", "@P0 MUFU.EX2 R2, R2", "FSEL R3, R3, RZ, P1",
      "QGMMA.64x256x32.F32.E4M3.E4M3 R8, gdesc[UR4], R8", "BRA `(.L_x_4)"]))
  body, = pd.wgmma_loops(sass)
  assert pd.pass_budget(body) == dict(
      instructions=5, mufu=2, fsel=1, flops=2 * 64 * 256 * 32, issue=10,
      mufu_cycles=32, tensor=256, floor=256)


def test_profile_kernels_tabulates_ncu_source_samples(tmp_path):
  """--source on ncu's ``--page source --csv --print-source sass`` layout
  (a "Kernel Name" line before each kernel's table, gzipped): per kernel the
  samples by reason, by opcode (predicates dropped) and per instruction, and
  the instructions executed by opcode."""
  import gzip
  from benchmarks import profile_kernels
  header = ('"Address","Source","Warp Stall Sampling (All Samples)",'
            '"Instructions Executed","stall_wait","stall_mio",'
            '"stall_wait (Not Issued)"')
  csv_text = "\n".join([
      '"Kernel Name","ours",', header,
      '"0x1","      MUFU.EX2 R1, R1","6","64","4","2","9"',
      '"0x2","@!P1  BRA 0x3","3","8","0","3","0"',
      '"0x3","      MUFU.EX2 R2, R2","1","64","1","0","0"',
      '"Kernel Name","cudnn",', header,
      '"0x1","      FADD.FTZ R1, R1, -R2","2","64","2","0","0"'])
  with gzip.open(tmp_path / "source.csv.gz", "wt") as f:
    f.write(csv_text)
  profile_kernels.main(["--source", str(tmp_path / "source.csv.gz"),
                        "--out", str(tmp_path / "source")])
  md = (tmp_path / "source.md").read_text()
  ours, cudnn = md.split("## `cudnn`")
  assert "10 samples; by reason: wait 50.0%, mio 50.0%" in ours
  assert "| MUFU | 70.0% | wait 50.0%, mio 20.0% |" in ours
  assert "| BRA | 30.0% | mio 30.0%, wait 0.0% |" in ours
  assert "| `MUFU.EX2 R1, R1` | 64 | 60.0% | wait 40.0%, mio 20.0% |" in ours
  assert "| FADD | 100.0% | wait 100.0%, mio 0.0% |" in cudnn
  assert ("136 instructions executed; by opcode (millions): MUFU 0.0, "
          "BRA 0.0") in ours


def test_joined_table_puts_dtypes_side_by_side():
  """bench_attention.py --joined (the README's table): a column group per
  file, TFLOP/s with ×cuDNN of the same file, cuDNN bare, n/a where an impl
  has no time; the wider head dim first."""
  def row(impl, dtype, d, ms, tflops):
    r = dict(impl=impl, dtype=dtype, b=4, s=4096, h=2048 // d, d=d,
             causal=False, mode="fwd")
    return r if ms is None else dict(r, ms=ms, tflops=tflops)
  bf16 = dict(rows=[row("flashjax_mosaic", "bfloat16", 64, 1.0, 500),
                    row("cudnn", "bfloat16", 64, 1.1, 450),
                    row("flashjax_mosaic", "bfloat16", 128, 2.0, 600),
                    row("cudnn", "bfloat16", 128, 2.2, 550)])
  fp16 = dict(rows=[row("flashjax_mosaic", "float16", 64, 1.0, 500),
                    row("cudnn", "float16", 64, 0.9, 560),
                    row("flashjax_mosaic", "float16", 128, None, None),
                    row("cudnn", "float16", 128, 2.0, 610)])
  lines = bench_attention.joined_table([bf16, fp16]).splitlines()
  assert lines[0] == ("| b×s×h, d | causal | mode | bf16: flashjax | cuDNN "
                      "| fp16: flashjax | cuDNN |")
  assert lines[2] == "| 4×4096×16, 128 | no | fwd | 600 (1.10) | 550 | n/a | 610 |"
  assert lines[3] == "| 4×4096×32, 64 | no | fwd | 500 (1.10) | 450 | 500 (0.90) | 560 |"


def test_parity_sweep_draws_hopper_cases_and_reports_failures(capsys,
                                                              monkeypatch):
  """benchmarks/parity_sweep.py: its Hopper draws are cases backend="mosaic"
  takes (``--unbanded``: the same draws without a band); a short sweep on
  the portable kernels passes and says so; a case
  that fails the rule makes it report the case and exit 1."""
  import dataclasses
  import numpy as np
  import flashjax
  from harness import Case, mosaic_supports
  from benchmarks import parity_sweep
  rng = np.random.default_rng(0)
  for _ in range(50):
    case, _ = parity_sweep.draw(rng, "mosaic")
    assert mosaic_supports(case), case
  # --unbanded: the same draws, neither causal nor a window
  draws = [parity_sweep.draw(np.random.default_rng(1), "mosaic", unbanded)
           for unbanded in (False, True)]
  assert draws[1][0] == dataclasses.replace(draws[0][0], causal=False,
                                            window=None)
  assert draws[1][1] == draws[0][1]
  assert parity_sweep.main(["--backend", "triton", "--cases", "2"]) == 0
  assert "triton: 2 of 2 cases passed" in capsys.readouterr().out
  # --options: fields over the case's default Hopper tiling
  fwd, bwd = parity_sweep.parse_options(["shared_full=True", "bwd.stages=3"])
  assert (fwd, bwd) == ({"shared_full": True}, {"stages": 3})
  case = Case(dtype="bfloat16", seq_q=100, seq_kv=100, causal=True)
  config = parity_sweep.configured(case, 0, fwd, bwd)
  default = flashjax.default_config(64, causal=True, seq_kv=100)
  assert config.mosaic == dataclasses.replace(default.mosaic, shared_full=True)
  assert config.mosaic_bwd == dataclasses.replace(default.mosaic_bwd, stages=3)

  def fail(case, seed, backend):
    raise AssertionError(f"{case.id}: dq max err 1 > tol 0.1")
  monkeypatch.setattr(parity_sweep, "check_attention", fail)
  assert parity_sweep.main(["--backend", "triton", "--cases", "1"]) == 1
  out = capsys.readouterr().out
  assert "0 of 1 cases passed" in out and "FAIL" in out and "dq max err" in out
