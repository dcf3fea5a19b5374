#!/usr/bin/env bash
# The GPU work of a session, in steps that each fit one 10-minute device call.
#
#   bash benchmarks/gpu_session.sh wheels         # here (not on the GPU): peers' wheels into .whl/
#   bash benchmarks/gpu_session.sh STEP [STEP...] # on the GPU; logs and JSON under $OUT
#
# One device call runs at most 600 s, so give it steps whose times (the
# `timeout`s below) add up to less: e.g. `tests`, then `tune-fwd tune-bwd`,
# then `tests-options` if an option won the tuning (it must pass compiled
# before it becomes a default), then `bench`. The step times below were
# measured before bench_attention.py timed its impls in interleaved rounds
# (nineteenth session), which adds an untimed round: about a fifth more
# timing per case. Steps, roughly in that order:
#   tests      the core parity suite compiled on the Hopper kernels (default
#              tilings) + FP8, then the long sequences (-v: a cut run still
#              names what passed) (~7 min)
#   tests-core the core suite alone (the start of `tests`; ~5 min)
#   tests-large  the long sequences alone (the end of `tests`; ~2 min)
#   tests-fp8  tests/test_fp8.py compiled (~2 min)
#   tests-v27  the kernel record v27's new kernel (d 64's non-causal fused
#              backward, owned_registers) against the reference: test_mosaic's
#              by-length and owned_registers tests, the long d 64 non-causal
#              case (~5 min)
#   tests-v28  the kernel record v28's defaults (Q as a register operand in
#              the d 128 non-causal forward from 4k keys; Stream-K on d 64's
#              causal paired grid from 4k): test_mosaic's forward by-length
#              test and forward Stream-K tests, then test_large's Hopper
#              cases (~9.5 min)
#   bench-v28  v28's d 128 non-causal forward (Q in registers) in
#              forward+backward against v27's forward and cuDNN, 4k / 16k,
#              bf16 and fp16 (~4 min)
#   tests-triton  test_attention.py's portable cases compiled, with the
#              margin case, the property test and the gradient checks (the
#              thirty-fourth session's consistent D; run in the
#              thirty-fifth) (~4 min)
#   tests-banded  the causal and window Hopper cases of test_attention.py
#              compiled (~2 min)
#   hang-check the banded persistent forwards that hung (softcap case at
#              232 and 240 registers, window case at 256-row tiles) (~3 min)
#   hang       benchmarks/debug_hang.py: which kernel of the window (None, 3)
#              test case hangs compiled, under which options, compiling or
#              running; then that test case (~7.5 min at most)
#   hang-persistent  the same for test_mosaic.py's first case, whose
#              persistent-grid and overlap tests ran past their time limit
#              (~3 min; a fwd_bwd piece takes ~50 s on a fresh machine)
#   hang-softcap  the same for test_attention.py's d 64 causal softcap case,
#              whose persistent (paired) forward did not finish, then the
#              pieces' ptxas register and spill lines (~9 min at most)
#   hang-registers  the softcap case's persistent forward (and the window
#              case's at 256-row K/V tiles) under other register splits
#              (compute 224 / 216 / 240, the producer 56 / 72 / 24), then
#              their ptxas lines (~8 min at most)
#   hang-narrow  the softcap case's persistent forward without GQA, without
#              the softcap, with one batch row, with 113 keys (~5 min at most)
#   ptxas      the same pieces compiled only, with ptxas's register and spill
#              lines per kernel (~3 min: a fwd_bwd piece takes ~50 s)
#   tests-options  tests/test_mosaic.py compiled: the options off by default
#              (persistent, fused, intra-warpgroup overlap, deferred waits) (~6-9 min)
#   tests-fold the backward options at d 128 (dQ overlap, fused dQ,
#              deferred waits) with the folded statistics compiled (~4 min)
#   tune-fwd   the forward's untimed option (intra-warpgroup overlap) against
#              the default tiling, bf16 d 128 and 64, causal and not (~4 min)
#   tune-bwd   the backward's (deferred waits, dQ overlap) against the default (~5 min)
#   tune-fp8   the FP8 forward's persistent (paired causal) grid and overlap
#              against its default, d 128 (~3 min)
#   bench      bench_attention: flashjax (Hopper) vs cuDNN vs tokamax, bf16,
#              d 128 and 64, 1k / 4k / 16k, forward and forward+backward (~8 min)
#   bench-fp16 the same in fp16, with JAX's attention_mgpu (~8 min);
#              BENCH_CAUSAL=false (or true): one half of both (~4 min)
#   bench-bwd  forward+backward, d 128, bf16 and fp16, against cuDNN (~2 min)
#   fp8        FP8 forward (V from fp8.quantize_v and from fp8.quantize) vs
#              cuDNN FP8 and our bf16, d 128, 4k / 16k (~3 min)
#   opts-fused-causal  the fused backward causal (2 and 3 stages, and 240
#              registers) against the two-kernel default, d 128 and 64,
#              4k / 16k, with ptxas's spill lines (~4 min)
#   opts-bwd-d64  the d 64 backward fused and/or with 128-row query
#              tiles (FlashAttention 3's d 64 tiling), 4k / 16k (~4.5 min)
#   opts-registers  240 registers a compute thread (forward, backward)
#              against the default 232, forward+backward (~4 min)
#   opts-fold  the backward's S and dP accumulators started at -L2/u and -D
#              (fold_stats) against zero starts, forward+backward (~4 min)
#   opts-bwd-next  backward tilings with the folded statistics: fused and
#              64-row dQ-kernel K/V tiles at d 128 causal, fused at d 64
#              (~4 min)
#   opts-prefetch  the forward's prefetch_q (the producer loads Q, the
#              next tile's early) compiled, then timed against the default
#              and cuDNN, bf16 and FP8 (~8 min)
#   opts-fwd   the forward's intra-warpgroup overlap and 240 registers over
#              its prefetching default, d 128, against cuDNN (~3 min)
#   opts-handover  the forward's ping-pong handing over at a tile's last P V
#              (early_handover) compiled, then timed against the default and
#              cuDNN, bf16 / FP8 (~5 min)
#   opts-step-desc  the dK/dV kernel's owned K/V tiles indexed through an
#              optimization barrier each step (step_descriptors: their wgmma
#              descriptors no longer hoisted and spilled) compiled, then timed
#              d 128, fused and two kernels, 232 and 240 registers (~7 min)
#   opts-step-desc-next  step_descriptors in d 64's fused backward, and d
#              128 causal fused (240 registers) at 2k / 4k keys, against the
#              v19 defaults and cuDNN (~4 min)
#   opts-fwd-registers  240 registers a compute thread in the forward (v19)
#              against the default 232 and cuDNN, bf16 and fp16, d 128 and
#              64, causal and not, 4k / 16k (~3.5 min)
#   opts-bwd-registers  240 registers a compute thread in the two-kernel
#              backward (d 128 causal below 8k keys, d 64 causal below 16k,
#              d 64 non-causal below 4k) against the default and cuDNN, bf16
#              forward+backward (~2.5 min)
#   opts-overlap  the forward's intra-warpgroup overlap (FA3) on v19's
#              kernels, compiled, then d 128 bf16 (+240 registers) and FP8
#              against the default and cuDNN, 4k / 16k (~5 min)
#   confirm-overlap  v20's forward (the overlap at d 128 causal from 16k)
#              against v19's, 11 rounds, fwd and fwd_bwd; the overlap at
#              8k / 12k paired and one tile a CTA (~4 min)
#   opts-overlap-next  the d 128 causal forward on one tile a CTA with the
#              overlap against the paired grid at 6k-10k keys (11 rounds),
#              and non-causal on one tile a CTA with and without it (~4 min)
#   tail       the non-causal forward's last wave: 16 / 32 heads (2048 /
#              4096 tiles of 128 rows for 132 SMs, 97% of the last round
#              busy) against 33 (4224 tiles, whole rounds), bf16 d 128,
#              4k / 16k, with cuDNN (~2 min)
#   opts-stream-k  the non-causal forward's Stream-K split of its last rounds
#              (MosaicBlocks(stream_k=True)) compiled, then timed against
#              the default and cuDNN, bf16 d 128 / 64 at 1k / 4k / 16k, and
#              FP8 at 4k / 16k (~5 min)
#   confirm-v19  the v19 backward defaults against v18's spelled as options,
#              and cuDNN, d 128 causal 8k / 16k (11 rounds), then non-causal
#              4k / 16k with and without step_descriptors (~3 min)
#   dump-fused the PTX and ptxas lines of the d 128 causal kernels (the
#              default's and the fused backward), for reading their spills
#              here (benchmarks/ptx_descriptors.py) (~1.5 min)
#   opts-split-dq  the fused backward at d 64 with dQ's columns split
#              between the warpgroups (split_dq: half the float32 dQ
#              reduce-added per step) compiled, then timed forward+backward
#              against the two-kernel default, the fused form without the
#              split, and cuDNN, bf16 d 64, 4k / 16k (~5 min)
#   tests-d64-bwd  d 64's backward by length and split_dq compiled (~2 min)
#   opts-split-dq-len  fused + split_dq at d 64 by length (1k-16k), 2 and 3
#              stages, against the default and cuDNN, then the named
#              kernels' GPU times at 16k (~7 min)
#   profile-fp8  the FP8 forward's GPU time per kernel (its kernel, V's
#              transpose) against cuDNN FP8's, 4k / 16k (~1.5 min)
#   fp8-vt     the FP8 forward with V from fp8.quantize_v (key-major: no
#              transpose in the call) against V from fp8.quantize, cuDNN FP8
#              and our bf16, d 128, 4k / 16k; the quantisations' own cost
#              (bench_quantize.py); GPU time per kernel at 4k (~5 min)
#   opts-fp8-causal-vt  the causal FP8 forward (V key-major) with 4 stages,
#              64-row K/V tiles, 240 registers, against cuDNN FP8, 4k / 16k
#              (~3 min)
#   opts-fp8-causal-256  the causal FP8 forward (V key-major) with 256-key
#              tiles on the paired grid (with and without Stream-K) at 4k /
#              8k / 12k, and the paired grid at 16k, against the default and
#              cuDNN FP8 (~6 min)
#   opts-fp8-overlap  the FP8 forward with the intra-warpgroup overlap: its
#              compiled test, then against the default and cuDNN FP8 at 4k /
#              16k causal and not (also with 240 registers) and causal 8k on
#              one tile a CTA, with ptxas's spill lines (~6 min; run in the
#              thirtieth session with P_j rounded to FP8 before P_{j-1}
#              V_{j-1} was awaited, results/raw/opts-fp8-overlap-early-p-
#              session30-h200.patch, since reverted)
#   dump-fp8-overlap  the PTX and ptxas lines of the FP8 forward with and
#              without the intra-warpgroup overlap (4k non-causal), for
#              reading its register shortage here (ptx_descriptors.py) (~1.5 min)
#   opts-fp8-index-vectors  the causal FP8 forward's masked steps with index
#              vectors (its 256-key tiles at 16k spill with iotas) against
#              iotas and cuDNN FP8, 4k / 8k / 16k, ptxas's spill lines; then
#              the PTX of both at 16k (~5 min; in the thirtieth session the
#              iota column was the default, named flashjax_fp8_mosaic_vt)
#   fp8-causal-lengths  the causal FP8 forward (V key-major) against cuDNN
#              FP8 and our bf16 forward, d 128, 4k / 8k / 12k / 16k (~3 min)
#   tests-large-fp8  test_large's FP8 case (5000 keys), compiled (~1 min)
#   confirm-fp8-index-vectors  the causal FP8 forward with index vectors
#              against iotas, cuDNN FP8 and our bf16, 4k / 8k / 16k, 11
#              rounds (~4 min; in the thirtieth session the vector column
#              was the default then, vectors at every tile size, named
#              flashjax_fp8_mosaic_vt; the default now takes them at
#              256-key tiles only)
#   opts-fwd-index-vectors  the 16-bit causal forward at 16k (d 128 with the
#              intra-warpgroup overlap, d 64) with index vectors against
#              iotas and cuDNN, ptxas's spill lines (~3 min)
#   opts-fp8-causal-256-vectors  (written in the thirtieth session, run in
#              the thirty-first) the causal FP8 forward at 4k / 8k / 12k with
#              256-key tiles and index vectors (the 256-key tiles timed before
#              spilled with iotas), on the paired grid and on one tile a CTA,
#              against the default then (128-key tiles, paired) and cuDNN
#              FP8, with ptxas's spill lines (~2 min)
#   confirm-fp8-causal-256  the new default (256-key tiles with index
#              vectors from 4k keys, v23) against v22's 128-key tiles with
#              iotas, cuDNN FP8 and our bf16, d 128 and 64, 1k-12k (and the
#              256-key tiles at 1k / 2k); at 16k the paired grid (with and
#              without Stream-K) against one tile a CTA (~5 min; in the
#              thirty-first session its first half ran past 300 s before
#              d 64's 8k and 12k, and the default then took 256-key tiles
#              from 4k keys, the paired grid up to 12k)
#   confirm-fp8-v23  v23's causal FP8 forward (256-key tiles with index
#              vectors from 2k keys, the paired grid up to 16k) against v22's
#              spelled as options, cuDNN FP8 and our bf16: d 128 and 64 at
#              2k / 8k / 12k, then 16k; and its test compiled (~5 min)
#   opts-fwd-paired-vectors  the 16-bit causal forward on the paired grid
#              (4k / 8k / 12k; d 64's 256-key tiles, d 128's 128) with index
#              vectors against iotas and cuDNN, ptxas's spill lines (timed
#              before only at 16k, one tile a CTA) (~3 min)
#   opts-fp8-v23  v23's causal FP8 forward, d 128 at 4k / 8k (8k: 0.97x
#              cuDNN FP8): without Stream-K, without the Q prefetch, with 240
#              registers a compute thread (3 stages of 256-key tiles do not
#              fit: 240 KiB) (~2 min)
#   opts-bwd-stages  the fused causal backward (d 128 from 8k keys, d 64
#              at 16k) with 3 stages, timed before only while it spilled
#              (twenty-second session), and the non-causal fused backward
#              with 240 registers (d 128) or folded statistics (d 64),
#              against the default and cuDNN, forward+backward, ptxas's
#              spill lines (~6 min)
#   confirm-bwd-stages  v24's fused causal backward (3 stages beyond 8k
#              keys at d 128) against 2 stages and cuDNN, bf16 and fp16,
#              d 128 at 8k / 12k / 16k, 9 rounds; d 64 at 16k (~6 min)
#   tests-bwd-stages  the d 128 backward's tilings by length compiled at
#              a short shape, and the long causal d 128 cases (12k, 16k)
#              that run v24's 3-stage kernel at length (~2 min)
#   bench-v24  the benchmark's cases v24 changed (d 128 causal 16k
#              forward+backward), bench's impls, one process per dtype,
#              for bench_attention.py --merge (~3 min)
#   bench-v24-d64  the same for d 64 non-causal 4k / 16k (5 stages;
#              fp16 with JAX's attention_mgpu) (~3 min)
#   bench-v25-d64  the same cases again for v25 (L in log2 units at d 64
#              non-causal; run in the thirty-sixth session; needs the
#              tokamax wheels, carry .whl) (~3 min)
#   opts-fused-causal-3  d 128's fused causal backward in 3 stages (v24's
#              kernel from 8k keys) below 8k, against the two kernels and
#              cuDNN, bf16 2k / 4k (~1.5 min)
#   opts-fp8-stages  the causal FP8 forward (v23: 2 stages of 256-key
#              tiles) with 3 or 4 stages of 128-key tiles (index vectors
#              or iotas), and with 240 registers, d 128 at 4k / 8k, against
#              cuDNN FP8, 9 rounds (~2 min)
#   opts-bwd-d64-stages  d 64's fused backward (3 stages non-causal, 2
#              causal) with 4 and 5 stages, non-causal 4k / 16k and causal
#              16k, against cuDNN, forward+backward (~3 min)
#   confirm-bwd-d64-stages  d 64's non-causal fused backward in 3, 5 and
#              6 stages against cuDNN, bf16 4k / 8k / 16k, 9 rounds; the
#              d 64 backward's tilings by length and the long non-causal
#              d 64 case compiled (~4 min)
#   opts-fwd-d64-stages  d 64's 16-bit forward (256-key tiles) in 3 stages
#              (224 KiB, fits with the prefetch's O tile) against 2 and
#              cuDNN, bf16 4k / 16k, causal and not, 7 rounds (~1.5 min)
#   opts-fwd-d128-stages  d 128's 16-bit forward in 3 stages of 128-key
#              tiles, which fit only without the prefetch's O tile (224
#              KiB), against the default (2 stages, prefetch_q) and the
#              default without the prefetch, and cuDNN, bf16 4k / 16k,
#              causal and not, 7 rounds, ptxas's lines (written in the
#              thirty-second session, not yet run; ~2.5 min)
#   opts-bwd-persistent  the backward's kernels on the persistent grid
#              (one CTA per SM walking the key tiles) against the default
#              (one tile a CTA: 4096 tiles are 31.03 waves on 132 SMs, so
#              the last wave runs 4 CTAs) and cuDNN, forward+backward, bf16
#              d 64 and 128, 4k / 16k, non-causal (~3 min)
#   ncu-bwd-persistent  why the persistent backward lost 1-6% (opts-bwd-
#              persistent): Nsight details and stall reasons of d 64's
#              forward+backward, 4k, default against persistent, the
#              dK/dV kernels' per-instruction stalls, ptxas's spill lines
#              (~4 min)
#   ncu-bwd-persistent-carry  the same for the persistent backward with
#              carried slots, whose step loop is the default's and which
#              still lost 7% at d 64 non-causal 16k: the dK/dV kernels'
#              details (memory sections), stalls and SM balance (a fixed
#              share of tiles a CTA against the hardware's dynamic
#              launch), 16k (run in the thirty-fifth session; ~4 min)
#   opts-carry-slots  the step loops carrying their slot (carry_slots)
#              and Stream-K in the persistent fused backward (run in the
#              thirty-fourth session; its Stream-K test was cut by the
#              step's time): their tests compiled, then the persistent
#              backward alone, with carried slots, and with both, against
#              the default (one tile a CTA) and cuDNN, forward+backward,
#              bf16 d 64 and 128, 4k / 16k non-causal, with ptxas's lines
#              (~7 min)
#   confirm-stream-k-bwd  the Stream-K backward's compiled tests alone,
#              then d 64 non-causal 4k / 8k / 16k with and without carried
#              slots, 9 rounds, and the persistent kernel with carried
#              slots under Mosaic GPU's dump (~2.5 min)
#   confirm-stream-k-bwd-short  the Stream-K backward (slots carried)
#              where it won, d 64 non-causal 2k / 4k, bf16 and fp16, 9
#              rounds, after its tests with and without carried slots
#              (~2.5 min)
#   opts-lse-log2  L in log2 units from XLA before the backward
#              (lse_log2; written in the thirty-fourth session, run in
#              the thirty-fifth): its tests compiled, forward+backward
#              against the default, bf16 d 64 and 128, 4k / 16k, causal
#              and not, then d 64's PTX (~7 min)
#   confirm-lse-log2  lse_log2 against the default and cuDNN in a second
#              process: forward+backward, bf16 and fp16, d 64 and 128, 2k /
#              8k, causal and not, 7 rounds (~5 min)
#   opts-d64-bwd-retime  d 64's non-causal fused backward (v25, L in
#              log2 units) with the d 128 options it lost or tied with
#              before v25: deferred waits (twentieth session: fused 2.5-2.8%
#              faster, within the H100's noise) and folded statistics
#              (eighteenth: 1.6-2.7% slower, when the kernel still converted
#              L each tile), each and both; their compiled tests first,
#              then forward+backward against cuDNN, bf16 4k / 16k, 7
#              rounds, ptxas's spill lines (run in the thirty-sixth
#              session; ~4 min)
#   opts-owned-registers  owned_registers (the owned tiles as register
#              operands: the forward's Q, the dK/dV kernel's K and V): its
#              compiled tests (both passes, FP8), then d 64's
#              forward+backward with it in the backward against the default
#              and cuDNN, bf16 4k / 16k, causal and not, 7 rounds, ptxas's
#              spill lines (written in the thirty-sixth session; ~6 min)
#   opts-owned-registers-fwd  the forward with Q in registers against the
#              default and cuDNN: bf16 d 128 and 64, 4k / 16k, causal and
#              not; FP8 (V key-major) d 128 4k / 8k / 16k, causal and not
#              (cuDNN FP8); 7 rounds, ptxas's spill lines (written in the
#              thirty-sixth session; ~5 min)
#   confirm-owned-registers  owned_registers where the first timing
#              gained (thirty-seventh session): d 64's non-causal backward,
#              where the defaults take it since the fortieth session (v27:
#              fused, from 4k keys), against itself off and with
#              shared_full (its compiled test first; run it after
#              opts-shared-full's tests pass), bf16 and fp16, 2k-16k; the
#              forward at d 128 non-causal with it (a second process);
#              7 rounds (~7 min; run in the forty-eighth session, which took
#              shared_full there: v30)
#   confirm-owned-registers-short  what the fortieth session ran of that
#              (owned_registers still off then): the backward with it at d 64
#              and 128 non-causal, bf16 4k / 16k, then d 64 causal, bf16
#              and fp16; 5 rounds (~3.5 min)
#   opts-fp8-causal  the FP8 causal forward (d 128, V key-major; 0.97x
#              cuDNN FP8 at 8k in the thirty-seventh session, 1.03 at 4k and
#              16k) against itself on one tile a CTA (its 256-key tiles with
#              index vectors were timed there only at 16k; Stream-K off and
#              240 registers were timed at 8k in the thirty-first session),
#              with cuDNN FP8 and our bf16 forward in the same process (the
#              1.3x ratio), and with Stream-K below 8k (the paired grid's
#              1024 pairs at 4k are 7.76 rounds on 132 SMs; from 8k it is
#              the default, so there that column is a same-kernel pair),
#              4k / 6k / 8k / 10k / 16k, 7 rounds, ptxas's spill lines
#              (~4 min)
#   profile-fp8-causal-8k  GPU time per kernel of the causal FP8 forward
#              at 8k and 4k keys: the default, one tile a CTA, cuDNN FP8, our
#              bf16 (~1.5 min)
#   opts-stream-k-causal-4k  Stream-K on the 16-bit causal paired grid
#              below 8k keys, where it is off (the twenty-ninth session's one
#              process: d 64 4k 0.642 vs 0.650 ms, d 128 0.505 vs 0.502; d 64
#              causal 4k is 1.08-1.10x cuDNN against the 1.10x target), bf16
#              and fp16, d 64 / 128, 4k / 6k, 9 rounds (~3 min)
#   confirm-d64-causal-16k  v29's d 64 causal forward on the paired grid
#              with Stream-K up to 16k keys: its 16k test compiled, then
#              against v28's rule, tokamax and cuDNN at 16k / 24k / 32k
#              (~5 min)
#   confirm-d64-causal-long  v29's rule as first written (d 64 causal on
#              the paired grid at every length): its tests from 16k
#              compiled, then against v28's rule, tokamax and cuDNN, forward
#              16k-32k, fwd+bwd 16k (~5 min)
#   tests-v29  v29's final rule beyond 12k keys compiled: d 64 causal at
#              24000 keys (paired, Stream-K) and 20000 (one tile a CTA)
#              (~1.5 min)
#   confirm-shared-full  v30's d 64 non-causal backward (shared_full with
#              the owned tiles in registers, fused from 4k keys) against
#              itself without shared_full and cuDNN, bf16 and fp16, 4k /
#              16k, 7 rounds; then test_d64_backward_by_length compiled
#              (~2 min)
#   tests-v30  v30's kernel in the long cases compiled: test_large's d 64
#              non-causal Hopper cases, and test_mosaic's shared_full and
#              d 64 backward tests (~3 min)
#   confirm-v31  shared_full in every fused causal backward against it off
#              and cuDNN (d 128 8k / 16k, d 64 16k), as an option in d
#              128's non-causal one at 4k, bf16 and fp16; then the
#              backwards' by-length tests and test_large's long causal
#              fused cases compiled (~5.5 min)
#   confirm-v31-nc  d 128's non-causal fused backward, the default against
#              shared_full off and on and cuDNN, 2k-16k, bf16 and fp16;
#              test_large's d 128 non-causal case compiled (~4 min)
#   confirm-v31-16k  v31 (shared_full in d 128's fused backward) against it
#              off and cuDNN at 16k, causal and not, bf16 and fp16 (~1.5 min)
#   d256       d 256's Hopper forward (fiftieth session, CPU: lowers for
#              CUDA, passes in the interpreter; "auto" takes it only once
#              this passes): its tests compiled, then bf16 forward and
#              forward+backward (the portable backward) against cuDNN, the
#              portable kernels and XLA's matmul rate, 4k / 16k, causal and
#              not, with ptxas's spill lines (~7 min)
#   d256-fp8   the FP8 forward at d 256 against cuDNN FP8 and our bf16, 4k /
#              16k, causal and not, ptxas's spill lines (~3 min)
#   deterministic  flashjax.attention(deterministic=True), the two-kernel
#              backward where the defaults fuse dQ: its tests compiled (4k
#              gradients against the reference and a second run, bit for
#              bit), then forward+backward against the default and cuDNN,
#              d 128 and 64, 4k and 16k, causal and not, bf16: what
#              determinism costs, for the docstring (~5 min)
#   opts-d64-causal-bwd  d 64 causal 16k forward+backward (the furthest
#              miss) with its fused backward in 3 stages (with and without
#              shared_full), L in log2 units, deferred waits with folded
#              statistics, the two kernels of shorter lengths, the
#              non-causal kernel's options together, against the default
#              and cuDNN (~5 min)
#   opts-d64-causal-16k  the 16-bit d 64 causal forward at 16k keys, the
#              one row of the forty-fifth session's table where tokamax led
#              (bf16 2.239 against our 2.283 ms): the paired persistent grid
#              (the default up to 12k keys; the seventeenth session's 16k:
#              2.359 against 2.386 one tile a CTA) with and without Stream-K
#              against the default (one tile a CTA, early hand-over),
#              tokamax and cuDNN, 12k / 16k (at 12k the default is the
#              paired grid with Stream-K: the third impl is the default
#              again, a same-kernel pair), bf16 and fp16, 9 rounds; needs
#              the tokamax wheels, carry .whl (~3 min)
#   profile-o-residual-4k  GPU time per kernel of forward+backward with O's
#              rounding residual (the default) and without, d 128 and 64
#              causal 4k, beside cuDNN's (~1.5 min)
#   opts-stream-k-bwd-v27  Stream-K on the persistent fused backward
#              (slots carried) on v27's d 64 non-causal kernel: its compiled
#              tests (with the owned tiles in registers too), then against
#              the default and cuDNN at 2k / 4k / 8k, bf16 and fp16 (~6 min)
#   fp8-causal-wall  the causal FP8 forward (d 128) by wall clock against
#              cuDNN FP8 and our bf16 at 4k / 8k / 16k, then kernel times at
#              16k (profile-fp8-causal-8k has 4k / 8k) (~3 min)
#   clocks    GPU time per kernel over 10 and 400 profiled calls and the
#              wall clock, with nvidia-smi's SM clock, power and clock-event
#              reasons sampled every 50 ms: whether a clock held down under
#              sustained load makes the benchmark's calls 8-21% longer than
#              the profiler's (causal FP8 8k forward; bf16 d 64 causal 4k
#              forward+backward) (~4 min)
#   gaps-fp8  the causal FP8 8k forward's 400 profiled calls over 3 input
#              sets and over 1: kernels' total, span on the GPU, wall
#              clock, per impl (~2 min)
#   wall-fp8-iters  the benchmark's wall clock of that forward in runs
#              of 20 calls and of 400 (~2 min)
#   bench-sustained  the table's bf16 shapes at 4k and 16k against cuDNN
#              in runs of 400 calls (~6 min)
#   ncu-balanced  Nsight on the forwards whose step needs the special-
#              function unit as long as the tensor cores (ptx_descriptors.py
#              --budget: FP8 d 128 and bf16 d 64, ~2080 cycles each a step;
#              the only profile of either, the eleventh session's FP8, had
#              both pipes under half busy): ours against cuDNN's, stall
#              reasons, pipes and the SMs' active cycles, then where our warps
#              stall (source page); FP8 non-causal 4k and causal 8k, bf16 d 64
#              non-causal 4k (~5 min)
#   opts-multicast  the forward's clusters of two CTAs sharing each K/V
#              tile through TMA multicast (FlashAttention 3's cluster at d
#              >= 128, 16-bit, non-causal; our d 128 non-causal forward's L2
#              throughput was 43% against cuDNN's 34%, and its warps' largest
#              stall the wait for K): its compiled tests (to the bit against
#              the unclustered grid, a 4k case walking several pairs a
#              cluster, Stream-K over clusters), then the bf16 d 128 forward:
#              the default (Stream-K), clustered with and without Stream-K,
#              unclustered without it, and cuDNN, 2k / 4k / 16k,
#              non-causal, 7 rounds, ptxas's lines (~8 min)
#   opts-multicast-more  clustered (with Stream-K) against the default and
#              cuDNN: fp16 d 128, bf16 d 64, FP8 d 128 (against cuDNN FP8),
#              4k / 16k forward, then bf16 d 128 forward + backward (~7 min)
#   ncu-o-residual  Nsight on the differentiated bf16 d 64 causal 4k
#              forward with and without O's rounding residual (6.8% of that
#              forward's GPU time): details page and stall reasons (~3 min)
#   ncu-multicast  Nsight on the bf16 d 128 non-causal forward (4k),
#              default and clustered, and cuDNN's: the details page (L2
#              throughput), stalls and pipes, and our kernels' source page
#              (where their warps wait) (~4 min)
#   opts-multicast-owned  (session 44, run then as the bench command
#              itself) the bf16 d 128 non-causal forward, 4k / 16k: the
#              default, clustered, Q as a register operand, both, cuDNN (~1 min)
#   confirm-owned-fwd  (session 44, likewise) Q as a register operand in
#              the d 128 non-causal forward against the default and cuDNN,
#              2k / 4k / 16k, bf16 and fp16, one process each (~2.5 min)
#   opts-overlap-v27  the intra-warpgroup overlap (each step's softmax
#              beside its own warpgroup's matmuls, FlashAttention 3's answer
#              for those two kernels) on them again, last timed there on the
#              tenth (d 64) and twenty-seventh (FP8) sessions' kernels: its
#              compiled tests (16-bit and FP8), then the bf16 d 64 forward
#              against the default and cuDNN at 128- and 256-key tiles, 4k /
#              16k, causal and not, 7 rounds, ptxas's spill lines (~7 min)
#   opts-overlap-v27-fp8  the same for the FP8 d 128 forward against cuDNN
#              FP8, 4k / 8k, causal and not (~3.5 min)
#   dump-overlap-v27  the PTX of the forwards with and without the overlap
#              at 128-key tiles (bf16 d 64, FP8 d 128; 4k non-causal), for
#              ptx_descriptors.py --budget / --nvdisasm here: whether each
#              step's wgmmas run beside its softmax, and what spills a pass
#              (~2 min)
#   opts-shared-full  shared_full (a step's streamed tiles on one barrier a
#              stage, awaited once: four waits a step to one in the dK/dV
#              kernel, two to one in the dQ kernel and the forward): its
#              compiled tests (both passes, FP8), then forward+backward with
#              it in the backward against the default and cuDNN, bf16 d 64
#              and 128, 4k / 16k, causal and not, 7 rounds, ptxas's spill
#              lines (written in the thirty-seventh session; ~6 min; d 64
#              non-causal takes it by default since v30, a same-kernel pair)
#   opts-shared-full-fwd  the same in the forward: bf16 d 64 and 128, FP8
#              (V key-major) d 128, 4k / 16k, causal and not, 7 rounds
#              (~3 min)
#   opts-o-residual  o_residual (the forward also writes O's rounding
#              residual r; the backward's D from O + r: the margin cases'
#              fix with the default backward kernels): its compiled tests,
#              then forward+backward against the default and cuDNN, bf16
#              d 64 and 128, 4k / 16k, causal and not, 7 rounds, ptxas's
#              spill lines, then each kernel's GPU time at d 128 16k
#              (written in the thirty-ninth session; ~8 min)
#   parity-sweep  the margin-case tests (consistent_delta, o_residual)
#              compiled, then
#              benchmarks/parity_sweep.py compiled: random cases (the
#              property test's space, lengths 1-299) on both backends, four
#              processes a backend at once, 20 cases each (the thirty-eighth
#              session's interpreted sweep, compiled; ~7 min)
#   opts-consistent-delta  consistent_delta (the two-kernel backward's dQ
#              kernel first, D + each row's excess for dK/dV, dQ - excess ⊗
#              P'K: the margin cases' fix, as the portable backward has
#              it): its compiled tests, then forward+backward against
#              the default and cuDNN where the default is two kernels, bf16
#              d 64 non-causal 2k, d 64 and 128 causal 2k / 4k, 7 rounds
#              (written in the thirty-sixth session; ~4 min)
#   dump-lse-log2-d128  d 128's non-causal (fused, folded) backward with
#              and without lse_log2: each kernel's GPU time (XLA's L
#              conversion and D fusions apart from the kernels), then both
#              under Mosaic GPU's dump, for the step loops' instructions
#              here: why it lost 0.2-1.5% there while its MLIR sheds what
#              d 64's does (run in the thirty-sixth session; ~2 min)
#   opts-stream-k-causal  Stream-K on the causal paired grid: its tests
#              compiled, then against the default and cuDNN, bf16 d 128 and
#              64 at 2k / 4k / 8k, FP8 (V key-major) at 4k / 8k (~8 min)
#   confirm-stream-k-causal  the causal paired grid's GPU Stream-K case
#              that opts-stream-k-causal's time limit cut, then Stream-K
#              against the default at 8k / 12k, bf16 d 128 and 64, FP8 (~5 min)
#   tests-stream-k-causal  the long causal case that takes Stream-K by
#              default (8k keys, 288 pairs), compiled (~1.5 min)
#   opts-stream-k-2k  Stream-K at 2k keys (the default from 2k since the
#              twenty-ninth session), bf16 and FP8, non-causal, against
#              the default before and cuDNN (~2 min)
#   ncu-fused  Nsight on the fused backward against the two kernels, d 128
#              4k, causal and not: why it loses causal (~5 min)
#   ncu-d64-bwd  Nsight on d 64's forward+backward, ours against cuDNN's,
#              4k non-causal (the table's weakest forward+backward ratios):
#              details, then the stall reasons and pipes per kernel (~4 min)
#   opts-index-vectors  masked steps' index tiles from broadcast vectors
#              (the backward's default since the twenty-second session)
#              against iotas, and in the forward too, compiled, then
#              timed causal (~6 min)
#   short-causal  the causal forward below 4k keys, persistent (the
#              default) vs one tile a CTA vs cuDNN, bf16/fp16/FP8 (~3 min)
#   causal-long  the causal forward's persistent grid from 4k keys (bf16
#              d 128 and 64, FP8), and FP8 without the prefetch (~2 min)
#   causal-8k, causal-12k  the causal forward at 8k / 12k keys, the
#              default against the persistent grid, bf16 and FP8 (~1.5 min)
#   train      bench_train at 1k, 4k, 16k and 32k (~9 min: on the H200 its
#              540 s ended during 32k's dense case, after flash's; dense's
#              cases past its out-of-memory point are now left out)
#   train-cudnn  bench_train, flash against cuDNN only, 1k / 4k / 16k (~5 min)
#   train-h100  bench_train on the current kernels, flash, dense and cuDNN,
#              at TRAIN_SEQS (default 1k / 2k / 4k; then TRAIN_SEQS="8192
#              16384" in the next call), into train-h100-<seqs>; merged with
#              `--merge` afterwards: the training target at every length
#              from 1k to 16k on one machine (~6 min a call)
#   train-more bench_train at 2k and 8k, and cuDNN at 32k (in case train's
#              time runs out before it), merged with `--merge` into train's
#              table afterwards (~6 min)
#   parity     flashjax-train --compare dense flash-fp8, 600 steps (~6.5 min:
#              2 of them compiling the three models)
#   profile    GPU time per kernel of one forward+backward, ours vs cuDNN's,
#              16k, d 128 and 64, causal and not (~4 min)
#   ncu        Nsight Compute (--set detailed) on one forward+backward each,
#              ours vs cuDNN's, d 128 4k, causal and not (~4 min)
#   ncu-fp8    the same on the FP8 forward, ours vs cuDNN FP8, and our bf16
#              forward, d 128 4k non-causal (~2 min)
#   ncu-stalls the warps' stall reasons (ncu raw metrics) of the FP8 forward
#              and the bf16 forward+backward, ours vs cuDNN's, 4k (~2 min)
#   parity-fp8-pv  flash-fp8 and flash-fp8-pv (P V only in FP8) beside
#              flash (~6 min)
#   fp8-policy the FP8 training policy's speed (full, P V only) vs bf16 and
#              cuDNN, forward and forward+backward, 1k/4k causal (~3 min)
#   parity-fp8-lr  flash-fp8 against flash at half the peak learning rate
#              (~5 min)
#   tune-short the forward's K/V tiles, stages and persistent grid at seq
#              1k, causal, d 128 and 64 (~2.5 min)
#   ncu-source which instructions the warps stall at: Nsight Compute's
#              per-SASS-instruction stall samples (source page), forwards
#              (FP8, bf16; ours and cuDNN's) and our bf16 backward, d 128 4k
#              non-causal (~3 min)
#   fp8-causal the causal FP8 forward's tiling now that P is a register
#              operand: persistent grid (mirrored pairs), 3 stages, 256-row
#              K/V tiles, against its default and cuDNN FP8, d 128, 1k / 4k /
#              16k (~3 min)
#   parity-fp16  flash against dense in float16 (dynamic loss scale), 300
#              steps (~4 min: 180 s stopped at step 151)
# Each step writes <step>.log (+ JSON/MD/PNG where it makes them) and is cut by
# `timeout` well inside the call's limit. The device tool brings back at most 8
# files, so on exit everything is packed into $OUT/gpu-<steps>.tar.gz (unpack
# it into benchmarks/results/raw/) beside a summary.txt of each log's end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flashjax-out}
WORK=$(mktemp -d)

