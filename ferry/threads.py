"""OpenMP settings for the processes ferry starts (CLI commands, benchmarks), applied before torch loads.

torch's CPU kernels run on GNU OpenMP, whose idle worker threads spin (busy-wait) between parallel
regions by default. A decode step is hundreds of small parallel regions, so with 2 threads on a shared
machine the spinning worker competes with the thread doing the work and with every other process:
measured on the 2-core bench machine under load, 2 threads decoded at 225 target tokens per CPU second
with spinning and 696 with ``OMP_WAIT_POLICY=PASSIVE`` (docs/benchmarks.md). Lowering
``GOMP_SPINCOUNT`` instead did not help (221).
"""

from __future__ import annotations

import os

OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Set when the environment does not set them already (``OMP_WAIT_POLICY=ACTIVE`` restores spinning)."""


def configure_openmp() -> None:
    """Apply ``OPENMP_DEFAULTS`` to this process's environment. Only effective before ``import torch``
    (OpenMP reads it once, when the runtime starts), and inherited by child processes."""
    for name, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(name, value)
