"""Quick compiled-kernel check on a GPU: error vs the f32 reference and rough timing.

python benchmarks/smoke_gpu.py   (prints one line per case)
"""
import time

import jax
import jax.numpy as jnp

import flashjax


def timeit(f, *args, n=20):
  jax.block_until_ready(f(*args))
  t = time.perf_counter()
  for _ in range(n):
    out = f(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / n * 1e3


def main():
  print(jax.__version__, jax.devices())
  key = jax.random.PRNGKey(0)
  for (b, s, hq, hk, d, dt, causal) in [
      (2, 1000, 8, 2, 64, jnp.bfloat16, True), (1, 333, 4, 4, 128, jnp.float32, False),
      (4, 4096, 16, 16, 128, jnp.bfloat16, False), (4, 4096, 16, 16, 128, jnp.bfloat16, True),
      (4, 4096, 32, 32, 64, jnp.float16, True), (1, 16384, 16, 16, 128, jnp.bfloat16, False)]:
    ks = jax.random.split(key, 4)
    q = jax.random.normal(ks[0], (b, s, hq, d), dt)
    k = jax.random.normal(ks[1], (b, s, hk, d), dt)
    v = jax.random.normal(ks[2], (b, s, hk, d), dt)
    do = jax.random.normal(ks[3], (b, s, hq, d), dt)
    fl = jax.jit(lambda q, k, v: flashjax.attention(q, k, v, causal=causal))
    vjp = jax.jit(lambda q, k, v, do: jax.vjp(lambda *a: flashjax.attention(*a, causal=causal), q, k, v)[1](do))
    rel = float('nan')
    if s <= 4096:
      ref = jax.jit(lambda q, k, v: flashjax.attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), causal=causal, backend="reference"))
      o = fl(q, k, v).astype(jnp.float32); r = ref(q, k, v)
      rel = float(jnp.linalg.norm(o - r) / jnp.linalg.norm(r))
      g = vjp(q, k, v, do)
      gr = jax.jit(lambda q, k, v, do: jax.vjp(lambda *a: flashjax.attention(*a, causal=causal, backend="reference"), q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))[1](do.astype(jnp.float32)))(q, k, v, do)
      grel = [float(jnp.linalg.norm(a.astype(jnp.float32) - r) / jnp.linalg.norm(r)) for a, r in zip(g, gr)]
    else:
      grel = []
    line = f"{b},{s},{hq},{hk},{d} {jnp.dtype(dt).name} causal={causal} relerr fwd {rel:.2e} bwd {[f'{x:.2e}' for x in grel]}"
    if dt != jnp.float32:
      hk_rep = hq // hk
      cud = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn"))
      cvjp = jax.jit(lambda q, k, v, do: jax.vjp(lambda *a: jax.nn.dot_product_attention(*a, is_causal=causal, implementation="cudnn"), q, k, v)[1](do))
      flops = 4 * b * s * s * hq * d / (2 if causal else 1)
      tf, tc = timeit(fl, q, k, v), timeit(cud, q, k, v)
      tfb, tcb = timeit(vjp, q, k, v, do), timeit(cvjp, q, k, v, do)
      line += (f" | fwd flash {tf:.3f}ms {flops/tf/1e9:.0f}TF cudnn {tc:.3f}ms {flops/tc/1e9:.0f}TF"
               f" | bwd flash {tfb:.3f}ms cudnn {tcb:.3f}ms")
    print(line, flush=True)


if __name__ == "__main__":
  main()
