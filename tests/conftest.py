import os
import sys

from flashjax.config import MOSAIC_COMPUTE_WGS

# tests import their harness as a top-level module.
sys.path.insert(0, os.path.dirname(__file__))

# Mosaic GPU's CPU interpreter runs each warpgroup of a CTA as its own XLA:CPU
# program on its own host thread, and a barrier wait blocks inside a host
# callback. XLA may run that callback on a thread of its CPU intra-op pool
# (NPROC threads; default: the core count). When the pool has fewer threads
# than the warpgroups that can block at once, the warpgroup that would release
# them never gets a thread: on a 2-core host the forward with packed segment
# ids (GQA, causal, window) hung with both compute warpgroups waiting for the
# producer's first K/V tile, which the producer never issued. A thread per
# warpgroup of a cluster's two CTAs (the forward's ``multicast``: they wait on
# each other's releases) plus one for the program that launched the kernel;
# this must be set before JAX creates its CPU client.
INTERPRETER_THREADS = 2 * (MOSAIC_COMPUTE_WGS + 1) + 1
os.environ["NPROC"] = str(max(int(os.environ.get("NPROC", 0)),
                              os.cpu_count() or 1, INTERPRETER_THREADS))
