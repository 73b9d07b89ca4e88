"""How much CPU one predict-blocks worker uses: its threads follow its CPU allocation, as a pod's do.

A worker left alone runs torch, onnxruntime and GDAL with one thread per core of the machine; two workers on one
machine then fight over the same cores and together go slower than one. So each worker sets its threads from
`mapping.cpu_per_worker` (the task's cpu request/limit in the compiled pipeline), else from its CPU quota (the
cgroup limit a Kubernetes pod has), else from the machine's cores shared by `mapping.parallelism` workers (a local
run, where kfp.local starts that many at once).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
from pathlib import Path

from lulc_core.config import MappingConfig

log = logging.getLogger(__name__)

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GDAL_NUM_THREADS")


def cpu_quota() -> float | None:
    """CPUs this process may use by its cgroup (a pod's cpu limit), None without a limit."""
    try:
        if CGROUP_V2.is_file():
            quota, period = CGROUP_V2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_s, period_s = (p.read_text().strip() for p in CGROUP_V1)
        return None if int(quota_s) <= 0 else int(quota_s) / int(period_s)
    except (OSError, ValueError):
        return None


def worker_threads(mapping: MappingConfig) -> int:
    """Threads of one worker: cpu_per_worker, else the cgroup quota, else cores // parallelism (at least 1)."""
    cpus = mapping.cpu_per_worker or cpu_quota()
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) // mapping.parallelism
    return max(1, math.floor(cpus))


def limit_threads(threads: int) -> None:
    """Run torch (and onnxruntime, which follows torch's thread count here), OpenMP/BLAS and GDAL on `threads`."""
    import torch

    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work; a worker starts fresh
        torch.set_num_interop_threads(1)
    log.info("worker threads: %d", threads)


def peak_rss_mb() -> float:
    """Peak resident set size of this worker so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
