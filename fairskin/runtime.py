"""Process runtime: joining or starting Ray, seeding, and thread counts.

Every entry point calls :func:`init_ray` once. It joins the cluster named by
``RAY_ADDRESS`` (as set under ``ray job submit`` or by the test fixture) or, when unset,
starts a private local cluster with ``address="local"``: a bare ``ray.init()`` would
attach to any other cluster that happens to run on the machine.

Ray's token authentication stays on: a new local cluster uses Ray's default (token mode,
the token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, made
there if none exists); joining a cluster follows ``RAY_AUTH_MODE`` and the same token
sources (under ``ray job submit`` the job inherits the head's).

The console is quiet by default (:func:`quiet_console`): the engine's own progress and
summary only. Ray's worker logs stay in the Ray session's log files (:func:`ray_logs_dir`)
instead of being forwarded to the driver, the messages the cluster pushes to the driver and Tune's
driver warnings go to :func:`ray_messages_log`, Ray Data's progress bars are off, and library
progress bars and INFO logs are off; ``runtime.verbose`` shows them all.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
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


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def set_thread_count(num_threads: int) -> int:
    """Set OMP/MKL/torch intra-op threads to ``num_threads`` (>= 1); returns what was set."""
    num_threads = max(1, int(num_threads))
    for var in _THREAD_VARIABLES:
        os.environ[var] = str(num_threads)
    try:
        import torch

        torch.set_num_threads(num_threads)
    except ImportError:  # pragma: no cover
        pass
    return num_threads


@contextlib.contextmanager
def thread_count_restored() -> Iterator[None]:
    """Restore this process's torch thread count and the OMP/MKL/OpenBLAS variables on exit: work that runs a
    Ray worker's code in the driver (``diffusion.trainer`` / ``generation.executor`` = ``in_process``) sets the
    worker's thread count, which belongs to the whole process."""
    import torch

    threads, variables = torch.get_num_threads(), {v: os.environ.get(v) for v in _THREAD_VARIABLES}
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for var, value in variables.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


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


@contextlib.contextmanager
def keeping_signal_handlers() -> Iterator[None]:
    """Run a Ray ``fit()`` and then put back this process's SIGINT and SIGUSR1 handlers.

    On the main thread, ``Tuner.fit()`` and Ray Train's ``TorchTrainer.fit()`` install their own SIGINT handler
    (a graceful stop of that fit) and leave it installed when the fit ends: Tune restores the previous handler
    only once a SIGINT has arrived, Train never. A Ctrl-C in any later stage or look of the same process then only
    sets the finished fit's stop flag and the process goes on. Off the main thread neither installs one."""
    main = threading.current_thread() is threading.main_thread()
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)} if main else {}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:  # None: installed outside Python, cannot be put back
                signal.signal(sig, handler)


def _verbose(config: FairSkinConfig | None) -> bool:
    return bool(config.runtime.verbose) if config is not None else False


# Environment the engine's processes (and, for a local cluster, every Ray worker) start with when quiet.
_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables..."
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    # A generator study keeps one checkpoint per trial (CheckpointConfig(num_to_keep=1)), which makes Tune
    # snapshot the experiment at every checkpoint (what --resume restores from) and warn about it each time.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def quiet_console(verbose: bool = False) -> None:
    """Keep library progress bars and INFO logs off the console (unless ``verbose``).

    Call it first thing in an entry point: the environment variables reach libraries imported later
    and the Ray workers of a local cluster started later; libraries already imported are told directly.
    Values already in the environment are kept (a user's own choice wins).
    """
    if verbose:
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import sys

    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            with contextlib.suppress(Exception):
                utils_logging = __import__(f"{name}.utils.logging", fromlist=["disable_progress_bar"])
                utils_logging.disable_progress_bar()
                utils_logging.set_verbosity_error()
    with contextlib.suppress(Exception):
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _local_cluster_address() -> Iterator[None]:
    """While a local cluster starts, give it a chosen GCS port and put its address in ``RAY_ADDRESS``.

    The cluster's processes inherit the environment, so every Ray worker knows its own cluster. Without
    it, Ray Train's ``PlacementGroupCleaner`` looks its controller up through the state API with no
    address, which on a machine running several Ray clusters fails ("Found multiple active Ray
    instances", a traceback on the console) or, worse, finds another cluster named in
    ``/tmp/ray/ray_current_cluster``, where the controller does not exist, and removes the fit's
    placement group. ``address="local"`` ignores ``RAY_ADDRESS``; this process's own environment is
    restored afterwards.
    """
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    port = _free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def init_ray(config: FairSkinConfig | None = None, **kwargs: Any) -> dict[str, float]:
    """Join ``RAY_ADDRESS`` or start a quiet private local cluster; returns cluster resources.

    Idempotent: a process already connected keeps its connection. Worker logs reach the console only
    with ``runtime.verbose`` (they are always in :func:`ray_logs_dir`).
    """
    import ray

    verbose = _verbose(config)
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        common = {
            "log_to_driver": verbose,
            "configure_logging": True,
            "logging_level": "INFO" if verbose else "WARNING",
        }
        common.update(kwargs)
        if address:
            # Under `ray job submit` RAY_ADDRESS is set; ray.init() with no address joins it.
            ray.init(**common)
        else:
            # Ray's default for a new local cluster is token authentication (RAY_AUTH_MODE unset): it makes a
            # token in ~/.ray/auth_token when no RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / file holds one. Its
            # "Set RAY_AUTH_MODE=disabled to opt out" notice is kept off a quiet console.
            if not verbose:
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            num_cpus = (config.runtime.num_cpus if config is not None else None) or os.cpu_count() or 1
            # The dashboard also serves the state API that Ray Train's controller polls.
            with _local_cluster_address():
                ray.init(
                    address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **common
                )
    if not verbose:
        _cluster_messages_to_log()
    tune_warnings_to_log(not verbose)
    _quiet_ray_data(config)
    return {k: float(v) for k, v in ray.cluster_resources().items()}


