# (run from the repository root on the device) the two same-process leads of
# the twenty-fourth session, re-timed with 11 rounds and an A/A pair (the
# default under two names: flashjax_mosaic and +bwd.stages=2 / +stages=2,
# the same kernels) to read the run's noise:
#  1. FP8 non-causal forward with poly_exp2 = 48 / 64 columns (0.644 vs
#     0.647 ms at 4k, 2.456 vs 2.491 at 16k in opts-poly-exp2);
#  2. d 128 causal forward+backward fused + split dQ + 240 registers (7.381
#     vs 7.571 ms at 16k in opts-fused-causal, where the default d 64 ran
#     9.201 and 8.933 under two names).
set -x
python3 benchmarks/bench_attention.py --impls flashjax_fp8_mosaic \
  flashjax_fp8_mosaic+stages=2 flashjax_fp8_mosaic+poly_exp2=48 \
  flashjax_fp8_mosaic+poly_exp2=64 cudnn_fp8 --dtypes bfloat16 \
  --head-dims 128 --seqs 4096 8192 16384 --causal false --modes fwd \
  --matmul 0 --repeats 11 --out $OUT/confirm-fp8-poly
python3 benchmarks/bench_attention.py --impls flashjax_mosaic \
  flashjax_mosaic+bwd.stages=2 \
  flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True+bwd.compute_registers=240 \
  flashjax_mosaic+bwd.compute_registers=240 cudnn --dtypes bfloat16 \
  --head-dims 128 --seqs 8192 16384 --causal true --modes fwd_bwd \
  --matmul 0 --repeats 11 --out $OUT/confirm-fused-240
