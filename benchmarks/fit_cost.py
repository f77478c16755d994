"""What one Ray Train fine-tune costs on this machine, beyond its steps: wall time and CPU of every process.

    python benchmarks/fit_cost.py [--quick] [--repeats R] [--intervals 0.5 2.0]

The smoke preset's fit (``finetune_variant``: fairskin_s, 8 steps, 1 worker of 0.5 CPU, no MLflow), on a
private local Ray of 2 CPUs, after one warm-up fit. Each fit is timed with the CPU the whole machine spent
meanwhile (``/proc/stat``: user + nice + system), the driver's own CPU, and the CPU of each process that lived
during it (sampled from ``/proc`` every 0.2 s, grouped by Ray's process title: the Train controller, the worker,
Train's helper actors). The fits alternate between the values of Ray Train's controller poll interval
(``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, which the driver passes on to each fit's controller), so slow drifts of
a shared machine hit each value alike; each figure is the median over ``--repeats`` fits, and the ratio of the
last interval's figure to the first's is given per repeat pair (median).

This is what the test suite pays per fit (tests/conftest.py polls every 0.5 s; docs/usage/testing.md). The last
line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent (user + nice + system) since boot."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system


class ProcessSampler(threading.Thread):
    """CPU seconds (user + system) of every process seen while running, by (pid, start time), with its latest title
    (Ray renames a worker when it takes an actor); a process started while sampling counts from its start, and one
    that ends between two samples loses up to one period of its CPU."""

    def __init__(self, period_s: float = 0.2):
        super().__init__(daemon=True)
        self.period_s, self.seen, self.stopped = period_s, {}, threading.Event()

    def run(self) -> None:
        began = time.time()
        while not self.stopped.is_set():
            for proc in psutil.process_iter(["cpu_times", "cmdline", "create_time"]):
                info = proc.info
                if info["cpu_times"] is None:  # gone, or not ours to read
                    continue
                cpu = info["cpu_times"].user + info["cpu_times"].system
                title = " ".join(info["cmdline"] or [])
                key = (proc.pid, info["create_time"])
                first = self.seen[key][0] if key in self.seen else (0.0 if info["create_time"] > began else cpu)
                self.seen[key] = (first, title or self.seen.get(key, (0, ""))[1], cpu)
            self.stopped.wait(self.period_s)

    def by_kind(self) -> dict[str, float]:
        """CPU seconds spent while sampling, by process kind (Ray's title, or 'other')."""
        kinds: dict[str, float] = defaultdict(float)
        for first, title, last in self.seen.values():
            kind = title.split()[0].split(".")[0] if title.startswith("ray::") else "other"
            kinds[kind] += last - first
        return dict(kinds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one fit per interval")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--intervals", type=float, nargs="+", default=[0.5, 2.0])
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # as the tests run it

    import ray

    from fairskin.config import build_config
    from fairskin.data.stream import decode_local
    from fairskin.diffusion.finetune import finetune_variant
    from fairskin.methods import method_spec
    from fairskin.pipeline import run_pipeline
    from fairskin.pipeline.stages.base import base_pipeline_folder

    root = Path(tempfile.mkdtemp(prefix="fit-cost-"))
    try:
        config = build_config("smoke", overrides=[f"runtime.runs_root={root}", "diffusion.cpus_per_worker=0.5"])
        print("making the smoke base (prepare, vae, base) ...", flush=True)
        results = run_pipeline(config, stages=["base"], echo=lambda *_: None).results
        base = base_pipeline_folder(results["base"])
        train = decode_local(results["prepare"].path / "shards")
        d = config.diffusion.model_copy(update={"max_steps": 8, "checkpoint_every": 3, "num_workers": 1})
        config = config.model_copy(update={"diffusion": d})
        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

        def fit(n: int, interval: float) -> dict:
            os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(interval)
            sampler = ProcessSampler()
            sampler.start()
            time.sleep(0.5)  # a first sample of every live process
            machine, wall, driver = machine_cpu_s(), time.time(), time.process_time()
            finetune_variant(config, method_spec("fairskin_s"), base, train, root / f"fit-{n}")
            figures = {
                "interval_s": interval,
                "wall_s": time.time() - wall,
                "machine_cpu_s": machine_cpu_s() - machine,
                "driver_cpu_s": time.process_time() - driver,
            }
            time.sleep(2)  # the fit's actors end
            sampler.stopped.set()
            sampler.join()
            figures["by_process_cpu_s"] = {k: round(v, 2) for k, v in sorted(sampler.by_kind().items())}
            return figures

        fit(0, args.intervals[0])  # warm-up: imports, the first actors' workers
        runs: list[dict] = []
        for r in range(repeats):
            order = args.intervals if r % 2 == 0 else args.intervals[::-1]
            for interval in order:
                runs.append(fit(len(runs) + 1, interval))
                row = runs[-1]
                print(
                    f"fit {len(runs)} (poll {interval} s): wall {row['wall_s']:.1f} s, machine CPU "
                    f"{row['machine_cpu_s']:.1f} s, driver {row['driver_cpu_s']:.1f} s; {row['by_process_cpu_s']}",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary: dict = {"benchmark": "fit_cost", "repeats": repeats, "steps": 8, "intervals": {}}
    for interval in args.intervals:
        mine = [r for r in runs if r["interval_s"] == interval]
        summary["intervals"][str(interval)] = {
            key: round(statistics.median(r[key] for r in mine), 2)
            for key in ("wall_s", "machine_cpu_s", "driver_cpu_s")
        }
        kinds = {k for r in mine for k in r["by_process_cpu_s"]}
        summary["intervals"][str(interval)]["by_process_cpu_s"] = {
            k: round(statistics.median(r["by_process_cpu_s"].get(k, 0.0) for r in mine), 2) for k in sorted(kinds)
        }
    first, last = args.intervals[0], args.intervals[-1]
    pairs = list(zip([r for r in runs if r["interval_s"] == first], [r for r in runs if r["interval_s"] == last]))
    for key in ("wall_s", "machine_cpu_s"):
        summary[f"{key}_ratio_{last}_vs_{first}"] = round(statistics.median(b[key] / a[key] for a, b in pairs), 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