# Set when the pipeline is interrupted while a background stage runs: its waits on Ray check it, cancel
# their tasks and raise (fairskin.pipeline.run_in_order).
background_stop = threading.Event()

RAY_MESSAGES_LOG = "fairskin-cluster-messages.log"
_messages_lock = threading.Lock()
_messages_seen = 0


def ray_messages_log() -> str | None:
    """The file where a quiet driver keeps the messages the cluster pushes to it, or None when Ray is off."""
    logs = ray_logs_dir()
    return os.path.join(logs, RAY_MESSAGES_LOG) if logs else None


def ray_messages_count() -> int:
    """How many cluster messages this quiet driver has written to :func:`ray_messages_log`."""
    return _messages_seen


def _cluster_messages_to_log() -> None:
    """Send the messages the cluster pushes to this driver (the raylet's "N PYTHON worker processes have been
    started ..." warning, a dead actor's notice) to :func:`ray_messages_log` instead of the console.

    Ray's driver prints them from its ``listen_error_messages`` thread whatever ``log_to_driver`` says,
    at any moment, also after a job's closing summary. That thread looks ``print_to_stdstream`` up in
    its module at each message, so replacing the module's function reroutes it; worker output (which
    only reaches the driver with ``log_to_driver``) still goes to the original.
    """
    import ray._private.worker as ray_worker

    original = getattr(ray_worker.print_to_stdstream, "__wrapped__", ray_worker.print_to_stdstream)

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        global _messages_seen
        path = ray_messages_log()
        if data.get("pid") != "raylet" or path is None:
            original(data, ignore_prefix)
            return
        with _messages_lock, open(path, "a", encoding="utf-8") as log:
            for line in data.get("lines", []):
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            _messages_seen += 1

    print_to_stdstream.__wrapped__ = original  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


TUNE_LOGGER = "ray.tune"


class _TuneWarningsToLog(logging.Handler):
    """Tune's driver records below ERROR (``The `callbacks.on_trial_result` operation took 0.748 s, which may
    be a performance bottleneck`` and the like) into :func:`ray_messages_log`; ERROR and above, and every
    record while no Ray session is up, go on to the ``ray`` logger's handlers (the console) as before."""

    def emit(self, record: logging.LogRecord) -> None:
        global _messages_seen
        path = ray_messages_log()
        if record.levelno >= logging.ERROR or path is None:
            logging.getLogger("ray").handle(record)
            return
        try:
            text = record.getMessage()
            with _messages_lock, open(path, "a", encoding="utf-8") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {record.levelname} {record.name}: {text}\n")
                _messages_seen += 1
        except Exception:  # never fail the driver over a log line
            self.handleError(record)


def tune_warnings_to_log(enabled: bool = True) -> None:
    """Route the ``ray.tune`` logger's records below ERROR to :func:`ray_messages_log` (``enabled``), or give
    them back to the console (not ``enabled``: ``runtime.verbose``).

    The driver's Tune controller warns through ``ray.tune`` loggers, whose records propagate to the ``ray``
    logger's console handler (Ray's ``logging_level`` of WARNING lets them through). A quiet driver gives
    ``ray.tune`` a handler of its own that writes them to the file and no longer propagates: the closing
    summary names the file and counts them with the cluster's messages. Idempotent."""
    logger = logging.getLogger(TUNE_LOGGER)
    ours = [h for h in logger.handlers if isinstance(h, _TuneWarningsToLog)]
    if enabled and not ours:
        logger.addHandler(_TuneWarningsToLog())
        logger.propagate = False
    elif not enabled and ours:
        for handler in ours:
            logger.removeHandler(handler)
        logger.propagate = True


def ray_logs_dir() -> str | None:
    """The Ray session's log folder on this node (worker stdout/stderr), or None when Ray is not running."""
    try:
        import ray

        if ray.is_initialized():
            return ray._private.worker.global_worker.node.get_logs_dir_path()
    except Exception:  # a private attribute: never fail the caller over it
        pass
    return None


def _quiet_ray_data(config: FairSkinConfig | None) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    verbose = _verbose(config)
    # Ray Data's bars would interleave with the engine's own: shown only when verbose.
    ctx.enable_progress_bars = verbose
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # "Progress bars disabled. To enable, ..." and "A new progress UI is available" notices.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def configure_worker(seed: int | None = None, default_threads: int | None = None) -> int:
    """Call at the top of a Ray task, actor or Train worker: threads from the CPUs it holds, then seed.

    Returns the thread count set.
    """
    threads = set_thread_count(threads_for_current_worker(default_threads))
    if seed is not None:
        seed_everything(seed)
    return threads
