"""Lower every shipped kernel config for CUDA against an abstract H100, on the CPU.

Interpret mode accepts what the GPU compiler rejects (non power-of-2 tiles,
unsupported ops, layouts); lowering through Pallas' Triton backend catches that
without a GPU. It does not run ptxas, so register spills still need the GPU run.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import flashjax

H100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3",
                                   platform="gpu", num_cores=132)


def lower_for_h100(f, *args):
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=H100)
  with jax.sharding.use_abstract_mesh(mesh):
    return jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))


@pytest.mark.parametrize("head_dim", [32, 64, 96, 128, 256])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_fwd_and_bwd_lower_for_cuda(head_dim, dtype):
  # GQA 6:2 with odd lengths, causal + segments on half the configs, so both
  # the masked and the unmasked tile loops are lowered.
  masked = (head_dim // 32 + len(dtype)) % 2 == 0
  b, sq, skv = 2, 300, 173
  q = jax.ShapeDtypeStruct((b, sq, 6, head_dim), jnp.dtype(dtype))
  kv = jax.ShapeDtypeStruct((b, skv, 2, head_dim), jnp.dtype(dtype))
  ids = ((jax.ShapeDtypeStruct((b, sq), jnp.int32),
          jax.ShapeDtypeStruct((b, skv), jnp.int32)) if masked else (None, None))

  def loss(q, k, v, q_seg, kv_seg):
    o = flashjax.attention(q, k, v, causal=masked, q_segment_ids=q_seg,
                           kv_segment_ids=kv_seg, interpret=False,
                           backend="triton")
    return jnp.sum(o.astype(jnp.float32))

  text = lower_for_h100(jax.grad(loss, argnums=(0, 1, 2)), q, kv, kv,
                        *ids).as_text()
  # One Triton kernel each: forward, dK/dV, dQ.
  assert len(re.findall(r"custom_call @__gpu\$xla\.gpu\.triton", text)) == 3
