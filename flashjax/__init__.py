"""flashjax: exact, fused, IO-aware attention for JAX, written as Pallas kernels.

``flashjax.attention(q, k, v, *, causal, q_segment_ids, window, softcap, scale)``
over ``[batch, seq, heads, head_dim]``, the layout of
``jax.nn.dot_product_attention``.
"""

from flashjax import fp8
from flashjax.api import attention, explain
from flashjax.config import Blocks, Config, MosaicBlocks, default_config

__all__ = ["Blocks", "Config", "MosaicBlocks", "attention", "default_config",
           "explain", "fp8"]
__version__ = "0.1.0"
