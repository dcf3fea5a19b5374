# (run from the repository root on the device, HEAD in _old; removed after) the fused backward's dQ accumulator scoped (this tree) vs in the
# step's run_state (HEAD, in _old), each against cuDNN in its own process
cd "$(dirname "$0")"
IMPLS="flashjax_mosaic flashjax_mosaic+bwd.fused_dq=True+bwd.split_dq=True cudnn"
for tree in . _old; do
  name=$([ $tree = . ] && echo new || echo old)
  for d in 128 64; do
    causal=$([ $d = 128 ] && echo "true false" || echo true)
    (cd $tree && env MOSAIC_GPU_DUMP_PTXAS=1 timeout 140 python3 benchmarks/bench_attention.py \
      --impls $IMPLS --dtypes bfloat16 --head-dims $d --seqs 4096 16384 \
      --causal $causal --modes fwd_bwd --matmul 0 --out $OUT/dqs-$name-d$d > $OUT/dqs-$name-d$d.log 2>&1)
    python3 benchmarks/profile_kernels.py --ptxas $OUT/dqs-$name-d$d.log --out $OUT/dqs-$name-d$d-ptxas > /dev/null 2>&1
    echo "=== $name d$d"; grep -v "^$" $OUT/dqs-$name-d$d.md | tail -14
    grep -i "spill\|dkdv" $OUT/dqs-$name-d$d-ptxas.md | head -12
  done
done
