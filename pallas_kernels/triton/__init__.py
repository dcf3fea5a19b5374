"""Portable flash-attention kernels, lowered through Pallas' Triton backend.

``forward`` writes O and L; ``backward`` runs the dQ and dK/dV kernels.
Both run compiled on a GPU and with ``interpret=True`` on the CPU.
"""

from pallas_kernels.triton.bwd import backward
from pallas_kernels.triton.fwd import forward

__all__ = ["backward", "forward"]
