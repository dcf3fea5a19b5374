"""Hopper (sm_90) kernels written with Pallas Mosaic GPU: TMA, wgmma, warp
specialisation. ``forward`` writes O and L; ``backward`` runs dQ and dK/dV."""

from pallas_kernels.mosaic.bwd import backward
from pallas_kernels.mosaic.fwd import forward

__all__ = ["backward", "forward"]
