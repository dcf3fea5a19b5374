"""Hopper (sm_90) kernels written with Pallas Mosaic GPU: TMA, wgmma, warp
specialisation. ``forward`` writes O and L; ``backward`` runs dQ and dK/dV;
``kernel_name`` / ``kernel_names`` name the kernels as profilers show them."""

from pallas_kernels.mosaic.bwd import backward, kernel_names
from pallas_kernels.mosaic.fwd import forward, kernel_name

__all__ = ["backward", "forward", "kernel_name", "kernel_names"]
