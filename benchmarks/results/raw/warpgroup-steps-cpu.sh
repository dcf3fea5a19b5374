# bash benchmarks/results/raw/warpgroup-steps-cpu.sh > benchmarks/results/raw/warpgroup-steps-cpu.log
# each causal Hopper case of the fourteenth session's compiled run with short
# causal forwards persistent (raw/tests-prefetch-h200.log; 128-row K/V tiles),
# and this session's pieces (softcap case overrides): the warpgroups' steps
run() { echo "== $1: python benchmarks/debug_hang.py --case softcap --steps 128 --override ${*:2}"
        python benchmarks/debug_hang.py --case softcap --steps 128 --override "${@:2}" 2>/dev/null \
          | tail -1 | python -c "
import json, sys
d = json.loads(sys.stdin.read()); pw = d['per_warpgroup']
print('   per warpgroup:', pw, 'DIFFERENT' if any(a != b for a, b in pw) else 'same',
      '| per CTA:', d['per_cta'])"; }
run "FAILED bf16 sq113 skv203 d64 causal cap20 (and this session's kvh=8, softcap=null, b=1 pieces: hang)" sq=113 skv=203
run "ok (this session) skv=113" sq=113 skv=113
run "PASSED sq1 skv1 causal padded" sq=1 skv=1 segments=true
run "PASSED sq128 skv128 causal packed" sq=128 skv=128 segments=true
run "PASSED sq17 skv17 causal win32-8" sq=17 skv=17 'window=[32,8]'
run "PASSED sq17 skv17 causal" sq=17 skv=17
run "PASSED sq200 skv200 causal (d96, d64 cap20)" sq=200 skv=200
run "PASSED sq333 skv333 causal win40-0 packed" sq=333 skv=333 'window=[40,0]' segments=true
run "PASSED sq113 skv203 causal padded / packed" sq=113 skv=203 segments=true
run "PASSED sq113 skv203 causal win32-8" sq=113 skv=203 'window=[32,8]'
run "PASSED sq128 skv128 causal cap20" sq=128 skv=128
run "PASSED sq17 skv17 causal packed" sq=17 skv=17 segments=true
run "PASSED sq239 skv1 causal win32-8" sq=239 skv=1 'window=[32,8]'
run "PASSED sq239 skv1 causal (cap20, padded)" sq=239 skv=1
run "PASSED sq600 skv520 causal padded" sq=600 skv=520 segments=true
run "PASSED sq203 skv113 causal" sq=203 skv=113
run "PASSED sq333 skv333 causal win32-8" sq=333 skv=333 'window=[32,8]'
run "PASSED sq333 skv333 causal" sq=333 skv=333
