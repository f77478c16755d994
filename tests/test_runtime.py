import os
import subprocess
import sys

import pytest
from conftest import REPO

from fairskin.runtime import configure_worker, init_ray, seed_everything

pytestmark = pytest.mark.ray


def test_init_joins_the_cluster_named_by_ray_address(ray_session):
    import ray

    resources = init_ray()
    assert ray.get_runtime_context().gcs_address.endswith(ray_session["address"].split(":")[1])
    assert resources["CPU"] == ray_session["num_cpus"]  # what the head was started with


def test_workers_get_threads_from_the_cpus_they_hold(ray_session):
    import ray

    @ray.remote
    def probe():
        import torch

        threads = configure_worker(seed=5)
        return threads, torch.get_num_threads(), os.environ["OMP_NUM_THREADS"], float(torch.rand(1))

    half = ray.get(probe.options(num_cpus=0.5).remote())
    two = ray.get(probe.options(num_cpus=2).remote())
    assert half[:3] == (1, 1, "1") and two[:3] == (2, 2, "2")
    assert half[3] == two[3]  # seeded identically


def test_without_ray_address_a_private_local_cluster_is_started(ray_session, tmp_path):
    script = (
        "import ray\n"
        "from fairskin.config import build_config\n"
        "from fairskin.runtime import init_ray\n"
        "res = init_ray(build_config('smoke', overrides=['runtime.num_cpus=1']))\n"
        "print('GCS', ray.get_runtime_context().gcs_address, 'CPU', res['CPU'])\n"
        "seen = ray.get(ray.remote(lambda: __import__('os').environ.get('RAY_ADDRESS')).options(num_cpus=0).remote())\n"
        "print('WORKER_RAY_ADDRESS', seen)\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("GCS")][0]
    assert ray_session["address"].split(":")[1] not in line.split()[1]  # not the session's head
    assert line.endswith("CPU 1.0")
    # Its workers know their own cluster (Ray Train's PlacementGroupCleaner looks its controller up with no address:
    # with several clusters on a machine it failed, or asked another cluster and removed the fit's placement group).
    port = line.split()[1].rsplit(":", 1)[1]
    worker = [ln for ln in out.stdout.splitlines() if ln.startswith("WORKER_RAY_ADDRESS")][0]
    assert worker == f"WORKER_RAY_ADDRESS 127.0.0.1:{port}"


def test_seed_everything_fixes_numpy_and_torch():
    import numpy as np
    import torch

    seed_everything(3)
    a = (np.random.rand(), float(torch.rand(1)))
    seed_everything(3)
    assert a == (np.random.rand(), float(torch.rand(1)))


def _driver_seeing_a_raylet_warning(verbose: bool) -> subprocess.CompletedProcess:
    """A quiet (or verbose) driver joins the session's head; the cluster pushes one warning to every driver,
    the way the raylet warns about worker start-up; the driver prints its last line and leaves."""
    script = (
        "import time, ray\n"
        "from fairskin.config import build_config\n"
        "from fairskin.runtime import init_ray, quiet_console, ray_logs_dir, ray_messages_log\n"
        f"config = build_config('smoke', overrides=['runtime.verbose={str(verbose).lower()}'])\n"
        "quiet_console(config.runtime.verbose)\n"
        "init_ray(config)\n"
        "from ray._private.utils import publish_error_to_driver\n"
        "gcs = ray._private.worker.global_worker.gcs_client\n"
        "publish_error_to_driver('worker_pool_large', 'WARNING: 12 PYTHON worker processes (test)', gcs)\n"
        "time.sleep(3)\n"
        "print('LAST LINE', ray_messages_log())\n"
        "ray.shutdown()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )


def test_a_quiet_driver_writes_the_clusters_warnings_to_a_log_not_the_console(ray_session):
    """CI stop 19: a raylet warning ("12 PYTHON worker processes have been started ...") reached a quiet job's
    console after its summary. Ray's driver prints pushed cluster messages from a thread even with
    log_to_driver=False; a quiet driver keeps them in a file in the Ray logs folder, a verbose one shows them."""
    out = _driver_seeing_a_raylet_warning(verbose=False)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "12 PYTHON worker processes (test)" not in out.stdout, out.stdout[-3000:]
    (last,) = [line for line in out.stdout.splitlines() if line.startswith("LAST LINE")]
    log = last.split(" ", 2)[2]
    assert "12 PYTHON worker processes (test)" in open(log).read()
    loud = _driver_seeing_a_raylet_warning(verbose=True)
    assert loud.returncode == 0, loud.stdout[-3000:]
    assert any("(raylet)" in line and "12 PYTHON worker processes (test)" in line for line in loud.stdout.splitlines())
