"""Hopper (sm_90) kernels written with Pallas Mosaic GPU: TMA, wgmma, warp
specialisation. ``forward`` is the flash-attention forward; the backward of
``backend="mosaic"`` is still the portable Triton-lowered one."""

from pallas_kernels.mosaic.fwd import forward

__all__ = ["forward"]
