"""Pallas attention kernels: ``triton/`` (portable, Triton-lowered) and shared tile math."""