# The archive's name: the steps joined by '-' (the device tool brings back only
# names of letters, digits, '.', '_' and '-'). Packed after every step, so a
# call cut by its time limit still returns the steps it finished.
STEPS=$(echo "$*" | tr ' ' '-')
pack() {
  [ "$STEPS" = wheels ] && return
  for log in "$WORK"/*.log; do
    [ -e "$log" ] && { echo "== $(basename "$log")"; tail -n 15 "$log" \
      | tr '\r' '\n' | grep -v 'step/s]' | tail -n 15; }
  done > "$OUT/summary.txt"
  tar czf "$OUT/gpu-$STEPS.tar.gz.part" -C "$WORK" . \
    && mv "$OUT/gpu-$STEPS.tar.gz.part" "$OUT/gpu-$STEPS.tar.gz"
}
mkdir -p "$OUT"
trap pack EXIT
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
# ncu's stall reasons per issued instruction and pipe utilisation
# (profile_kernels.py --stalls), for the nsight steps' raw pages
STALL_METRICS='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,regex:sm__(inst_executed_pipe|pipe)_.*\.avg\.pct_of_peak_sustained_active'
# each SM's active cycles, fewest / mean / most (profile_kernels.py --stalls
# adds them as a column): how evenly a kernel's work fell on the SMs
SM_BALANCE='sm__cycles_active.min,sm__cycles_active.avg,sm__cycles_active.max'
# pytest-timeout (on the GPU image): a test whose kernel hangs fails after the
# given seconds (its worker is ended and replaced) instead of holding a worker
HUNG="-o timeout_method=thread --timeout"

peers() {
  # tokamax (a benchmark peer only) from the wheels `wheels` put in .whl/,
  # carried with the call (`carry: [".whl"]`); once a call
  [ "${PYTHONPATH:-}" = /tmp/site ] && return
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
}

peer_bench() {
  # peer_bench STEP SECONDS DTYPE MGPU [bench_attention.py args]: the
  # benchmark's impls (flashjax's Hopper kernels, cuDNN, tokamax; with MGPU
  # "yes" in float16 also JAX's attention_mgpu, which takes float16 only)
  # in DTYPE, one process, tokamax from the carried wheels
  local s=$1 t=$2 dtype=$3 mgpu=
  [ "$4" = yes ] && [ "$dtype" = float16 ] && mgpu=jax_attention_mgpu
  shift 4
  peers
  # shellcheck disable=SC2086  # mgpu: one impl or none
  step "$s" timeout "$t" $PY benchmarks/bench_attention.py \
    --impls flashjax_mosaic cudnn tokamax_mosaic $mgpu --dtypes "$dtype" "$@"
}

step() {
  local name=$1; shift
  echo "== $name: $*" | tee -a "$WORK/$name.log"
  "$@" 2>&1 | tee -a "$WORK/$name.log"
  pack
}

fwd_bwd_pair() {
  # fwd_bwd_pair STEP SECONDS OUT "IMPLS" [bench_attention.py args]:
  # forward+backward of IMPLS against cuDNN in bf16 and fp16, one process,
  # no matmul rate, into $WORK/OUT (the head dims, lengths, masks and
  # rounds in the args)
  local s=$1 t=$2 out=$3 impls=$4
  shift 4
  # shellcheck disable=SC2086  # impls: a word list
  step "$s" timeout "$t" $PY benchmarks/bench_attention.py --impls $impls \
    cudnn --dtypes bfloat16 float16 --modes fwd_bwd --matmul 0 "$@" \
    --out "$WORK/$out"
}

bwd_option() {
  # bwd_option STEP OPTION SECONDS "HEAD DIMS": forward+backward with a
  # backward option (bench_attention's +bwd.OPTION=True) against the default
  # and cuDNN, bf16, 4k / 16k, causal and not, 7 rounds, ptxas's spill lines
  local s=$1 option=$2 t=$3 dims=$4
  # shellcheck disable=SC2086  # dims is a word list
  step "$s" env MOSAIC_GPU_DUMP_PTXAS=1 timeout "$t" \
    $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
    "flashjax_mosaic+bwd.$option=True" cudnn --dtypes bfloat16 \
    --head-dims $dims --seqs 4096 16384 --causal false true \
    --modes fwd_bwd --matmul 0 --repeats 7 --out "$WORK/$s"
  ptxas_table "$s"
}

fwd_index_vectors() {
  # fwd_index_vectors STEP "HEAD DIMS" "SEQS": the 16-bit causal forward with
  # index vectors against iotas and cuDNN, bf16, 9 rounds, ptxas's spill lines
  local s=$1 dims=$2 seqs=$3
  # shellcheck disable=SC2086  # dims and seqs are word lists
  step "$s" env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 \
    $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
    flashjax_mosaic+index_vectors=True cudnn --dtypes bfloat16 \
    --head-dims $dims --seqs $seqs --causal true --modes fwd \
    --matmul 0 --repeats 9 --out "$WORK/$s"
  ptxas_table "$s"
}

fwd_options() {
  # fwd_options STEP BASE PEER HEAD_DIM "SEQS" OPTIONS...: the forward of
  # BASE (flashjax_mosaic or flashjax_fp8_mosaic_vt) with each OPTIONS
  # (bench_attention's field=value[+field=value]) against its default and
  # PEER, bf16, causal and not, 7 rounds, ptxas's spill lines
  local s=$1 base=$2 peer=$3 d=$4 seqs=$5 impls=() o
  shift 5
  for o in "$@"; do impls+=("$base+$o"); done
  # shellcheck disable=SC2086  # seqs is a word list
  step "$s" env MOSAIC_GPU_DUMP_PTXAS=1 timeout 200 \
    $PY benchmarks/bench_attention.py --impls "$base" "${impls[@]}" "$peer" \
    --dtypes bfloat16 --head-dims "$d" --seqs $seqs --causal false true \
    --modes fwd --matmul 0 --repeats 7 --out "$WORK/$s"
  ptxas_table "$s"
}

mosaic_tests() {
  # mosaic_tests STEP SECONDS [pytest args]: tests/test_mosaic.py compiled
  # (an option's tests before its timing), each test cut after SECONDS - 30
  local s=$1 t=$2
  shift 2
  step "$s" env XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 timeout "$t" \
    $PY -m pytest -v -p no:cacheprovider $HUNG $((t - 30)) tests/test_mosaic.py "$@"
}

fp8_tests() {
  # fp8_tests STEP SECONDS [pytest args]: tests/test_fp8.py compiled (an
  # option's FP8 tests), each test cut after SECONDS - 30
  local s=$1 t=$2
  shift 2
  step "$s" env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout "$t" \
    $PY -m pytest -v -p no:cacheprovider $HUNG $((t - 30)) tests/test_fp8.py "$@"
}

nsight() {
  # nsight STEP NAME PAGE TABLE [ncu options] -- [profile_kernels options]:
  # Nsight Compute on one call of each impl (4k), the report's PAGE ("details",
  # "raw", "source --print-source sass") as NAME.csv (gzipped for the source
  # page) and profile_kernels.py's TABLE of it (--summarize, --stalls,
  # --source) as NAME.md
  local s=$1 name=$2 page=$3 table=$4 ncu_args=()
  shift 4
  while [ "$1" != -- ]; do ncu_args+=("$1"); shift; done
  shift
  step "$s" timeout 150 ncu --clock-control none --profile-from-start off -f \
    -o "$WORK/$name" "${ncu_args[@]}" $PY benchmarks/profile_kernels.py \
    --seq 4096 --iters 1 --no-trace "$@"
  local csv="$WORK/$name.csv"
  ncu --import "$WORK/$name.ncu-rep" --csv --page $page > "$csv" \
    2>> "$WORK/ncu.log"
  if [ "$table" = --source ]; then gzip -f "$csv"; csv="$csv.gz"; fi
  step "$s" $PY benchmarks/profile_kernels.py $table "$csv" --out "$WORK/$name"
}

ptxas_table() {
  # ptxas_table LOG...: ptxas's register and spill lines in each
  # $WORK/LOG.log (a run under MOSAIC_GPU_DUMP_PTXAS=1) as $WORK/LOG-ptxas.md
  local f
  for f in "$@"; do
    $PY benchmarks/profile_kernels.py --ptxas "$WORK/$f.log" \
      --out "$WORK/$f-ptxas" > /dev/null
  done
}

dump_ptx() {
  # dump_ptx STEP ARCHIVE [bench_attention.py args]: the benchmark under
  # Mosaic GPU's dump, its kernels' .ptx and ptxas lines (only those: the
  # whole dump, MLIR pass logs included, is ~350 MB a kernel set) xz'd as
  # $WORK/ARCHIVE.tar.xz, for reading spills off the GPU
  # (benchmarks/ptx_descriptors.py, ptxas here)
  local s=$1 archive=$2 dump
  shift 2
  dump=$(mktemp -d)
  step "$s" env MOSAIC_GPU_DUMP_TO="$dump" MOSAIC_GPU_DUMP_PTX=1 \
    MOSAIC_GPU_DUMP_PTXAS=1 timeout 150 $PY benchmarks/bench_attention.py "$@"
  (cd "$dump" && tar cJf "$WORK/$archive.tar.xz" *.ptx *.ptxas)
}

stream_k_causal() {
  # stream_k_causal STEP TESTS SEQS FP8_SEQS ROUNDS: Stream-K on the causal
  # paired grid: test_mosaic.py -k TESTS compiled, then the causal forward
  # with and without it and cuDNN, bf16 d 128 and 64 at SEQS and FP8 (V
  # key-major) at FP8_SEQS, ROUNDS rounds
  local s=$1 seqs=$3 fp8_seqs=$4 rounds=$5
  mosaic_tests "$s" 240 -k "$2"
  step "$s" timeout 240 $PY benchmarks/bench_attention.py \
    --impls flashjax_mosaic+stream_k=False flashjax_mosaic+stream_k=True \
    cudnn --dtypes bfloat16 --head-dims 128 64 --seqs $seqs --causal true \
    --modes fwd --matmul 0 --repeats "$rounds" --out "$WORK/$s"
  step "$s" timeout 120 $PY benchmarks/bench_attention.py \
    --impls flashjax_fp8_mosaic_vt+stream_k=False \
    flashjax_fp8_mosaic_vt+stream_k=True cudnn_fp8 --dtypes bfloat16 \
    --head-dims 128 --seqs $fp8_seqs --causal true --modes fwd --matmul 0 \
    --repeats "$rounds" --out "$WORK/$s-fp8"
}

for s in "$@"; do
  case $s in
    wheels)
      # tokamax 0.0.17 and what it imports that the GPU images lack (the H200's
      # also lacks fire, six and jaxtyping)
      $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl tokamax==0.0.17 einshape \
        pydantic pydantic-core annotated-types typing-inspection qwix \
        immutabledict tensorboardx xprof fire termcolor six jaxtyping \
        wadler_lindig ;;
    tests|tests-core)
      step tests env XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 timeout 330 \
        $PY -m pytest -n 8 -v -p no:cacheprovider $HUNG 120 \
        tests/test_attention.py tests/test_fp8.py -k "mosaic or fp8"
      [ "$s" = tests ] || continue ;&
    tests-large)
      step tests-large env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout 210 \
        $PY -m pytest -n 3 -v -p no:cacheprovider $HUNG 120 \
        tests/test_large.py -k "mosaic or fp8" ;;
    tests-v28|tests-v28-mosaic)
      # v28's defaults: Q as a register operand in the d 128 non-causal
      # forward from 4k keys, Stream-K on d 64's causal paired grid from 4k:
      # the defaults' tests and the forward's Stream-K cases, then the long
      # cases (d 128 non-causal 9k, d 64 causal 4k and 8k) (~9.5 min; the
      # forty-fifth session's fresh H100 took 200 s for the first five
      # Stream-K tests and 220 s for the ten long cases)
      mosaic_tests tests-v28 330 -k "forward_owned_registers_by_length or \
        stream_k_schedule or (stream_k and not multicast and not backward)"
      [ "$s" = tests-v28 ] || continue ;&
    tests-v28-large)
      step tests-v28 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout 250 \
        $PY -m pytest -v -p no:cacheprovider $HUNG 180 tests/test_large.py \
        -k "mosaic and not float32" ;;
    bench-v28)
      # v28's forward (Q in registers, d 128 non-causal from 4k keys) in
      # forward+backward, where the differentiated forward also writes r:
      # against v27's forward and cuDNN, bf16 and fp16 (~4 min)
      for dt in bfloat16 float16; do
        step bench-v28 timeout 120 $PY benchmarks/bench_attention.py \
          --impls flashjax_mosaic flashjax_mosaic+owned_registers=False cudnn \
          --dtypes $dt --head-dims 128 --seqs 4096 16384 --causal false \
          --modes fwd_bwd --matmul 0 --repeats 7 --out "$WORK/bench-v28-$dt"
      done ;;
    tests-v27)
      # v27's one new kernel (d 64's non-causal fused backward with its
      # owned tiles in registers) against the reference: test_mosaic's
      # by-length test (the default at 16k keys, GQA, odd lengths) and the
      # option's tests, then the long d 64 non-causal case (8k keys)
      mosaic_tests tests-v27 200 -k "d64_backward_by_length or \
        test_owned_registers"
      step tests-v27 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout 120 \
        $PY -m pytest -v -p no:cacheprovider $HUNG 100 tests/test_large.py \
        -k "mosaic and d64 and not causal" ;;
    tests-triton)
      # the portable kernels compiled: test_attention.py's triton cases, the
      # margin case and the property test (backend "auto" takes the portable
      # kernels for their head dims), and the gradient checks (~6 min; 280 s
      # cut the forty-eighth session's run at 50 of 54 passed)
      step tests-triton env XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 timeout 420 \
        $PY -m pytest -n 8 -v -p no:cacheprovider $HUNG 200 \
        tests/test_attention.py -k "triton or margin or property or lse or \
        masked or grad" ;;
    tests-banded)
      step tests-banded env XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 timeout 200 \
        $PY -m pytest -n 8 -v -p no:cacheprovider $HUNG 120 \
        tests/test_attention.py -k "mosaic and (causal or win)" ;;
    hang-check)
      # the banded persistent forwards that hung, with both warpgroups
      # masking the same tiles (fifteenth session): the softcap case at the
      # default split and at 240, the window case at 256-row tiles (~3 min)
      step hang-check timeout 150 $PY benchmarks/debug_hang.py \
        --case softcap --pieces 1 4 --timeout 55
      step hang-check timeout 80 $PY benchmarks/debug_hang.py \
        --case window --pieces 1 --timeout 55 ;;
    tests-fp8)
      step tests-fp8 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 timeout 200 \
        $PY -m pytest -n 8 -v -p no:cacheprovider $HUNG 120 tests/test_fp8.py ;;
    ptxas)
      step ptxas timeout 300 $PY benchmarks/debug_hang.py --ptxas --timeout 90 ;;
    tests-options)
      # 4 workers, 300 s a test: under 8 compiling workers, tests that take
      # 27-47 s alone ran past 120 s (results/debug-hang-h200.md)
      step tests-options env XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 timeout 560 \
        $PY -m pytest -n 4 -v -p no:cacheprovider $HUNG 300 \
        tests/test_mosaic.py ;;
    tests-fold)
      # the backward options that run with the folded statistics at d 128
      # (dQ overlap, fused dQ, deferred waits) compiled (~4 min at most)
      step tests-fold env XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 timeout 250 \
        $PY -m pytest -n 4 -v -p no:cacheprovider $HUNG 200 \
        tests/test_mosaic.py -k "intra_wg_overlap or fused_dq or deferred" ;;
    hang-persistent)
      step hang-persistent timeout 360 $PY benchmarks/debug_hang.py \
        --case persistent --timeout 90 ;;
    hang-softcap)
      step hang-softcap timeout 380 $PY benchmarks/debug_hang.py \
        --case softcap --timeout 70
      step hang-softcap timeout 200 $PY benchmarks/debug_hang.py --ptxas \
        --case softcap --timeout 60 ;;
    hang-registers)
      step hang-registers timeout 280 $PY benchmarks/debug_hang.py \
        --case softcap --pieces 0 1 2 3 4 --timeout 55
      step hang-registers timeout 120 $PY benchmarks/debug_hang.py \
        --case window --pieces 5 6 --timeout 55
      step hang-registers timeout 100 $PY benchmarks/debug_hang.py --ptxas \
        --case softcap --pieces 1 2 4 --timeout 45 ;;
    hang-narrow)
      # the softcap case's persistent forward with one thing changed: no
      # GQA (8 K/V heads), no softcap, one batch row, 113 keys (~5 min)
      for o in kvh=8 softcap=null b=1 skv=113; do
        step hang-narrow timeout 100 $PY benchmarks/debug_hang.py \
          --case softcap --pieces 1 --timeout 55 --override $o
      done ;;
    hang)
      step hang timeout 400 $PY benchmarks/debug_hang.py --timeout 75
      step hang-test env XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 timeout 90 \
        $PY -m pytest -n 2 -v -p no:cacheprovider $HUNG 80 \
        tests/test_attention.py -k "mosaic and winNone-3" ;;
    tune-fwd)
      step tune-fwd timeout 300 $PY benchmarks/tune_blocks.py --backend mosaic \
        --modes fwd --only intra_wg_overlap=True --out "$WORK/tune-fwd.json" ;;
    tune-bwd)
      step tune-bwd timeout 280 $PY benchmarks/tune_blocks.py --backend mosaic \
        --modes fwd_bwd --only deferred_waits=True intra_wg_overlap=True \
        --out "$WORK/tune-bwd.json" ;;
    tune-fp8)
      step tune-fp8 timeout 200 $PY benchmarks/tune_blocks.py --backend mosaic \
        --fp8 --head-dims 128 --only persistent=True intra_wg_overlap=True \
        --out "$WORK/tune-fp8.json" ;;
    bench|bench-fp16)
      dtype=bfloat16; [ "$s" = bench-fp16 ] && dtype=float16
      # shellcheck disable=SC2086  # BENCH_CAUSAL: a word list
      peer_bench "$s" 500 $dtype yes --head-dims 128 64 \
        --seqs 1024 4096 16384 --causal ${BENCH_CAUSAL:-false true} \
        --modes fwd fwd_bwd --out "$WORK/attention-$dtype" ;;
    bench-bwd)
      # forward+backward only, d 128, both 16-bit dtypes, against cuDNN: after a
      # change to the backward (~2 min)
      step bench-bwd timeout 200 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic cudnn --dtypes bfloat16 float16 \
        --head-dims 128 --seqs 1024 4096 16384 --causal false true \
        --modes fwd_bwd --out "$WORK/attention-bwd" ;;
    fp8)
      step fp8 timeout 240 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt flashjax_fp8_mosaic cudnn_fp8 \
        flashjax_mosaic --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false true --modes fwd --out "$WORK/fp8" ;;
    opts-fused-causal)
      # the fused backward (dQ reduce-added by the dK/dV kernel, 5 matmuls a
      # tile pair) causal, 2 and 3 stages, against the default, with ptxas's
      # spill lines per kernel; it lost on the H100 in the sixth session (2.76
      # ms vs 2.01), and in the twenty-second (d 128: 7.839 ms vs 7.726 at
      # 16k, spilling 452 bytes; results/raw/opts-fused-iv-h200.md, the
      # same impls on v17 with bwd.index_vectors=True); and both with 240
      # registers a compute thread, which the fused kernel's spills may want
      # (~4 min)
      step opts-fused-causal env MOSAIC_GPU_DUMP_PTXAS=1 timeout 260 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.compute_registers=240 \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True+bwd.compute_registers=240 \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True+bwd.stages=3 cudnn \
        --dtypes bfloat16 --head-dims 128 64 --seqs 4096 16384 \
        --causal true --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-fused-causal"
      ptxas_table opts-fused-causal ;;
    opts-bwd-d64)
      # the d 64 backward as FlashAttention 3 tiles it (fused dQ, 128-row
      # query tiles: S is 64 keys x 128 queries a warpgroup) and its halves,
      # against the two-kernel default with 64-row query tiles; 128 rows
      # finished on the window case in the fifteenth session (~4.5 min)
      step opts-bwd-d64 timeout 280 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.fused_dq=True \
        flashjax_mosaic+bwd.block_q_dkv=128 \
        flashjax_mosaic+bwd.fused_dq=True+bwd.block_q_dkv=128 cudnn \
        --dtypes bfloat16 --head-dims 64 --seqs 4096 16384 \
        --causal false true --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-bwd-d64" ;;
    opts-registers)
      # 240 registers a compute thread (the producer keeps 24; default 232
      # and 40): the backward spilled (results/ncu-h200), forward+backward,
      # bf16, d 128 and 64, 4k / 16k, causal and not (~4 min)
      step opts-registers timeout 300 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.compute_registers=240 \
        flashjax_mosaic+compute_registers=240+bwd.compute_registers=240 cudnn \
        --dtypes bfloat16 --head-dims 128 64 --seqs 4096 16384 \
        --causal false true --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-registers" ;;
    opts-fold)
      # the backward's accumulators started at -L2/u and -D (fold_stats, the
      # default since the eighteenth session) against zero starts, bf16
      # forward+backward, d 128 and 64, 4k / 16k, causal and not, with
      # ptxas's register and spill lines of each compiled kernel (~4 min)
      step opts-fold env MOSAIC_GPU_DUMP_PTXAS=1 timeout 300 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.fold_stats=False cudnn \
        --dtypes bfloat16 --head-dims 128 64 --seqs 4096 16384 \
        --causal false true --modes fwd_bwd --matmul 0 --out "$WORK/opts-fold" ;;
    opts-bwd-next)
      # with the folded statistics: at d 128 causal the fused backward (3
      # stages; it lost 14-22% before them, when it spilled most) and 64-row
      # K/V tiles in the dQ kernel (its 64 x 128 S, dP and dQ tiles spill);
      # at d 64 the fused backward, folded and not (~4 min)
      step opts-bwd-next env MOSAIC_GPU_DUMP_PTXAS=1 timeout 150 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.fused_dq=True+bwd.stages=3 \
        flashjax_mosaic+bwd.block_kv=64 cudnn --dtypes bfloat16 \
        --head-dims 128 --seqs 4096 16384 --causal true --modes fwd_bwd \
        --matmul 0 --out "$WORK/opts-bwd-next-d128"
      step opts-bwd-next env MOSAIC_GPU_DUMP_PTXAS=1 timeout 150 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.fused_dq=True \
        flashjax_mosaic+bwd.fused_dq=True+bwd.fold_stats=True cudnn \
        --dtypes bfloat16 --head-dims 64 --seqs 4096 16384 \
        --causal false true --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-bwd-next-d64" ;;
    opts-prefetch)
      # MosaicBlocks(prefetch_q=True) (the producer loads Q, the next tile's
      # during the current one's last P V; O's store left in flight): compiled
      # (bitwise the default's output), then timed against the default and
      # cuDNN: bf16 non-causal (persistent) d 128 and 64 at 1k / 4k / 16k;
      # causal (one tile a CTA, or persistent in mirrored pairs) at 1k / 2k;
      # FP8 d 128 at 4k / 16k (~8 min)
      mosaic_tests opts-prefetch 150 -n 2 -k prefetch
      step opts-prefetch timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+prefetch_q=True cudnn \
        --dtypes bfloat16 --head-dims 128 64 --seqs 1024 4096 16384 \
        --causal false --modes fwd --matmul 0 --out "$WORK/opts-prefetch-nc"
      step opts-prefetch timeout 120 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+prefetch_q=True \
        flashjax_mosaic+persistent=True flashjax_mosaic+persistent=True+prefetch_q=True \
        cudnn --dtypes bfloat16 --head-dims 128 64 --seqs 1024 2048 \
        --causal true --modes fwd --matmul 0 --out "$WORK/opts-prefetch-causal"
      step opts-prefetch timeout 100 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic flashjax_fp8_mosaic+prefetch_q=True cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 --causal false true \
        --modes fwd --matmul 0 --out "$WORK/opts-prefetch-fp8" ;;
    opts-fwd)
      # the forward's untimed options over its prefetching default at d 128,
      # where the target is furthest: the intra-warpgroup overlap (+1-2%
      # before the prefetch; it lost 10-23% at d 64) and 240 registers a
      # compute thread, bf16, 4k / 16k, causal and not, against cuDNN
      # (~3 min)
      step opts-fwd timeout 200 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+intra_wg_overlap=True \
        flashjax_mosaic+compute_registers=240 cudnn --dtypes bfloat16 \
        --head-dims 128 --seqs 4096 16384 --causal false true \
        --modes fwd --matmul 0 --out "$WORK/opts-fwd" ;;
    opts-handover)
      # MosaicBlocks(early_handover=True): the forward's ping-pong hands over
      # at a tile's last P V, so each warpgroup's epilogue overlaps the
      # other's matmuls; compiled (bitwise the default's O and L), then timed
      # (with ptxas's register, spill and wgmma-serialisation lines: does the
      # predicated hand-over inside the P V scope cost the persistent d 64
      # forward its 4-7%?) against the default and cuDNN: bf16 d 128 and 64,
      # 1k / 4k / 16k, causal and not; FP8 d 128 4k / 16k (~5 min). (The
      # nineteenth session's first run, its hand-overs behind a branch, also
      # timed causal 16k on the persistent grid with it: results/raw/opts-
      # handover-branch-causal16k-h200.md.)
      mosaic_tests opts-handover 100 -k early_handover
      step opts-handover env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 $PY \
        benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+early_handover=True cudnn \
        --dtypes bfloat16 --head-dims 128 64 --seqs 1024 4096 16384 \
        --causal false true --modes fwd --matmul 0 --out "$WORK/opts-handover"
      step opts-handover timeout 80 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic flashjax_fp8_mosaic+early_handover=True \
        cudnn_fp8 --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false true --modes fwd --matmul 0 \
        --out "$WORK/opts-handover-fp8" ;;
    opts-step-desc)
      # MosaicBlocks(step_descriptors=True): LLVM hoisted the wgmma
      # descriptors of the dK/dV kernel's owned K and V tiles (and K's for
      # dQ's product) out of the step loops, 24 of 64 bits each; in the fused
      # causal kernel they spilled, 12 reloaded a step. Sinking them into
      # the loops in the dumped PTX took ptxas's spills from 460 bytes to 140
      # (240 registers: 324 to 60; benchmarks/ptx_descriptors.py,
      # results/raw/ptx-descriptors-session24-cpu.log). Compiled, then
      # forward+backward bf16 d 128 against the default and cuDNN, with
      # ptxas's lines (~7 min). Ran at 610ee06, where the default was v18's
      # backward; since v19 `confirm-v19` spells v18 out as options
      mosaic_tests opts-step-desc 150 -k step_descriptors
      step opts-step-desc env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.step_descriptors=True \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True+bwd.step_descriptors=True \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True+bwd.step_descriptors=True+bwd.compute_registers=240 \
        cudnn --dtypes bfloat16 --head-dims 128 --seqs 4096 8192 16384 \
        --causal true false --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-step-desc"
      ptxas_table opts-step-desc ;;
    opts-step-desc-next)
      # what v19 left untimed: step_descriptors in d 64's fused backward (the
      # default from 4k keys non-causal, 16k causal), and d 128 causal below
      # 8k keys fused as from 8k (descriptors in the step, 240 registers),
      # bf16 forward+backward against the default and cuDNN, with ptxas's
      # lines (~4 min)
      step opts-step-desc-next env MOSAIC_GPU_DUMP_PTXAS=1 timeout 150 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.step_descriptors=True cudnn --dtypes bfloat16 \
        --head-dims 64 --seqs 4096 16384 --causal false true --modes fwd_bwd \
        --matmul 0 --out "$WORK/opts-step-desc-d64"
      step opts-step-desc-next env MOSAIC_GPU_DUMP_PTXAS=1 timeout 120 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.fused_dq=True+bwd.step_descriptors=True+bwd.compute_registers=240 \
        cudnn --dtypes bfloat16 --head-dims 128 --seqs 2048 4096 \
        --causal true --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-fused-causal-short"
      ptxas_table opts-step-desc-next ;;
    opts-fwd-registers)
      # the forward's compute_registers=240 (open since the eleventh
      # session, which timed it only at bf16 d 128 with the backward's)
      step opts-fwd-registers env MOSAIC_GPU_DUMP_PTXAS=1 timeout 420 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+compute_registers=240 cudnn --dtypes bfloat16 float16 \
        --head-dims 128 64 --seqs 4096 16384 --causal false true --modes fwd \
        --out "$WORK/opts-fwd-registers" ;;
    opts-bwd-registers)
      # the two-kernel backward's compute_registers=240 (the eleventh
      # session timed it only with the forward's)
      step opts-bwd-registers env MOSAIC_GPU_DUMP_PTXAS=1 timeout 250 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.compute_registers=240 cudnn --dtypes bfloat16 \
        --head-dims 128 64 --seqs 2048 4096 --causal true --modes fwd_bwd \
        --matmul 0 --out "$WORK/opts-bwd-registers"
      step opts-bwd-registers timeout 100 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.compute_registers=240 \
        cudnn --dtypes bfloat16 --head-dims 64 --seqs 2048 --causal false \
        --modes fwd_bwd --matmul 0 --out "$WORK/opts-bwd-registers-nc"
      ptxas_table opts-bwd-registers ;;
    opts-overlap)
      # the intra-warpgroup overlap in v19's forward (timed only in the tenth
      # and eleventh sessions, before prefetch_q and the persistent grid),
      # compiled, then d 128 bf16 (with 240 registers too, FA3's split) and
      # FP8 against the default and cuDNN, 4k / 16k (~5 min)
      mosaic_tests opts-overlap 150 -k intra_wg_overlap
      step opts-overlap env MOSAIC_GPU_DUMP_PTXAS=1 timeout 200 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+intra_wg_overlap=True \
        flashjax_mosaic+intra_wg_overlap=True+compute_registers=240 cudnn \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false true --modes fwd --out "$WORK/opts-overlap"
      step opts-overlap-fp8 env MOSAIC_GPU_DUMP_PTXAS=1 timeout 150 $PY \
        benchmarks/bench_attention.py --impls flashjax_fp8_mosaic \
        flashjax_fp8_mosaic+intra_wg_overlap=True cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false true --modes fwd --out "$WORK/opts-overlap-fp8"
      ptxas_table opts-overlap opts-overlap-fp8 ;;
    confirm-overlap)
      # v20's forward: the intra-warpgroup overlap at d 128 causal beyond the
      # paired grid (16k) against v19's early hand-over, 11 rounds, forward
      # and forward+backward; at 8k / 12k (paired grid, unchanged) the
      # overlap paired and on one tile a CTA (~4 min)
      step confirm-overlap timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic \
        flashjax_mosaic+intra_wg_overlap=False+early_handover=True cudnn \
        --dtypes bfloat16 float16 --head-dims 128 --seqs 16384 \
        --causal true --modes fwd fwd_bwd --matmul 0 --repeats 11 \
        --out "$WORK/confirm-overlap"
      step confirm-overlap-mid timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+intra_wg_overlap=True \
        flashjax_mosaic+intra_wg_overlap=True+persistent=False cudnn \
        --dtypes bfloat16 float16 --head-dims 128 --seqs 8192 12288 \
        --causal true --modes fwd --matmul 0 --out "$WORK/confirm-overlap-mid" ;;
    opts-overlap-next)
      # what the twenty-seventh session left open: the d 128 causal forward
      # on one tile a CTA with the intra-warpgroup overlap against the paired
      # grid from 6k to 10k keys (4% ahead at 8k there, behind at 12k), and
      # non-causal on one tile a CTA, with and without it (~4 min)
      step opts-overlap-next timeout 200 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic \
        flashjax_mosaic+intra_wg_overlap=True+persistent=False cudnn \
        --dtypes bfloat16 float16 --head-dims 128 \
        --seqs 6144 8192 10240 --causal true --modes fwd --matmul 0 \
        --repeats 11 --out "$WORK/opts-overlap-next"
      step opts-overlap-next-nc timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+persistent=False \
        flashjax_mosaic+intra_wg_overlap=True+persistent=False cudnn \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false --modes fwd --matmul 0 \
        --out "$WORK/opts-overlap-next-nc" ;;
    tail)
      # does the persistent grid's last, partly idle round cost the
      # non-causal forward? Same per-head work, head counts whose tiles do /
      # do not fill whole rounds of one tile per SM (~2 min)
      for hidden in 2048 4096 4224; do
        step tail timeout 110 $PY benchmarks/bench_attention.py \
          --impls flashjax_mosaic cudnn --dtypes bfloat16 --head-dims 128 \
          --hidden $hidden --seqs 4096 16384 --causal false --modes fwd \
          --matmul 0 --repeats 7 --out "$WORK/tail-hidden$hidden"
      done ;;
    opts-stream-k)
      mosaic_tests opts-stream-k 240 -k stream_k
      step opts-stream-k timeout 200 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+stream_k=True cudnn \
        --dtypes bfloat16 --head-dims 128 64 --seqs 1024 4096 16384 \
        --causal false --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-stream-k"
      step opts-stream-k timeout 120 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic flashjax_fp8_mosaic+stream_k=True \
        cudnn_fp8 --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-stream-k-fp8" ;;
    confirm-v19)
      # the v19 backward defaults at d 128 (fused kernels: step_descriptors;
      # causal from 8k keys fused, 240 registers) against v18's, spelled as
      # options on top of them, and cuDNN, bf16 forward+backward (~3 min)
      V18C=flashjax_mosaic+bwd.step_descriptors=False+bwd.fused_dq=False+bwd.compute_registers=232
      step confirm-v19-causal timeout 200 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic $V18C cudnn --dtypes bfloat16 \
        --head-dims 128 --seqs 8192 16384 --causal true --modes fwd_bwd \
        --matmul 0 --repeats 11 --out "$WORK/confirm-v19-causal"
      step confirm-v19 timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.step_descriptors=False \
        cudnn --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false --modes fwd_bwd --matmul 0 --out "$WORK/confirm-v19" ;;
    dump-fused)
      # the PTX of the d 128 causal forward+backward's kernels (Mosaic GPU's
      # dump; bf16 4k): the default's (forward, dK/dV, dQ) and the fused
      # backward's, for reading spills and hoisted descriptors off the GPU
      # (benchmarks/ptx_descriptors.py; ptxas -v and nvdisasm here: the GPU
      # image has no nvdisasm) (~1.5 min)
      dump_ptx dump-fused dump-ptx \
        --impls flashjax_mosaic \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 --causal true \
        --modes fwd_bwd --matmul 0 --repeats 1 --out "$WORK/dump-fused" ;;
    opts-split-dq)
      # MosaicBlocks(split_dq=True): at d 64 the fused backward reduce-adds
      # 32 KiB of float32 dQ per CTA step (each warpgroup all 64 columns
      # over its own 64 keys); split as at d 128 it is half that. Compiled,
      # then timed (ptxas lines) against the two-kernel default, fused
      # without the split, fused+split with deferred waits, and cuDNN
      mosaic_tests opts-split-dq 150 -k "split_dq or fused_dq_backward"
      step opts-split-dq env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.fused_dq=True \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True+bwd.deferred_waits=True \
        cudnn --dtypes bfloat16 --head-dims 64 --seqs 4096 16384 \
        --causal false true --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-split-dq" ;;
    tests-d64-bwd)
      # d 64's backward by length (fused, split dQ from 4k keys, causal 16k)
      # and split_dq compiled against the reference (~2 min)
      mosaic_tests tests-d64-bwd 240 -k "split_dq or d64_backward_by_length" ;;
    opts-split-dq-len)
      # the fused, split-dQ backward at d 64 (opts-split-dq's winner at 16k)
      # by length, 2 and 3 stages, against the default and cuDNN, then the
      # GPU time per kernel (named since the twenty-first session) at 16k
      step opts-split-dq-len timeout 330 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True+bwd.stages=3 \
        cudnn --dtypes bfloat16 --head-dims 64 --seqs 1024 4096 8192 16384 \
        --causal false true --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-split-dq-len"
      for c in "" --causal; do
        step opts-split-dq-len timeout 60 $PY benchmarks/profile_kernels.py \
          --head-dim 64 $c --impls flashjax_mosaic \
          flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True cudnn \
          --out "$WORK/kernels-split-d64${c:+-causal}"
      done
      step opts-split-dq-len timeout 60 $PY benchmarks/profile_kernels.py \
        --head-dim 128 --causal --impls flashjax_mosaic cudnn \
        --out "$WORK/kernels-named-d128-causal" ;;
    opts-index-vectors)
      # MosaicBlocks(index_vectors=True): masked steps' index tiles from
      # broadcast vectors (less index arithmetic; the backward's default since
      # the twenty-second session, whose run of this step compared v17's
      # iotas with vectors in both passes: results/raw/opts-index-vectors-
      # h200.md). Compiled test, then causal forward+backward, the default
      # against the backward's iotas and the forward's vectors, and cuDNN,
      # with ptxas's spill lines, tabulated per kernel (~6 min)
      mosaic_tests opts-index-vectors 150 -k index_vectors
      step opts-index-vectors env MOSAIC_GPU_DUMP_PTXAS=1 timeout 300 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.index_vectors=False \
        flashjax_mosaic+index_vectors=True cudnn \
        --dtypes bfloat16 --head-dims 128 64 --seqs 4096 16384 \
        --causal true --modes fwd fwd_bwd --matmul 0 \
        --out "$WORK/opts-index-vectors"
      ptxas_table opts-index-vectors ;;
    short-causal)
      # the causal forward below 4k keys, persistent (mirrored pairs, the
      # default since the sixteenth session) against one tile a CTA and
      # cuDNN, bf16 and fp16, d 128 and 64; FP8 d 128 likewise (~3 min; 110 s
      # ended in fp16 d 64)
      step short-causal timeout 110 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+persistent=False cudnn \
        --dtypes bfloat16 float16 --head-dims 128 64 --seqs 1024 2048 \
        --causal true --modes fwd --matmul 0 --out "$WORK/short-causal"
      step short-causal timeout 60 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic flashjax_fp8_mosaic+persistent=True \
        cudnn_fp8 --dtypes bfloat16 --head-dims 128 --seqs 1024 2048 \
        --causal true --modes fwd --matmul 0 --out "$WORK/short-causal-fp8" ;;
    causal-long)
      # the causal forward's persistent grid (mirrored pairs) from 4k keys
      # (below 4k the default since the sixteenth session), with the
      # prefetch: d 128 (128-row K/V tiles), d 64 at its default 256 rows
      # (which did not finish persistent until both warpgroups masked the
      # same tiles: results/raw/hang-check-session16-h200.log) and at 128,
      # FP8 d 128; and the FP8 forward without the prefetch (which lost 4%
      # causal at 16k) (~2 min; the fifteenth session's 80 s ended after
      # d 128)
      step causal-long timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+persistent=True \
        flashjax_mosaic+persistent=True+block_kv=128 cudnn --dtypes bfloat16 \
        --head-dims 128 64 --seqs 4096 16384 --causal true --modes fwd \
        --matmul 0 --out "$WORK/causal-long"
      step causal-long timeout 60 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic flashjax_fp8_mosaic+persistent=True \
        flashjax_fp8_mosaic+prefetch_q=False cudnn_fp8 --dtypes bfloat16 \
        --head-dims 128 --seqs 4096 16384 --causal true --modes fwd \
        --matmul 0 --out "$WORK/causal-long-fp8" ;;
    causal-8k|causal-12k)
      # the causal forward's grid at 8k or 12k keys, between 4k (persistent
      # won, causal-long) and 16k (lost): the default (persistent up to 8k
      # keys since the seventeenth session, one tile a CTA above) against the
      # persistent grid, bf16 d 128 and 64, FP8 d 128 (~1.5 min)
      seq=8192; [ "$s" = causal-12k ] && seq=12288
      step "$s" timeout 100 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+persistent=True cudnn \
        --dtypes bfloat16 --head-dims 128 64 --seqs $seq --causal true \
        --modes fwd --matmul 0 --out "$WORK/$s"
      step "$s" timeout 60 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic flashjax_fp8_mosaic+persistent=True \
        cudnn_fp8 --dtypes bfloat16 --head-dims 128 --seqs $seq --causal true \
        --modes fwd --matmul 0 --out "$WORK/$s-fp8" ;;
    train)
      step train timeout 540 $PY benchmarks/bench_train.py \
        --seqs 1024 4096 16384 32768 --timeout 120 --out "$WORK/train" ;;
    train-cudnn)
      # flash against cuDNN only (dense's rows and out-of-memory point come
      # from `train`), 1k / 4k / 16k (~5 min)
      step train-cudnn timeout 380 $PY benchmarks/bench_train.py \
        --seqs ${TRAIN_SEQS:-1024 4096 16384} --attentions flash cudnn --timeout 120 \
        --out "$WORK/train-cudnn" ;;
    train-h100)
      seqs=${TRAIN_SEQS:-1024 2048 4096}
      # shellcheck disable=SC2086  # seqs: a word list
      step train-h100 timeout 560 $PY benchmarks/bench_train.py --seqs $seqs \
        --timeout 150 --out "$WORK/train-h100-${seqs// /-}" ;;
    train-more)
      step train-more timeout 400 $PY benchmarks/bench_train.py \
        --seqs 2048 8192 --timeout 120 --out "$WORK/train-2k8k"
      step train-more timeout 150 $PY benchmarks/bench_train.py \
        --seqs 32768 --attentions cudnn --timeout 140 --out "$WORK/train-32k" ;;
    parity)
      step parity timeout 400 $PY -m examples.train --preset gpu \
        --compare dense flash-fp8 --steps 600 --sample-tokens 100 \
        --out "$WORK/parity" ;;
    profile)
      # GPU time per kernel of one forward+backward (JAX profiler trace):
      # ours (forward, dQ, dK/dV or fused, XLA's fusions) against cuDNN's,
      # 16k, d 128 and 64, causal and not (~4 min)
      for d in 128 64; do for c in "" --causal; do
        step profile timeout 120 $PY benchmarks/profile_kernels.py --head-dim $d \
          $c --impls flashjax_mosaic cudnn --out "$WORK/kernels-d$d${c:+-causal}"
      done; done ;;
    fp8-vt)
      step fp8-vt timeout 240 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic flashjax_fp8_mosaic_vt cudnn_fp8 \
        flashjax_mosaic --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false true --modes fwd --repeats 7 --out "$WORK/fp8-vt"
      step fp8-vt timeout 90 $PY benchmarks/bench_quantize.py \
        --out "$WORK/quantize"
      for c in "" --causal; do
        step fp8-vt timeout 60 $PY benchmarks/profile_kernels.py \
          --mode fwd --seq 4096 --head-dim 128 $c \
          --impls flashjax_fp8_mosaic_vt cudnn_fp8 \
          --out "$WORK/kernels-fp8-vt-4096${c:+-causal}"
      done ;;
    opts-fp8-causal-vt)
      step opts-fp8-causal-vt timeout 240 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt flashjax_fp8_mosaic_vt+stages=4 \
        flashjax_fp8_mosaic_vt+block_kv=64 \
        flashjax_fp8_mosaic_vt+compute_registers=240 cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 --causal true \
        --modes fwd --matmul 0 --repeats 7 --out "$WORK/opts-fp8-causal-vt" ;;
    opts-fp8-causal-256)
      step opts-fp8-causal-256 timeout 300 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt flashjax_fp8_mosaic_vt+block_kv=256 \
        flashjax_fp8_mosaic_vt+block_kv=256+stream_k=False cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 8192 12288 \
        --causal true --modes fwd --matmul 0 --repeats 9 \
        --out "$WORK/opts-fp8-causal-256"
      step opts-fp8-causal-256 timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+persistent=True+stream_k=True \
        flashjax_fp8_mosaic_vt+persistent=True+stream_k=False cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 16384 --causal true \
        --modes fwd --matmul 0 --repeats 9 \
        --out "$WORK/opts-fp8-causal-256-16k" ;;
    opts-fp8-overlap)
      fp8_tests opts-fp8-overlap 130 -k overlap_compiled
      step opts-fp8-overlap env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 $PY \
        benchmarks/bench_attention.py --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+intra_wg_overlap=True \
        flashjax_fp8_mosaic_vt+intra_wg_overlap=True+compute_registers=240 \
        cudnn_fp8 --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false true --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-fp8-overlap"
      step opts-fp8-overlap-8k env MOSAIC_GPU_DUMP_PTXAS=1 timeout 120 $PY \
        benchmarks/bench_attention.py --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+persistent=False+stream_k=False+intra_wg_overlap=True \
        cudnn_fp8 --dtypes bfloat16 --head-dims 128 --seqs 8192 \
        --causal true --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-fp8-overlap-8k"
      ptxas_table opts-fp8-overlap opts-fp8-overlap-8k ;;
    dump-fp8-overlap)
      dump_ptx dump-fp8-overlap dump-fp8-ptx \
        --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+intra_wg_overlap=True \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 --causal false \
        --modes fwd --matmul 0 --repeats 1 --out "$WORK/dump-fp8-overlap" ;;
    opts-fp8-index-vectors)
      step opts-fp8-index-vectors env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 \
        $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt+index_vectors=False \
        flashjax_fp8_mosaic_vt+index_vectors=True cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 8192 16384 \
        --causal true --modes fwd --matmul 0 --repeats 9 \
        --out "$WORK/opts-fp8-index-vectors"
      ptxas_table opts-fp8-index-vectors
      dump_ptx dump-fp8-causal dump-fp8-causal-ptx \
        --impls flashjax_fp8_mosaic_vt+index_vectors=False \
        flashjax_fp8_mosaic_vt+index_vectors=True \
        --dtypes bfloat16 --head-dims 128 --seqs 16384 --causal true \
        --modes fwd --matmul 0 --repeats 1 --out "$WORK/dump-fp8-causal" ;;
    fp8-causal-lengths)
      step fp8-causal-lengths timeout 240 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt cudnn_fp8 flashjax_mosaic \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 8192 12288 16384 \
        --causal true --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/fp8-causal-lengths" ;;
    tests-large-fp8)
      step tests-large-fp8 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 \
        timeout 120 $PY -m pytest -v -p no:cacheprovider $HUNG 100 \
        tests/test_large.py -k fp8 ;;
    confirm-fp8-index-vectors)
      step confirm-fp8-index-vectors timeout 300 $PY \
        benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt+index_vectors=True \
        flashjax_fp8_mosaic_vt+index_vectors=False cudnn_fp8 flashjax_mosaic \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 8192 16384 \
        --causal true --modes fwd --matmul 0 --repeats 11 \
        --out "$WORK/confirm-fp8-index-vectors" ;;
    opts-fwd-index-vectors)
      fwd_index_vectors opts-fwd-index-vectors "128 64" 16384 ;;
    opts-fp8-causal-256-vectors)
      step opts-fp8-causal-256-vectors env MOSAIC_GPU_DUMP_PTXAS=1 \
        timeout 300 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+block_kv=256+index_vectors=True \
        flashjax_fp8_mosaic_vt+persistent=False+stream_k=False+block_kv=256+index_vectors=True \
        cudnn_fp8 --dtypes bfloat16 --head-dims 128 \
        --seqs 4096 8192 12288 --causal true --modes fwd --matmul 0 \
        --repeats 9 --out "$WORK/opts-fp8-causal-256-vectors"
      ptxas_table opts-fp8-causal-256-vectors ;;
    confirm-fp8-causal-256)
      step confirm-fp8-causal-256 timeout 300 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+block_kv=128+index_vectors=False \
        flashjax_fp8_mosaic_vt+block_kv=256+index_vectors=True cudnn_fp8 \
        flashjax_mosaic --dtypes bfloat16 --head-dims 128 64 \
        --seqs 1024 2048 4096 8192 12288 --causal true --modes fwd \
        --matmul 0 --repeats 9 --out "$WORK/confirm-fp8-causal-256"
      step confirm-fp8-causal-256 timeout 200 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+persistent=True+stream_k=True \
        flashjax_fp8_mosaic_vt+persistent=True+stream_k=False cudnn_fp8 \
        flashjax_mosaic --dtypes bfloat16 --head-dims 128 64 --seqs 16384 \
        --causal true --modes fwd --matmul 0 --repeats 9 \
        --out "$WORK/confirm-fp8-causal-256-16k" ;;
    confirm-fp8-v23)
      step confirm-fp8-v23 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout 100 \
        $PY -m pytest -v -p no:cacheprovider $HUNG 80 tests/test_fp8.py \
        -k tiles_for_long
      step confirm-fp8-v23 timeout 240 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+block_kv=128+index_vectors=False cudnn_fp8 \
        flashjax_mosaic --dtypes bfloat16 --head-dims 128 64 \
        --seqs 2048 8192 12288 --causal true --modes fwd --matmul 0 \
        --repeats 7 --out "$WORK/confirm-fp8-v23"
      step confirm-fp8-v23 timeout 120 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+persistent=False+stream_k=False cudnn_fp8 \
        flashjax_mosaic --dtypes bfloat16 --head-dims 128 64 --seqs 16384 \
        --causal true --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/confirm-fp8-v23-16k" ;;
    opts-fwd-paired-vectors)
      fwd_index_vectors opts-fwd-paired-vectors "64 128" "4096 8192 12288" ;;
    opts-fp8-v23)
      step opts-fp8-v23 timeout 200 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt flashjax_fp8_mosaic_vt+stream_k=False \
        flashjax_fp8_mosaic_vt+prefetch_q=False \
        flashjax_fp8_mosaic_vt+compute_registers=240 cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 8192 --causal true \
        --modes fwd --matmul 0 --repeats 9 --out "$WORK/opts-fp8-v23" ;;
    opts-bwd-stages)
      # 3 stages lost at d 128 causal while the fused kernel spilled 640
      # bytes (9.142 ms vs 7.839 at 16k, results/raw/opts-fused-iv-h200.md);
      # since step_descriptors and 240 registers it spills nothing at 2
      # stages, and non-causal 3 stages are its default
      step opts-bwd-stages env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.stages=3 cudnn --dtypes bfloat16 \
        --head-dims 128 64 --seqs 8192 16384 --causal true --modes fwd_bwd \
        --matmul 0 --out "$WORK/opts-bwd-stages"
      ptxas_table opts-bwd-stages
      step opts-bwd-nc env MOSAIC_GPU_DUMP_PTXAS=1 timeout 260 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.compute_registers=240 \
        flashjax_mosaic+bwd.fold_stats=True cudnn --dtypes bfloat16 \
        --head-dims 128 64 --seqs 4096 16384 --causal false --modes fwd_bwd \
        --matmul 0 --out "$WORK/opts-bwd-nc"
      ptxas_table opts-bwd-nc ;;
    confirm-bwd-stages)
      step confirm-bwd-stages timeout 330 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic+bwd.stages=2 flashjax_mosaic+bwd.stages=3 \
        cudnn --dtypes bfloat16 float16 --head-dims 128 \
        --seqs 8192 12288 16384 --causal true --modes fwd_bwd --matmul 0 \
        --repeats 9 --out "$WORK/confirm-bwd-stages"
      step confirm-bwd-stages-d64 timeout 100 \
        $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic+bwd.stages=2 flashjax_mosaic+bwd.stages=3 \
        cudnn --dtypes bfloat16 --head-dims 64 --seqs 16384 --causal true \
        --modes fwd_bwd --matmul 0 --repeats 9 \
        --out "$WORK/confirm-bwd-stages-d64" ;;
    tests-bwd-stages)
      mosaic_tests tests-bwd-stages 120 -k backward_by_length
      step tests-bwd-stages-large env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 \
        timeout 150 $PY -m pytest -n 2 -v -p no:cacheprovider $HUNG 140 \
        tests/test_large.py -k "mosaic and d128 and causal and \
        (sq16384 or sq12000)" ;;
    bench-v24)
      # (attention_mgpu has no causal backward: left out)
      for dtype in bfloat16 float16; do
        peer_bench bench-v24 150 $dtype no --head-dims 128 --seqs 16384 \
          --causal true --modes fwd_bwd --out "$WORK/attention-v24-$dtype"
      done ;;
    bench-v24-d64|bench-v25-d64)
      for dtype in bfloat16 float16; do
        peer_bench $s 130 $dtype yes --head-dims 64 \
          --seqs 4096 16384 --causal false --modes fwd_bwd \
          --out "$WORK/attention-${s#bench-}-$dtype"
      done ;;
    opts-fused-causal-3)
      step opts-fused-causal-3 timeout 120 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic \
        flashjax_mosaic+bwd.fused_dq=True+bwd.stages=3+bwd.compute_registers=240+bwd.step_descriptors=True \
        cudnn --dtypes bfloat16 --head-dims 128 --seqs 2048 4096 \
        --causal true --modes fwd_bwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-fused-causal-3" ;;
    opts-fp8-stages)
      step opts-fp8-stages timeout 200 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+block_kv=128+stages=3 \
        flashjax_fp8_mosaic_vt+block_kv=128+stages=3+index_vectors=False \
        flashjax_fp8_mosaic_vt+block_kv=128+stages=4 \
        flashjax_fp8_mosaic_vt+compute_registers=240 cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 8192 --causal true \
        --modes fwd --matmul 0 --repeats 9 --out "$WORK/opts-fp8-stages" ;;
    opts-bwd-d64-stages)
      step opts-bwd-d64-stages timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.stages=4 \
        flashjax_mosaic+bwd.stages=5 cudnn --dtypes bfloat16 --head-dims 64 \
        --seqs 4096 16384 --causal false --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-bwd-d64-stages"
      step opts-bwd-d64-stages timeout 100 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.stages=4 \
        flashjax_mosaic+bwd.stages=5 cudnn --dtypes bfloat16 --head-dims 64 \
        --seqs 16384 --causal true --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-bwd-d64-stages-causal" ;;
    confirm-bwd-d64-stages)
      mosaic_tests confirm-bwd-d64-stages-tests 120 -k d64_backward_by_length
      step confirm-bwd-d64-stages-large env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 \
        timeout 100 $PY -m pytest -v -p no:cacheprovider $HUNG 90 \
        tests/test_large.py -k "mosaic and sq8192 and d64 and not causal"
      step confirm-bwd-d64-stages timeout 200 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic+bwd.stages=3 \
        flashjax_mosaic+bwd.stages=5 flashjax_mosaic+bwd.stages=6 cudnn \
        --dtypes bfloat16 --head-dims 64 --seqs 4096 8192 16384 \
        --causal false --modes fwd_bwd --matmul 0 --repeats 9 \
        --out "$WORK/confirm-bwd-d64-stages" ;;
    opts-fwd-d64-stages)
      step opts-fwd-d64-stages env MOSAIC_GPU_DUMP_PTXAS=1 timeout 150 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+stages=3 cudnn --dtypes bfloat16 --head-dims 64 \
        --seqs 4096 16384 --causal true false --modes fwd --matmul 0 \
        --repeats 7 --out "$WORK/opts-fwd-d64-stages"
      ptxas_table opts-fwd-d64-stages ;;
    opts-bwd-persistent)
      for d in 64 128; do
        step opts-bwd-persistent timeout 150 $PY benchmarks/bench_attention.py \
          --impls flashjax_mosaic flashjax_mosaic+bwd.persistent=True cudnn \
          --dtypes bfloat16 --head-dims $d --seqs 4096 16384 --causal false \
          --modes fwd_bwd --matmul 0 --out "$WORK/opts-bwd-persistent-d$d"
      done ;;
    opts-carry-slots)
      mosaic_tests opts-carry-slots 200 -k "carry_slots or stream_k_backward"
      step opts-carry-slots env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.persistent=True \
        flashjax_mosaic+bwd.persistent=True+bwd.carry_slots=True \
        flashjax_mosaic+bwd.persistent=True+bwd.carry_slots=True+bwd.stream_k=True \
        cudnn \
        --dtypes bfloat16 --head-dims 64 128 --seqs 4096 16384 \
        --causal false --modes fwd_bwd --matmul 0 \
        --out "$WORK/opts-carry-slots"
      ptxas_table opts-carry-slots ;;
    confirm-stream-k-bwd)
      # Stream-K on the persistent fused backward, d 64 non-causal, 9 rounds,
      # with and without carried slots; its compiled tests alone (the
      # first run's were cut by the step's time with the carry_slots tests);
      # then the persistent kernel with carried slots under Mosaic GPU's
      # dump (does its step loop still divide a 64-bit count?)
      mosaic_tests confirm-stream-k-bwd 240 -k stream_k_backward
      step confirm-stream-k-bwd timeout 240 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic \
        flashjax_mosaic+bwd.persistent=True+bwd.stream_k=True \
        flashjax_mosaic+bwd.persistent=True+bwd.carry_slots=True+bwd.stream_k=True \
        cudnn --dtypes bfloat16 --head-dims 64 --seqs 4096 8192 16384 \
        --causal false --modes fwd_bwd --matmul 0 --repeats 9 \
        --out "$WORK/confirm-stream-k-bwd"
      dump_ptx confirm-stream-k-bwd dump-persistent-carry \
        --impls flashjax_mosaic+bwd.persistent=True+bwd.carry_slots=True \
        --dtypes bfloat16 --head-dims 64 --seqs 4096 --causal false \
        --modes fwd_bwd --matmul 0 --repeats 1 --out "$WORK/dump-persistent-carry" ;;
    confirm-stream-k-bwd-short)
      # Stream-K on the persistent fused backward (slots carried) where it
      # won (d 64 non-causal 4k), a third process, 2k too and fp16; its
      # compiled tests with and without carried slots first (~5 min)
      mosaic_tests confirm-stream-k-bwd-short 200 -k stream_k_backward
      step confirm-stream-k-bwd-short timeout 200 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True+bwd.stages=5+bwd.persistent=True+bwd.carry_slots=True+bwd.stream_k=True \
        cudnn --dtypes bfloat16 float16 --head-dims 64 --seqs 2048 4096 \
        --causal false --modes fwd_bwd --matmul 0 --repeats 9 \
        --out "$WORK/confirm-stream-k-bwd-short" ;;
    opts-lse-log2)
      # L converted to log2 units by XLA before the backward (lse_log2): its
      # compiled tests, then forward+backward against the default and cuDNN,
      # bf16 d 64 and 128, 4k / 16k, causal and not, 7 rounds, ptxas's lines;
      # then the d 64 kernels' PTX for the step loop's count (~7 min)
      mosaic_tests opts-lse-log2 180 -k lse_log2
      bwd_option opts-lse-log2 lse_log2 240 "64 128"
      dump_ptx opts-lse-log2 dump-lse-log2 --impls flashjax_mosaic \
        flashjax_mosaic+bwd.lse_log2=True --dtypes bfloat16 --head-dims 64 \
        --seqs 4096 --causal false --modes fwd_bwd --matmul 0 --repeats 1 \
        --out "$WORK/dump-lse-log2" ;;
    opts-fwd-d128-stages)
      step opts-fwd-d128-stages env MOSAIC_GPU_DUMP_PTXAS=1 timeout 200 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+prefetch_q=False \
        flashjax_mosaic+stages=3+prefetch_q=False cudnn --dtypes bfloat16 \
        --head-dims 128 --seqs 4096 16384 --causal false true --modes fwd \
        --matmul 0 --repeats 7 --out "$WORK/opts-fwd-d128-stages"
      ptxas_table opts-fwd-d128-stages ;;
    opts-stream-k-causal)
      stream_k_causal opts-stream-k-causal stream_k "2048 4096 8192" \
        "4096 8192" 7 ;;
    confirm-stream-k-causal)
      stream_k_causal confirm-stream-k-causal "stream_k and sq2048" \
        "8192 12288" "8192 12288" 9 ;;
    tests-stream-k-causal)
      step tests-stream-k-causal env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 \
        timeout 150 $PY -m pytest -v -p no:cacheprovider $HUNG 140 \
        tests/test_large.py -k "sq8192 and causal" ;;
    opts-stream-k-2k)
      step opts-stream-k-2k timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic+stream_k=False flashjax_mosaic+stream_k=True \
        cudnn --dtypes bfloat16 --head-dims 128 64 --seqs 2048 --causal false \
        --modes fwd --matmul 0 --repeats 7 --out "$WORK/opts-stream-k-2k"
      step opts-stream-k-2k timeout 90 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt+stream_k=False \
        flashjax_fp8_mosaic_vt+stream_k=True cudnn_fp8 --dtypes bfloat16 \
        --head-dims 128 --seqs 2048 \
        --causal false --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-stream-k-2k-fp8" ;;
    profile-fp8)
      # GPU time per kernel of the FP8 forward (flashjax_fwd_fp8 and the XLA
      # fusions around it: V's transpose into the kernel's key order) against
      # cuDNN's FP8 forward, d 128, 4k and 16k, causal and not (~1.5 min)
      for seq in 4096 16384; do for c in "" --causal; do
        step profile-fp8 timeout 60 $PY benchmarks/profile_kernels.py \
          --mode fwd --seq $seq --head-dim 128 $c \
          --impls flashjax_fp8_mosaic cudnn_fp8 flashjax_mosaic \
          --out "$WORK/kernels-fp8-$seq${c:+-causal}"
      done; done ;;
    profile-fp8-causal-8k)
      # GPU time per kernel of the causal FP8 forward at 8k keys, where it
      # is 0.95-0.99x cuDNN FP8 (4k beside it, level): the default (paired
      # grid, Stream-K, its merge) and one tile a CTA against cuDNN FP8 and
      # our bf16 forward (~1.5 min)
      for seq in 8192 4096; do
        step profile-fp8-causal-8k timeout 80 $PY benchmarks/profile_kernels.py \
          --mode fwd --seq $seq --head-dim 128 --causal \
          --impls flashjax_fp8_mosaic_vt \
          flashjax_fp8_mosaic_vt+persistent=False+stream_k=False cudnn_fp8 \
          flashjax_mosaic --out "$WORK/kernels-fp8-vt-$seq-causal"
      done ;;
    fp8-causal-wall)
      # the causal FP8 forward, d 128, 4k / 8k / 16k: wall-clock (enqueued
      # calls, one block) against cuDNN FP8 and our bf16 forward, then GPU
      # time per kernel at 16k (profile-fp8-causal-8k has 4k / 8k: there
      # 1.00-1.05x cuDNN FP8 and 1.37-1.40x our bf16 in kernel time, the
      # benchmarks' wall clock 0.95-1.03x and 1.25-1.31x) (~3 min)
      step fp8-causal-wall timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt cudnn_fp8 flashjax_mosaic \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 8192 16384 \
        --causal true --modes fwd --matmul 0 --repeats 9 \
        --out "$WORK/fp8-causal-wall"
      step fp8-causal-wall timeout 80 $PY benchmarks/profile_kernels.py \
        --mode fwd --seq 16384 --head-dim 128 --causal \
        --impls flashjax_fp8_mosaic_vt cudnn_fp8 flashjax_mosaic \
        --out "$WORK/kernels-fp8-vt-16384-causal" ;;
    clocks)
      # why every kernel takes 8-21% longer a call in the benchmark than in
      # the profiler's 10 calls (fp8-causal-wall, FP8 the most), and whether
      # d 64's causal forward+backward, 1.055x cuDNN in GPU time per kernel
      # at 4k and 1.040x by the table's wall clock, loses the same way: GPU
      # time per kernel over 10 and over 400 calls of one input set (a clock
      # or power limit slows the long run; no rotated inputs), then the
      # wall-clock benchmark, while nvidia-smi samples the SM clock, power,
      # temperature and the clock-event reasons every 50 ms (each phase's
      # start time in the log); the causal FP8 forward at 8k (d 128) and
      # bf16 d 64 causal forward+backward at 4k (~4 min)
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active \
        --format=csv -lms 50 > "$WORK/clocks-smi.csv" 2>&1 &
      smi=$!
      for spec in "fp8:fwd:128:8192:flashjax_fp8_mosaic_vt cudnn_fp8 flashjax_mosaic" \
          "d64:fwd_bwd:64:4096:flashjax_mosaic cudnn"; do
        IFS=: read -r tag mode d seq impls <<< "$spec"
        for iters in 10 400; do
          step clocks date -u +%T.%N
          # shellcheck disable=SC2086  # impls: a word list
          step clocks timeout 100 $PY benchmarks/profile_kernels.py \
            --mode $mode --seq $seq --head-dim $d --causal --iters $iters \
            --impls $impls --out "$WORK/kernels-clocks-$tag-$iters"
        done
        step clocks date -u +%T.%N
        # shellcheck disable=SC2086
        step clocks timeout 120 $PY benchmarks/bench_attention.py \
          --impls $impls --dtypes bfloat16 --head-dims $d --seqs $seq \
          --causal true --modes $mode --matmul 0 --repeats 9 \
          --out "$WORK/clocks-wall-$tag"
      done
      step clocks date -u +%T.%N
      kill $smi 2>/dev/null || true ;;
    gaps-fp8)
      # where the causal FP8 forward's wall clock at 8k (0.95x cuDNN FP8)
      # parts from its GPU time per kernel (1.03x over 400 calls, clocks):
      # 400 calls rotating 3 input sets, as the benchmark does, then 1 set;
      # per impl its kernels' total, their span on the GPU (the gaps between
      # calls) and the traced loop's wall clock (~2 min)
      for sets in 3 1; do
        step gaps-fp8 timeout 100 $PY benchmarks/profile_kernels.py \
          --mode fwd --seq 8192 --head-dim 128 --causal --iters 400 \
          --sets $sets --impls flashjax_fp8_mosaic_vt cudnn_fp8 \
          flashjax_mosaic --out "$WORK/kernels-gaps-fp8-sets$sets"
      done ;;
    wall-fp8-iters)
      # the benchmark's wall clock of the causal FP8 8k forward in runs of 20
      # calls (its default) and of 400 (gaps-fp8's profiled loop) (~2 min)
      for iters in 20 400; do
        step wall-fp8-iters timeout 100 $PY benchmarks/bench_attention.py \
          --impls flashjax_fp8_mosaic_vt cudnn_fp8 flashjax_mosaic \
          --dtypes bfloat16 --head-dims 128 --seqs 8192 --causal true \
          --modes fwd --matmul 0 --iters $iters --repeats 5 \
          --out "$WORK/wall-fp8-iters$iters"
      done ;;
    bench-sustained)
      # the table's bf16 shapes at 4k and 16k against cuDNN in runs of 400
      # calls (the table's runs are 20): which ratios depend on the run's
      # length under the power cap (wall-fp8-iters; clocks) (~6 min)
      step bench-sustained timeout 500 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic cudnn --dtypes bfloat16 --head-dims 128 64 \
        --seqs 4096 16384 --causal false true --modes fwd fwd_bwd \
        --matmul 0 --iters 400 --repeats 3 --out "$WORK/bench-sustained" ;;
    ncu)
      # Nsight Compute on one forward+backward each, ours and cuDNN's, d 128
      # 4k, causal and not (hardware counters: the H200 runs Firecracker)
      # (~4 min)
      for c in "" --causal; do
        nsight ncu "ncu-d128${c:+-causal}" details --summarize --set detailed \
          -- $c --impls flashjax_mosaic cudnn
      done ;;
    ncu-fused)
      # the fused backward (flashjax_dkdv_dq, 5 matmuls a tile pair) beside
      # the two kernels (7), d 128 4k: by its times it ran ~560 effective
      # TFLOP/s non-causal and ~375 causal where the two kernels run ~740
      # (docs/benchmarks.md: the backward counted in matmuls): Nsight
      # details, then the stall reasons per issue, and ptxas's spill lines per
      # kernel (~5 min)
      export MOSAIC_GPU_DUMP_PTXAS=1
      for c in "" --causal; do
        nsight ncu-fused "ncu-fused-d128${c:+-causal}" details --summarize \
          --set detailed -- $c --mode fwd_bwd --impls \
          flashjax_mosaic+bwd.fused_dq=True+bwd.stages=3 \
          flashjax_mosaic+bwd.fused_dq=False
        nsight ncu-fused "ncu-fused-stalls-d128${c:+-causal}" raw --stalls \
          --metrics \
          "$STALL_METRICS" \
          -- $c --mode fwd_bwd --impls \
          flashjax_mosaic+bwd.fused_dq=True+bwd.stages=3
      done
      unset MOSAIC_GPU_DUMP_PTXAS
      ptxas_table ncu-fused ;;
    ncu-d64-bwd)
      # d 64 forward+backward, 4 × 4096 × 32 (1.02-1.04× cuDNN, its backward
      # slower than cuDNN's): where our dK/dV(+dQ) kernel's cycles go
      nsight ncu-d64-bwd ncu-d64-bwd details --summarize --set detailed -- \
        --head-dim 64 --mode fwd_bwd --impls flashjax_mosaic cudnn
      nsight ncu-d64-bwd ncu-d64-bwd-stalls raw --stalls --metrics \
        "$STALL_METRICS" \
        -- --head-dim 64 --mode fwd_bwd --impls flashjax_mosaic cudnn ;;
    ncu-bwd-persistent)
      export MOSAIC_GPU_DUMP_PTXAS=1
      nsight ncu-bwd-persistent ncu-bwd-persistent details --summarize \
        --set detailed -- --head-dim 64 --mode fwd_bwd --impls \
        flashjax_mosaic flashjax_mosaic+bwd.persistent=True
      nsight ncu-bwd-persistent ncu-bwd-persistent-stalls raw --stalls \
        --metrics \
        "$STALL_METRICS" \
        -- --head-dim 64 --mode fwd_bwd --impls flashjax_mosaic \
        flashjax_mosaic+bwd.persistent=True
      nsight ncu-bwd-persistent ncu-bwd-persistent-source \
        "source --print-source sass" --source -k 'regex:dkdv' \
        --section SourceCounters --section WarpStateStats -- --head-dim 64 \
        --mode fwd_bwd --impls flashjax_mosaic \
        flashjax_mosaic+bwd.persistent=True
      unset MOSAIC_GPU_DUMP_PTXAS
      ptxas_table ncu-bwd-persistent ;;
    confirm-lse-log2)
      # lse_log2 in a second process, at the lengths opts-lse-log2 did not
      # time (2k, 8k) and fp16 too: d 64 gained 1% there, d 128 lost 1%
      # (thirty-fifth session) (~5 min)
      step confirm-lse-log2 timeout 500 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.lse_log2=True cudnn --dtypes bfloat16 float16 \
        --head-dims 64 128 --seqs 2048 8192 --causal false true \
        --modes fwd_bwd --matmul 0 --repeats 7 --out "$WORK/confirm-lse-log2" ;;
    opts-d64-bwd-retime)
      mosaic_tests opts-d64-bwd-retime 200 -k "deferred_waits or lse_log2"
      step opts-d64-bwd-retime env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.deferred_waits=True \
        flashjax_mosaic+bwd.fold_stats=True \
        flashjax_mosaic+bwd.deferred_waits=True+bwd.fold_stats=True cudnn \
        --dtypes bfloat16 --head-dims 64 --seqs 4096 16384 --causal false \
        --modes fwd_bwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-d64-bwd-retime"
      ptxas_table opts-d64-bwd-retime ;;
    opts-owned-registers)
      mosaic_tests opts-owned-registers 240 -k "owned_registers"
      fp8_tests opts-owned-registers 150 -k owned_registers
      bwd_option opts-owned-registers owned_registers 300 64 ;;
    opts-owned-registers-fwd)
      step opts-owned-registers-fwd env MOSAIC_GPU_DUMP_PTXAS=1 timeout 270 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+owned_registers=True cudnn --dtypes bfloat16 \
        --head-dims 128 64 --seqs 4096 16384 --causal false true \
        --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-owned-registers-fwd"
      step opts-owned-registers-fp8 env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 \
        $PY benchmarks/bench_attention.py --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+owned_registers=True cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 8192 16384 \
        --causal false true --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-owned-registers-fp8"
      ptxas_table opts-owned-registers-fwd opts-owned-registers-fp8 ;;
    confirm-owned-registers)
      mosaic_tests confirm-owned-registers 110 -k owned_registers_with_shared_full
      step confirm-owned-registers timeout 300 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.owned_registers=False \
        flashjax_mosaic+bwd.shared_full=True cudnn \
        --dtypes bfloat16 float16 --head-dims 64 --seqs 2048 4096 8192 16384 \
        --causal false --modes fwd_bwd --matmul 0 --repeats 7 \
        --out "$WORK/confirm-owned-registers-bwd-d64"
      step confirm-owned-registers timeout 100 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+owned_registers=True cudnn \
        --dtypes bfloat16 float16 --head-dims 128 --seqs 2048 4096 8192 16384 \
        --causal false --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/confirm-owned-registers-fwd-d128" ;;
    confirm-owned-registers-short)
      # the fortieth session's shortened confirm (~3.5 min): the backward's
      # owned tiles at d 64 and 128 non-causal, then d 64 causal
      step confirm-owned-registers-short timeout 270 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.owned_registers=True cudnn --dtypes bfloat16 \
        --head-dims 64 128 --seqs 4096 16384 --causal false --modes fwd_bwd \
        --matmul 0 --repeats 5 --out "$WORK/confirm-owned-registers-short"
      step confirm-owned-registers-short timeout 150 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.owned_registers=True cudnn --dtypes bfloat16 \
        float16 --head-dims 64 --seqs 4096 16384 --causal true --modes fwd_bwd \
        --matmul 0 --repeats 5 --out "$WORK/owned-registers-d64-causal" ;;
    opts-fp8-causal)
      step opts-fp8-causal env MOSAIC_GPU_DUMP_PTXAS=1 timeout 360 \
        $PY benchmarks/bench_attention.py --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+persistent=False+stream_k=False \
        flashjax_fp8_mosaic_vt+stream_k=True cudnn_fp8 flashjax_mosaic \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 6144 8192 10240 16384 \
        --causal true --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-fp8-causal"
      ptxas_table opts-fp8-causal ;;
    opts-stream-k-causal-4k)
      step opts-stream-k-causal-4k timeout 240 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+stream_k=True cudnn --dtypes bfloat16 float16 \
        --head-dims 64 128 --seqs 4096 6144 --causal true --modes fwd \
        --matmul 0 --repeats 9 --out "$WORK/opts-stream-k-causal-4k" ;;
    opts-d64-causal-16k)
      peers
      step opts-d64-causal-16k timeout 240 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic \
        flashjax_mosaic+persistent=True+early_handover=False+stream_k=False \
        flashjax_mosaic+persistent=True+early_handover=False+stream_k=True \
        tokamax_mosaic cudnn --dtypes bfloat16 float16 --head-dims 64 \
        --seqs 12288 16384 --causal true --modes fwd --matmul 0 --repeats 9 \
        --out "$WORK/opts-d64-causal-16k" ;;
    confirm-d64-causal-16k)
      # v29: the 16-bit d 64 causal forward on the paired grid (with
      # Stream-K) up to 16k keys: test_large's d 64 causal 16k case compiled,
      # then the default against v28's rule (one tile a CTA, early
      # hand-over), tokamax and cuDNN at 16k, and beyond the rule at 24k /
      # 32k, bf16 and fp16, 9 rounds (~5 min)
      step confirm-d64-causal-16k env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 \
        timeout 150 $PY -m pytest -v -p no:cacheprovider $HUNG 120 \
        tests/test_large.py -k "mosaic and sq16384 and d64-causal"
      peers
      step confirm-d64-causal-16k timeout 300 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+persistent=False+early_handover=True+stream_k=False \
        flashjax_mosaic+persistent=True+early_handover=False+stream_k=True \
        tokamax_mosaic cudnn --dtypes bfloat16 float16 --head-dims 64 \
        --seqs 16384 24576 32768 --causal true --modes fwd --matmul 0 \
        --repeats 9 --out "$WORK/confirm-d64-causal-16k" ;;
    confirm-shared-full)
      # v30 (forty-eighth session): shared_full in d 64's fused non-causal
      # backward, the default against it off and cuDNN, then the d 64
      # backward's by-length test compiled (~2 min)
      fwd_bwd_pair confirm-shared-full 170 confirm-shared-full-d64 \
        "flashjax_mosaic flashjax_mosaic+bwd.shared_full=False" \
        --head-dims 64 --seqs 4096 16384 --causal false --repeats 7
      mosaic_tests confirm-shared-full 75 -k d64_backward_by_length ;;
    confirm-v31)
      # v31 as first written (forty-ninth session): shared_full in every
      # fused causal backward (d 128 from 8k keys, d 64 from 16k), the
      # default against it off and cuDNN, bf16 and fp16; then in d 128's
      # non-causal fused backward as an option (4k: +3.7%, 16k: -1.8% in
      # opts-shared-full); then the by-length tests and test_large's long
      # causal fused cases compiled on that default (~5.5 min). As taken,
      # v31 leaves d 64's causal kernel without it: its bench (the second)
      # is now a same-kernel pair
      off="flashjax_mosaic flashjax_mosaic+bwd.shared_full=False"
      fwd_bwd_pair confirm-v31 170 confirm-v31-d128-causal "$off" \
        --head-dims 128 --seqs 8192 16384 --causal true --repeats 7
      fwd_bwd_pair confirm-v31 90 confirm-v31-d64-causal "$off" \
        --head-dims 64 --seqs 16384 --causal true --repeats 7
      fwd_bwd_pair confirm-v31 80 confirm-v31-d128-nc \
        "flashjax_mosaic flashjax_mosaic+bwd.shared_full=True" \
        --head-dims 128 --seqs 4096 --causal false --repeats 7
      mosaic_tests confirm-v31 90 -k "backward_by_length"
      step confirm-v31 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout 150 \
        $PY -m pytest -v -p no:cacheprovider $HUNG 120 tests/test_large.py \
        -k "mosaic and causal and (sq16384 or sq12000)" ;;
    confirm-v31-nc)
      # d 128's non-causal fused backward (run with shared_full on below
      # 16k keys; v31 as taken has it at every length): the default against
      # it off and on, and cuDNN, 2k-16k, bf16 and fp16; test_large's d 128
      # non-causal case (9000 keys) compiled on it (~4 min)
      fwd_bwd_pair confirm-v31-nc 300 confirm-v31-nc "flashjax_mosaic \
        flashjax_mosaic+bwd.shared_full=False flashjax_mosaic+bwd.shared_full=True" \
        --head-dims 128 --seqs 2048 4096 8192 16384 --causal false --repeats 7
      step confirm-v31-nc env XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout 120 \
        $PY -m pytest -v -p no:cacheprovider $HUNG 100 tests/test_large.py \
        -k "mosaic and d128 and not causal" ;;
    confirm-v31-16k)
      # v31 as taken (shared_full in every d 128 fused backward) against it
      # off and cuDNN at 16k keys, causal and not, bf16 and fp16, 9 rounds
      # (~2 min)
      fwd_bwd_pair confirm-v31-16k 150 confirm-v31-16k \
        "flashjax_mosaic flashjax_mosaic+bwd.shared_full=False" \
        --head-dims 128 --seqs 16384 --causal false true --repeats 9 ;;
    d256)
      mosaic_tests d256 150 -k "d256"
      fp8_tests d256 120 -k "d256"
      step d256 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout 120 \
        $PY -m pytest -v -p no:cacheprovider $HUNG 90 \
        tests/test_attention.py -k "mosaic and d256"
      step d256 env MOSAIC_GPU_DUMP_PTXAS=1 timeout 330 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic flashjax \
        cudnn --dtypes bfloat16 --head-dims 256 --seqs 4096 16384 \
        --causal false true --modes fwd fwd_bwd --repeats 5 \
        --out "$WORK/d256"
      ptxas_table d256 ;;
    d256-fp8)
      step d256-fp8 env MOSAIC_GPU_DUMP_PTXAS=1 timeout 200 \
        $PY benchmarks/bench_attention.py --impls flashjax_fp8_mosaic_vt \
        cudnn_fp8 flashjax_mosaic --dtypes bfloat16 --head-dims 256 \
        --seqs 4096 16384 --causal false true --modes fwd --matmul 0 \
        --repeats 5 --out "$WORK/d256-fp8"
      ptxas_table d256-fp8 ;;
    deterministic)
      # the two-kernel backward that deterministic=True takes where the
      # defaults fuse dQ (fiftieth session, CPU: lowers for CUDA, passes in
      # the interpreter): compiled, then what it costs
      mosaic_tests deterministic 120 -k "deterministic"
      step deterministic timeout 330 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic_deterministic cudnn \
        --dtypes bfloat16 --head-dims 128 64 --seqs 4096 16384 \
        --causal false true --modes fwd_bwd --matmul 0 --repeats 7 \
        --out "$WORK/deterministic" ;;
    opts-d64-causal-bwd)
      # the furthest forward+backward miss (d 64 causal 16k, 1.01x cuDNN in
      # v31's table, bf16 and fp16): its fused split-dQ backward (2 stages)
      # re-timed on the H100 with the backward options timed elsewhere or
      # on the H200 only: 3 stages (with and without shared_full), L in
      # log2 units, deferred waits with folded statistics, the two kernels
      # (dQ; dK/dV) that run below 16k keys (a cut-over last timed in the
      # twenty-first session), and the non-causal kernel's options all
      # together (5 stages, L in log2 units, owned tiles in registers,
      # shared_full: each alone timed even or slower causal); all lower for
      # CUDA (forty-ninth and fiftieth sessions), 9 rounds, ptxas's spill
      # lines (~5 min)
      MOSAIC_GPU_DUMP_PTXAS=1 fwd_bwd_pair opts-d64-causal-bwd 330 \
        opts-d64-causal-bwd "flashjax_mosaic flashjax_mosaic+bwd.stages=3 \
        flashjax_mosaic+bwd.stages=3+bwd.shared_full=True \
        flashjax_mosaic+bwd.lse_log2=True \
        flashjax_mosaic+bwd.deferred_waits=True+bwd.fold_stats=True \
        flashjax_mosaic+bwd.fused_dq=False+bwd.split_dq=False \
        flashjax_mosaic+bwd.stages=5+bwd.lse_log2=True+bwd.owned_registers=True+bwd.shared_full=True" \
        --head-dims 64 --seqs 16384 --causal true --repeats 9
      ptxas_table opts-d64-causal-bwd ;;
    tests-v30)
      # v30's kernel (d 64's fused non-causal backward with shared_full)
      # compiled at long lengths: test_large's d 64 non-causal Hopper
      # cases, then test_mosaic's shared_full and d 64 backward tests
      step tests-v30 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout 200 \
        $PY -m pytest -v -p no:cacheprovider $HUNG 150 tests/test_large.py \
        -k "mosaic and d64 and not causal"
      mosaic_tests tests-v30 150 -k "shared_full or d64_backward" ;;
    tests-v29)
      # v29's rule beyond 12k keys, compiled: test_large's d 64 causal cases
      # at 24000 keys (188 query tiles: paired, Stream-K, partial last
      # tiles) and 20000 (157: one tile a CTA), one head each (~1.5 min)
      step tests-v29 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.7 timeout 200 \
        $PY -m pytest -v -p no:cacheprovider $HUNG 150 tests/test_large.py \
        -k "mosaic and (sq24000 or sq20000) and d64-causal" ;;
    confirm-d64-causal-long)
      # v29 (as first written: the 16-bit d 64 causal forward on the paired
      # grid with Stream-K at every length): test_large's d 64 causal cases
      # from 16k compiled (in the forty-sixth session the 24000-key case had
      # two heads and ran the f32 reference out of memory; it has one now),
      # then the default against v28's rule beyond 12k keys (one tile a CTA,
      # early hand-over), tokamax and cuDNN, forward 16k / 24k / 32k and
      # forward+backward 16k, bf16 and fp16, 9 rounds (~5 min)
      step confirm-d64-causal-long env XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 \
        timeout 200 $PY -m pytest -v -p no:cacheprovider $HUNG 150 \
        tests/test_large.py -k "mosaic and (sq16384 or sq24000) and d64-causal"
      peers
      for m in "fwd 16384 24576 32768" "fwd_bwd 16384"; do
        set -- $m
        step confirm-d64-causal-long timeout 200 $PY \
          benchmarks/bench_attention.py --impls flashjax_mosaic \
          flashjax_mosaic+persistent=False+early_handover=True+stream_k=False \
          tokamax_mosaic cudnn --dtypes bfloat16 float16 --head-dims 64 \
          --seqs "${@:2}" --causal true --modes $1 --matmul 0 --repeats 9 \
          --out "$WORK/confirm-d64-causal-long-$1"
      done ;;
    opts-stream-k-bwd-v27)
      # Stream-K on the persistent fused backward (slots carried) on v27's d
      # 64 non-causal kernel (owned tiles in registers, L in log2 units),
      # where it gained 1-3% at 4k in three processes of v25's (thirty-
      # fourth session) and lost from 8k: its compiled tests, then 2k / 4k /
      # 8k, bf16 and fp16, 9 rounds (~6 min)
      mosaic_tests opts-stream-k-bwd-v27 200 -k stream_k_backward
      step opts-stream-k-bwd-v27 timeout 300 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True+bwd.stages=5+bwd.owned_registers=True+bwd.persistent=True+bwd.carry_slots=True+bwd.stream_k=True \
        cudnn --dtypes bfloat16 float16 --head-dims 64 --seqs 2048 4096 8192 \
        --causal false --modes fwd_bwd --matmul 0 --repeats 9 \
        --out "$WORK/opts-stream-k-bwd-v27" ;;
    ncu-balanced)
      for spec in "fp8-4k:128:4096::flashjax_fp8_mosaic_vt cudnn_fp8" \
          "fp8-causal-8k:128:8192:--causal:flashjax_fp8_mosaic_vt cudnn_fp8" \
          "d64-4k:64:4096::flashjax_mosaic cudnn"; do
        IFS=: read -r tag d seq c impls <<< "$spec"
        calls=(--mode fwd --head-dim "$d" --seq "$seq" $c --impls $impls)
        nsight ncu-balanced "ncu-balanced-$tag" raw --stalls \
          -k 'regex:mosaic|sdpa' --metrics "$STALL_METRICS,$SM_BALANCE" -- \
          "${calls[@]}"
        nsight ncu-balanced "ncu-balanced-source-$tag" \
          "source --print-source sass" --source \
          -k 'regex:flashjax_fwd.*mosaic' --section SourceCounters \
          --section WarpStateStats -- "${calls[@]}"
      done ;;
    ncu-o-residual)
      # where O's rounding residual costs the differentiated forward 6.8% at
      # bf16 d 64 causal 4k (610 against 571 µs a call; d 128 4.6%; no
      # spills either way, the stores by stmatrix into swizzled tiles,
      # profile-o-residual-4k): Nsight's details page and stall reasons
      # of the forward kernel with and without it (~3 min)
      calls=(--mode fwd_bwd --head-dim 64 --seq 4096 --causal
             --impls flashjax_mosaic flashjax_mosaic+o_residual=False)
      nsight ncu-o-residual ncu-o-residual details --summarize \
        -k 'regex:flashjax_fwd.*mosaic' --set detailed -- "${calls[@]}"
      nsight ncu-o-residual ncu-o-residual-stalls raw --stalls \
        -k 'regex:flashjax_fwd.*mosaic' --metrics "$STALL_METRICS" -- \
        "${calls[@]}" ;;
    opts-multicast)
      mosaic_tests opts-multicast 240 -k multicast
      step opts-multicast env MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 $PY \
        benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+multicast=True \
        flashjax_mosaic+multicast=True+stream_k=False \
        flashjax_mosaic+stream_k=False cudnn --dtypes bfloat16 \
        --head-dims 128 --seqs 2048 4096 16384 --causal false --modes fwd \
        --matmul 0 --repeats 7 --out "$WORK/opts-multicast"
      ptxas_table opts-multicast ;;
    opts-multicast-more)
      step opts-multicast-more timeout 110 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+multicast=True cudnn \
        --dtypes float16 --head-dims 128 --seqs 4096 16384 --causal false \
        --modes fwd --matmul 0 --repeats 7 --out "$WORK/opts-multicast-fp16"
      step opts-multicast-more timeout 110 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+multicast=True cudnn \
        --dtypes bfloat16 --head-dims 64 --seqs 4096 16384 --causal false \
        --modes fwd --matmul 0 --repeats 7 --out "$WORK/opts-multicast-d64"
      step opts-multicast-more timeout 100 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt flashjax_fp8_mosaic_vt+multicast=True \
        cudnn_fp8 --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-multicast-fp8"
      step opts-multicast-more timeout 130 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+multicast=True cudnn \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 --causal false \
        --modes fwd_bwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-multicast-fwd-bwd" ;;
    ncu-multicast)
      calls=(--mode fwd --head-dim 128 --seq 4096 --impls flashjax_mosaic
             flashjax_mosaic+multicast=True cudnn)
      nsight ncu-multicast ncu-multicast details --summarize --set detailed \
        -k 'regex:mosaic|sdpa' -- "${calls[@]}"
      nsight ncu-multicast ncu-multicast-stalls raw --stalls \
        -k 'regex:mosaic|sdpa' --metrics "$STALL_METRICS,$SM_BALANCE" -- \
        "${calls[@]}"
      nsight ncu-multicast ncu-multicast-source "source --print-source sass" \
        --source -k 'regex:flashjax_fwd.*mosaic' --section SourceCounters \
        --section WarpStateStats -- "${calls[@]}" ;;
    opts-multicast-owned)
      # session 44 (run as the bench command itself): the multicast grid
      # and Q as a register operand, each and both, d 128 non-causal (~1 min)
      step opts-multicast-owned timeout 280 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+multicast=True \
        flashjax_mosaic+owned_registers=True \
        flashjax_mosaic+multicast=True+owned_registers=True cudnn \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 --causal false \
        --modes fwd --matmul 0 --repeats 7 --out "$WORK/opts-multicast-owned" ;;
    confirm-owned-fwd)
      # session 44 (run as the bench commands themselves): Q as a register
      # operand in the d 128 non-causal forward, bf16 and fp16, one process
      # each (~2.5 min)
      for dt in bfloat16 float16; do
        step confirm-owned-fwd timeout 130 $PY benchmarks/bench_attention.py \
          --impls flashjax_mosaic flashjax_mosaic+owned_registers=True cudnn \
          --dtypes $dt --head-dims 128 --seqs 2048 4096 16384 --causal false \
          --modes fwd --matmul 0 --repeats 7 --out "$WORK/confirm-owned-fwd-$dt"
      done ;;
    opts-overlap-v27)
      mosaic_tests opts-overlap-v27 150 -k intra_wg_overlap
      fp8_tests opts-overlap-v27 120 -k overlap_compiled
      fwd_options opts-overlap-v27-d64 flashjax_mosaic cudnn 64 "4096 16384" \
        intra_wg_overlap=True intra_wg_overlap=True+block_kv=128 ;;
    opts-overlap-v27-fp8)
      fwd_options opts-overlap-v27-fp8 flashjax_fp8_mosaic_vt cudnn_fp8 128 \
        "4096 8192" intra_wg_overlap=True \
        intra_wg_overlap=True+block_kv=128 ;;
    dump-overlap-v27)
      dump_ptx dump-overlap-v27 dump-overlap-v27-d64 --impls flashjax_mosaic \
        flashjax_mosaic+intra_wg_overlap=True+block_kv=128 --dtypes bfloat16 \
        --head-dims 64 --seqs 4096 --causal false --modes fwd --matmul 0 \
        --repeats 1 --out "$WORK/dump-overlap-v27-d64"
      dump_ptx dump-overlap-v27 dump-overlap-v27-fp8 \
        --impls flashjax_fp8_mosaic_vt \
        flashjax_fp8_mosaic_vt+intra_wg_overlap=True+block_kv=128 \
        --dtypes bfloat16 --head-dims 128 --seqs 4096 --causal false \
        --modes fwd --matmul 0 --repeats 1 --out "$WORK/dump-overlap-v27-fp8" ;;
    opts-shared-full)
      mosaic_tests opts-shared-full 150 -k "shared_full"
      fp8_tests opts-shared-full 90 -k shared_full
      bwd_option opts-shared-full shared_full 330 "64 128" ;;
    opts-shared-full-fwd)
      step opts-shared-full-fwd timeout 150 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+shared_full=True cudnn \
        --dtypes bfloat16 --head-dims 64 128 --seqs 4096 16384 \
        --causal false true --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-shared-full-fwd"
      step opts-shared-full-fwd timeout 100 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic_vt flashjax_fp8_mosaic_vt+shared_full=True \
        cudnn_fp8 --dtypes bfloat16 --head-dims 128 --seqs 4096 16384 \
        --causal false true --modes fwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-shared-full-fp8" ;;
    parity-sweep)
      # consistent_delta on both margin cases compiled (the thirty-seventh
      # session's compiled run took the first on inputs where the defaults
      # pass too), then the sweep
      mosaic_tests parity-sweep 120 -k margin_case
      for backend in mosaic triton; do
        for seed in 1 2 3 4; do
          env XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 timeout 280 \
            $PY benchmarks/parity_sweep.py --backend $backend --cases 20 \
            --seed $seed > "$WORK/parity-sweep-$backend-$seed.log" 2>&1 &
        done
      done
      wait
      tail -n 3 "$WORK"/parity-sweep-*.log | tee -a "$WORK/parity-sweep.log"
      pack ;;
    opts-o-residual)
      mosaic_tests opts-o-residual 150 -k "o_residual"
      step opts-o-residual env MOSAIC_GPU_DUMP_PTXAS=1 timeout 270 \
        $PY benchmarks/bench_attention.py --impls flashjax_mosaic \
        flashjax_mosaic+o_residual=True cudnn --dtypes bfloat16 \
        --head-dims 64 128 --seqs 4096 16384 --causal false true \
        --modes fwd_bwd --matmul 0 --repeats 7 --out "$WORK/opts-o-residual"
      ptxas_table opts-o-residual
      # the forward kernel's own GPU time with r and without (the D fusion
      # apart), d 128 non-causal 16k: the epilogue's extra store
      step opts-o-residual timeout 100 $PY benchmarks/profile_kernels.py \
        --head-dim 128 --seq 16384 --mode fwd_bwd --impls flashjax_mosaic \
        flashjax_mosaic+o_residual=True --out "$WORK/kernels-o-residual" ;;
    profile-o-residual-4k)
      # where o_residual's cost goes at 4k keys (d 128 causal: 3.6% of
      # forward+backward in the thirty-ninth session's one process, 0.3% at
      # 16k): GPU time per kernel with r and without, and cuDNN's, d 128 and
      # 64 causal (~1.5 min)
      for d in 128 64; do
        step profile-o-residual-4k timeout 80 $PY benchmarks/profile_kernels.py \
          --head-dim $d --seq 4096 --causal --mode fwd_bwd \
          --impls flashjax_mosaic flashjax_mosaic+o_residual=False cudnn \
          --out "$WORK/kernels-o-residual-d$d-causal-4k"
      done ;;
    opts-consistent-delta)
      mosaic_tests opts-consistent-delta 200 -k "consistent_delta"
      step opts-consistent-delta timeout 100 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.consistent_delta=True \
        cudnn --dtypes bfloat16 --head-dims 64 --seqs 2048 --causal false \
        --modes fwd_bwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-consistent-delta-nc"
      step opts-consistent-delta timeout 160 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_mosaic+bwd.consistent_delta=True \
        cudnn --dtypes bfloat16 --head-dims 64 128 --seqs 2048 4096 \
        --causal true --modes fwd_bwd --matmul 0 --repeats 7 \
        --out "$WORK/opts-consistent-delta-causal" ;;
    dump-lse-log2-d128)
      for seq in 4096 16384; do
        step dump-lse-log2-d128 timeout 90 $PY benchmarks/profile_kernels.py \
          --head-dim 128 --seq $seq --mode fwd_bwd --impls flashjax_mosaic \
          flashjax_mosaic+bwd.lse_log2=True \
          --out "$WORK/kernels-lse-log2-d128-$seq"
      done
      dump_ptx dump-lse-log2-d128 dump-lse-log2-d128 --impls flashjax_mosaic \
        flashjax_mosaic+bwd.lse_log2=True --dtypes bfloat16 --head-dims 128 \
        --seqs 4096 --causal false --modes fwd_bwd --matmul 0 --repeats 1 \
        --out "$WORK/dump-lse-log2-d128" ;;
    ncu-bwd-persistent-carry)
      # Nsight on the persistent backward with carried slots (its step loop
      # as the default's: 465 instructions vs 469) against the default, d 64
      # non-causal 16k, where it still lost 7% (thirty-fourth session):
      # summary (the details page keeps the memory sections) and stalls of
      # the dK/dV kernels (~4 min)
      calls=(--head-dim 64 --seq 16384 --mode fwd_bwd --impls flashjax_mosaic
             flashjax_mosaic+bwd.persistent=True+bwd.carry_slots=True)
      nsight ncu-bwd-persistent-carry ncu-bwd-persistent-carry details \
        --summarize -k 'regex:dkdv' --set detailed -- "${calls[@]}"
      nsight ncu-bwd-persistent-carry ncu-bwd-persistent-carry-stalls raw \
        --stalls -k 'regex:dkdv' --metrics "$STALL_METRICS,$SM_BALANCE" -- \
        "${calls[@]}" ;;
    ncu-fp8)
      # Nsight Compute on one FP8 forward each, ours and cuDNN's, and our bf16
      # forward, d 128 4k non-causal (~2 min)
      nsight ncu-fp8 ncu-fp8-d128 details --summarize --set detailed -- \
        --mode fwd --impls flashjax_fp8_mosaic cudnn_fp8 flashjax_mosaic ;;
    ncu-stalls)
      # why ours issue fewer instructions a cycle than cuDNN's (results/ncu-h200):
      # the warps' stall reasons per issued instruction and the pipelines'
      # utilisation (profile_kernels.stall_table), FP8 forward and bf16
      # forward+backward, d 128 4k non-causal, ours and cuDNN's (~2 min)
      for spec in "fp8:fwd:flashjax_fp8_mosaic cudnn_fp8" \
                  "bf16:fwd_bwd:flashjax_mosaic cudnn"; do
        IFS=: read -r tag mode impls <<< "$spec"
        nsight ncu-stalls "ncu-stalls-$tag" raw --stalls --metrics \
          "$STALL_METRICS" \
          -- --mode $mode --impls $impls
      done ;;
    ncu-source)
      # ncu-stalls put our forwards' extra stalls in long_scoreboard: per
      # instruction, which waits they are (the source page's stall samples,
      # profile_kernels.source_table) (~3 min)
      for spec in "fwd:fwd:flashjax_fp8_mosaic cudnn_fp8 flashjax_mosaic cudnn" \
                  "bwd:fwd_bwd:flashjax_mosaic"; do
        IFS=: read -r tag mode impls <<< "$spec"
        nsight ncu-source "ncu-source-$tag" "source --print-source sass" \
          --source -k 'regex:mosaic|sdpa' --section SourceCounters \
          --section WarpStateStats -- --mode $mode --impls $impls
      done ;;
    parity-fp8-pv)
      # FP8 for P V only (Q Kᵀ in bf16: its error does not grow with the
      # logits, benchmarks/fp8_gradients.py) beside the full FP8 forward and
      # bf16 flash (~6 min: three models)
      step parity-fp8-pv timeout 420 $PY -m examples.train --preset gpu \
        --compare flash-fp8 flash-fp8-pv --steps 600 --sample-tokens 0 \
        --out "$WORK/parity-fp8-pv" ;;
    fp8-policy)
      # the FP8 training policy as a model calls it (quantisation inside),
      # full and P V only, against bf16 and cuDNN, forward and
      # forward+backward, d 64 (the gpu preset's) and 128, causal (~3 min)
      step fp8-policy timeout 240 $PY benchmarks/bench_attention.py \
        --impls flashjax_mosaic flashjax_fp8_policy flashjax_fp8pv_policy cudnn \
        --dtypes bfloat16 --head-dims 64 128 --seqs 1024 4096 --causal true \
        --modes fwd fwd_bwd --matmul 0 --out "$WORK/fp8-policy" ;;
    parity-fp8-lr)
      # FP8 against bf16 flash at half the peak learning rate: does the FP8
      # curve's spike after the peak (results/parity-h200-fp8-centred) go
      # away when the updates are smaller? (~5 min: two models)
      step parity-fp8-lr timeout 330 $PY -m examples.train --preset gpu \
        --compare flash-fp8 --lr 5e-4 --steps 600 --sample-tokens 0 \
        --out "$WORK/parity-fp8-lr" ;;
    tune-short)
      # the forward's tiles at 1k, causal (d 64 ran 0.82x cuDNN there with the
      # 4k-tuned 256-row K/V tiles): K/V tile and stages, and the persistent
      # grid's mirrored pairs at 128 rows (at 256 rows, d 64, they did not
      # finish on the H200: left out) (~2.5 min)
      rest="block_q_dkv=64, persistent=False, fused_dq=False, deferred_waits=False, intra_wg_overlap=False"
      only=()
      for t in "64, stages=2" "128, stages=2" "64, stages=3" "128, stages=3" \
          "256, stages=3"; do only+=("block_kv=$t, $rest"); done
      only+=("block_kv=128, stages=2, ${rest/persistent=False/persistent=True}"
             "block_kv=128, stages=3, ${rest/persistent=False/persistent=True}")
      step tune-short timeout 200 $PY benchmarks/tune_blocks.py --backend mosaic \
        --modes fwd --batch 16 --seq 1024 --head-dims 128 64 --causal true \
        --only "${only[@]}" --out "$WORK/tune-short.json" ;;
    fp8-causal)
      step fp8-causal timeout 240 $PY benchmarks/bench_attention.py \
        --impls flashjax_fp8_mosaic flashjax_fp8_mosaic+persistent=True \
        flashjax_fp8_mosaic+stages=3 flashjax_fp8_mosaic+block_kv=256 cudnn_fp8 \
        --dtypes bfloat16 --head-dims 128 --seqs 1024 4096 16384 --causal true \
        --modes fwd --matmul 0 --out "$WORK/fp8-causal" ;;
    parity-fp16)
      step parity-fp16 timeout 260 $PY -m examples.train --preset gpu \
        --dtype float16 --compare dense --steps 300 --sample-tokens 0 \
        --out "$WORK/parity-fp16" ;;
    *) echo "unknown step $s (see the header of $0)"; exit 2 ;;
  esac
done
