"""BlockSpecs and compiler params shared by the Triton-lowered kernels.

Arrays keep the ``[batch, seq, heads, head_dim]`` layout of the API; the kernels'
BlockSpecs pick rows of one head (the batch and head axes squeezed away).
"""

from __future__ import annotations

from jax import lax
from jax.experimental.pallas import triton as plgpu

from flashjax.checks import Plan
from flashjax.config import Blocks


def compiler_params(blocks: Blocks) -> plgpu.CompilerParams:
  return plgpu.CompilerParams(num_warps=blocks.num_warps,
                              num_stages=blocks.num_stages)


def precision(plan: Plan):
  """float32 inputs are multiplied exactly (no TF32); 16-bit ones natively."""
  return lax.Precision.HIGHEST if plan.dtype == "float32" else None

