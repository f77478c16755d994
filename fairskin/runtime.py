"""Process runtime: joining or starting Ray, seeding, and thread counts.

Every entry point calls :func:`init_ray` once. It joins the cluster named by
``RAY_ADDRESS`` (as set under ``ray job submit`` or by the test fixture) or, when unset,
starts a private local cluster with ``address="local"``: a bare ``ray.init()`` would
attach to any other cluster that happens to run on the machine.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import numpy as np

from fairskin.config import FairSkinConfig


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency, but keep data tools importable
        pass


def set_thread_count(num_threads: int) -> int:
    """Set OMP/MKL/torch intra-op threads to ``num_threads`` (>= 1); returns what was set."""
    num_threads = max(1, int(num_threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(num_threads)
    try:
        import torch

        torch.set_num_threads(num_threads)
    except ImportError:  # pragma: no cover
        pass
    return num_threads


def threads_for_current_worker(default: int | None = None) -> int:
    """Threads matching the CPUs this Ray worker holds (rounded up), else ``default`` or all cores."""
    try:
        import ray

        if ray.is_initialized():
            held = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if held:
                return max(1, math.ceil(held))
    except Exception:  # not inside a Ray worker
        pass
    return default or os.cpu_count() or 1


def init_ray(config: FairSkinConfig | None = None, **kwargs: Any) -> dict[str, float]:
    """Join ``RAY_ADDRESS`` or start a quiet private local cluster; returns cluster resources.

    Idempotent: a process already connected keeps its connection.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        common = {"log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
        common.update(kwargs)
        if address:
            # Under `ray job submit` RAY_ADDRESS is set; ray.init() with no address joins it.
            ray.init(**common)
        else:
            num_cpus = (config.runtime.num_cpus if config is not None else None) or os.cpu_count() or 1
            # The dashboard also serves the state API that Ray Train's controller polls.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     **common)
    _quiet_ray_data(config)
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def _quiet_ray_data(config: FairSkinConfig | None) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    show = bool(config.runtime.progress) if config is not None else False
    ctx.enable_progress_bars = show
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


def configure_worker(seed: int | None = None, default_threads: int | None = None) -> int:
    """Call at the top of a Ray task, actor or Train worker: threads from the CPUs it holds, then seed.

    Returns the thread count set.
    """
    threads = set_thread_count(threads_for_current_worker(default_threads))
    if seed is not None:
        seed_everything(seed)
    return threads
