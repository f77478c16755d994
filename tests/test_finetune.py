"""Level 2 on Ray Train at smoke size: 2-worker DDP with an injected failure, resume equality, and
fine-tunes that survive kills: the pipeline killed (SIGKILL, then Ctrl-C) during `finetune` and rerun,
and a Ray Train worker process killed mid-fit, each ending with the weights of an uninterrupted run
(the same loop alone in the test process, bit for bit) and with every step in MLflow exactly once."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from faults import FailOnceAt, StepPause
from mlflow import MlflowClient

from fairskin.config import build_config
from fairskin.data.stream import decode_local
from fairskin.diffusion import finetune
from fairskin.diffusion.base import subclass_prompts
from fairskin.diffusion.finetune import STATE_FILE, cache_training_set, finetune_variant, latest_state
from fairskin.diffusion.losses import training_loss
from fairskin.diffusion.models import load_sd
from fairskin.methods import method_spec as get_variant
from fairskin.pipeline import run_pipeline
from fairskin.pipeline.stages.base import base_pipeline_folder
from fairskin.tracking import Tracker

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def smoke_base(tmp_path_factory, ray_session, smoke_stages):
    """The smoke base (prepare, vae and base reused from the session's upstream stages) in this module's runs root."""
    root = smoke_stages(tmp_path_factory.mktemp("ft") / "runs")
    config = build_config(
        "smoke", overrides=[f"runtime.runs_root={root}", "diffusion.cpus_per_worker=0.5", "diffusion.max_failures=1"]
    )
    results = run_pipeline(config, stages=["base"], echo=lambda *_: None).results
    train = decode_local(results["prepare"].path / "shards")
    return config, base_pipeline_folder(results["base"]), train


STRAIGHT = {"max_steps": 8, "checkpoint_every": 3, "num_workers": 1}


def _with(config, **diffusion):
    return config.model_copy(update={"diffusion": config.diffusion.model_copy(update=diffusion)})


@pytest.fixture(scope="module")
def straight(smoke_base):
    """UNet weights of the module's reference: an uninterrupted 8-step fine-tune of fairskin_s alone, run in this
    process by the loop a generator trial runs (:func:`fairskin.diffusion.loop.fine_tune` over the same level-1
    plan, one thread as a half-CPU Train worker has: float sums depend on the thread count). Every Ray Train fit
    below (at once with another, failed, killed, interrupted, resumed) must end with these weights, bit for bit:
    the Train worker runs the same loop, so any drift is the fit's doing."""
    from diffusers import DDPMScheduler

    from fairskin.data.sampling import WeightedSampler
    from fairskin.data.stream import RunPlan
    from fairskin.diffusion.finetune import cache_for
    from fairskin.diffusion.loop import fine_tune, in_process_feed, load_trainee, loss_settings
    from fairskin.diffusion.variants import generator_seed

    config, base, train = smoke_base
    d = _with(config, **STRAIGHT).diffusion
    variant = get_variant("fairskin_s", apply="sampler")
    seed = generator_seed(d, "fairskin_s")
    rows, cond = cache_for(config, base, train)
    arrays = rows.arrays()
    dump = d.model_dump(mode="json")
    trainee, _ = load_trainee(str(base), None, dump, "cpu")
    scheduler = DDPMScheduler.from_pretrained(str(base), subfolder="scheduler")
    plan = RunPlan(WeightedSampler(arrays["subclass"], variant.weights, variant.apply, seed))
    loss = loss_settings(variant.model_dump(), dump)
    feed = in_process_feed(
        plan,
        arrays,
        torch.from_numpy(cond),
        start=0,
        seed=seed,
        d=dump,
        loss=loss,
        num_train_timesteps=scheduler.config.num_train_timesteps,
        device="cpu",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done = [n for n, _, _ in fine_tune(trainee, scheduler, feed, d=dump, loss=loss)]
    finally:
        torch.set_num_threads(threads)
    assert done == list(range(1, d.max_steps + 1))
    return {k: v.detach().clone() for k, v in trainee.unet.state_dict().items()}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fixed_batch_loss(unet_folder, base, train, config):
    """Noise loss of a UNet on one fixed batch (fixed rows, noise, timesteps; no regulariser)."""
    parts = load_sd(str(base))
    if unet_folder is not None:
        parts = load_sd(str(unet_folder))
    rows, cond = cache_training_set(
        parts, train, subclass_prompts(config.diffusion.prompt_template, train.groups, train.diseases)
    )
    g = torch.Generator().manual_seed(123)
    idx = torch.randint(0, len(train), (32,), generator=g).numpy()
    latents = torch.from_numpy(rows.columns["latents"][idx, 0])
    with torch.no_grad():
        out = training_loss(
            parts.unet,
            parts.noise_scheduler,
            latents,
            torch.from_numpy(cond)[train.subclass_id[idx]],
            None,
            torch.ones(32),
            noise=torch.randn(latents.shape, generator=g),
            timesteps=torch.randint(100, 900, (32,), generator=g),
            use_cbdm=False,
        )
    return float(out.loss)


def _attempts(rows: list[dict]) -> list[list[dict]]:
    """A worker's probe rows split into attempts: a step not after the one before starts a new attempt."""
    attempts: list[list[dict]] = []
    for row in rows:
        if not attempts or row["step"] <= attempts[-1][-1]["step"]:
            attempts.append([])
        attempts[-1].append(row)
    return attempts


def test_two_workers_recover_from_a_failure_log_each_step_once_and_hold_the_same_sigma(smoke_base, tmp_path):
    """fairskin_s with FairDiffusion's perturbation (window 4: Bayesian steps at 4 and 8) on two Ray Train workers,
    rank 0 failing once before step 6 (after the step-4 checkpoint): the fit retries from step 4 and ends; every
    step is in MLflow once; before every step of both attempts both workers hold the same sigma (rank 0 decides and
    broadcasts; y from the all-reduced group losses), sigma moves every step, and the retry starts from the sigma
    the checkpoint holds; the result trained and samples."""
    from diffusers import StableDiffusionPipeline
    from faults import HookStateProbe

    from fairskin.methods import check_hooks

    config, base, train = smoke_base
    config = config.model_copy(
        update={
            "diffusion": config.diffusion.model_copy(
                update={"max_steps": 12, "checkpoint_every": 4, "num_workers": 2, "learning_rate": 3e-3}
            )
        }
    )
    variant = check_hooks(get_variant("fairskin_s").model_copy(update={"hooks": {"fairdiffusion": {"window": 4}}}))
    probe = tmp_path / "probe"
    probe.mkdir()
    tracker = Tracker.from_config(config, experiment="finetune-test")
    run = tracker.start("fairskin_s")
    # This process's own Ctrl-C handler, to see that it survives the fit: Ray Train's fit() installs its own on the
    # main thread and never puts the previous one back (a Ctrl-C in a later stage then only aborted a finished fit).
    assert threading.current_thread() is threading.main_thread()
    interrupts = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupts.append(1))
    try:
        summary = finetune_variant(
            config,
            variant,
            base,
            train,
            tmp_path / "fairskin_s",
            tracking={"uri": tracker.tracking_uri, "run_id": run.run_id},
            # The probe first: both ranks record step 6 before rank 0 fails there.
            step_hooks=[HookStateProbe(str(probe)), FailOnceAt(6, str(tmp_path / "failed_once"))],
        )
        signal.raise_signal(signal.SIGINT)
        assert interrupts == [1]  # ours, not Ray Train's
    finally:
        signal.signal(signal.SIGINT, previous)
    assert summary["steps"] == 12 and summary["workers"] == 2 and summary["attempts"] == 2
    assert np.isfinite(summary["final_loss"])
    history = MlflowClient(tracker.tracking_uri).get_metric_history(run.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 13))  # steps 5-6 re-ran, logged once
    regulariser = MlflowClient(tracker.tracking_uri).get_metric_history(run.run_id, "regulariser")
    assert any(m.value > 0 for m in regulariser)  # CBDM is on for fairskin_s
    folder = tmp_path / "fairskin_s" / "pipeline"
    before = _fixed_batch_loss(None, base, train, config)
    after = _fixed_batch_loss(folder, base, train, config)
    assert np.isfinite(after) and after < before
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    images = pipe(
        ["African people psoriasis"],
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()

    ranks = [
        _attempts([json.loads(line) for line in (probe / f"rank{r}.jsonl").read_text().splitlines()]) for r in (0, 1)
    ]
    assert [[row["step"] for row in attempt] for attempt in ranks[0]] == [list(range(7)), list(range(4, 12))]
    assert [[row["step"] for row in attempt] for attempt in ranks[1]] == [list(range(7)), list(range(4, 12))]
    for first, second in zip(*ranks):
        for a, b in zip(first, second):
            assert len(a["sigma"]) == len(b["sigma"]) == 1 and a["sigma"] == b["sigma"], a["step"]
        assert len({tuple(row["sigma"][0]) for row in first}) == len(first)  # it moves every step
    assert ranks[0][1][0]["sigma"] == ranks[0][0][4]["sigma"]  # the retry resumed the checkpoint's sigma


def test_variants_fine_tuned_at_once_on_ray_train_end_as_the_in_process_loop_alone(smoke_base, straight, tmp_path):
    """fairskin_s and a custom variant with its own steps and learning rate and both competitors' hooks (LoRA
    adapters under FairDiffusion's perturbation, whose sigma is state carried across steps) fine-tuned side by
    side on Ray Train (one shared latent cache, as the finetune stage runs ``diffusion.parallel_variants``): each
    runs its own steps on every training row; fairskin_s ends as the module's reference, the same loop run alone
    in this process (``straight``: what a generator study's trial runs), and the hooked variant as the in-process
    trainer's fit of it, adapters and last loss bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file

    from fairskin.diffusion.finetune import cache_for
    from fairskin.methods import check_hooks
    from fairskin.methods.spec import VariantSpec

    config, base, train = smoke_base
    config = _with(config, **STRAIGHT)
    hooks = {"lora": {}, "fairdiffusion": {"window": 2}}
    variants = {
        "fairskin_s": get_variant("fairskin_s", apply="sampler"),
        "short": check_hooks(VariantSpec(name="short", weights="sqrs", max_steps=3, learning_rate=5e-4, hooks=hooks)),
    }
    cache = cache_for(config, base, train)
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = {
            name: pool.submit(finetune_variant, config, variant, base, train, tmp_path / name, cache=cache)
            for name, variant in variants.items()
        }
        results = {name: job.result() for name, job in jobs.items()}
    assert (results["fairskin_s"]["steps"], results["short"]["steps"]) == (STRAIGHT["max_steps"], 3)
    assert results["fairskin_s"]["train_rows"] == results["short"]["train_rows"] == len(train)
    assert _same_weights(straight, load_sd(str(tmp_path / "fairskin_s" / "pipeline")).unet.state_dict())

    alone = finetune_variant(
        _with(config, trainer="in_process"), variants["short"], base, train, tmp_path / "alone", cache=cache
    )
    adapters = "pipeline/pytorch_lora_weights.safetensors"
    on_ray, in_process = load_file(tmp_path / "short" / adapters), load_file(tmp_path / "alone" / adapters)
    assert _same_weights(on_ray, in_process)
    up = [t for k, t in on_ray.items() if ".lora.up." in k]  # diffusers' names for peft's B, which starts at 0
    assert up and any(t.abs().max() > 0 for t in up)  # the adapters trained
    # The last step's loss is weighted by the sigma FairDiffusion's Bayesian step (window 2) chose after step 2.
    assert results["short"]["final_loss"] == alone["final_loss"]


def test_the_in_process_trainer_ends_as_ray_train_through_a_failure_a_stop_and_a_rerun(
    smoke_base, straight, tmp_path, monkeypatch
):
    """``diffusion.trainer = in_process``: the module's reference fine-tune run in this process, without Ray Train,
    fails once after its step-3 checkpoint (retried from it: max_failures = 1), is stopped through its stop file
    before step 7 (the stage's Ctrl-C: FitInterrupted, checkpoints kept), and the same call again continues from
    step 6. It ends with the reference weights, bit for bit (what lets the two trainers share a fine-tune key),
    every step in MLflow once, the two latest checkpoints in its own folder, torch's thread count as it was."""
    from fairskin.config import ConfigError

    def no_ray_train(*args, **kwargs):
        raise AssertionError("Ray Train was started")

    monkeypatch.setattr(finetune, "_trainer", no_ray_train)
    config, base, train = smoke_base
    config = _with(config, **STRAIGHT, trainer="in_process")
    variant = get_variant("fairskin_s", apply="sampler")
    tracker = Tracker.from_config(config, experiment="finetune-in-process")
    run = tracker.start("fairskin_s")
    tracking = {"uri": tracker.tracking_uri, "run_id": run.run_id}
    storage, threads = tmp_path / "checkpoints", torch.get_num_threads()

    def stop_before_step_7(step: int, rank: int) -> None:
        if step == 6:
            finetune.request_stop(storage)

    with pytest.raises(finetune.FitInterrupted, match="before step 7"):
        finetune_variant(
            config,
            variant,
            base,
            train,
            tmp_path / "stopped",
            checkpoints=storage,
            tracking=tracking,
            step_hooks=[FailOnceAt(3, str(tmp_path / "failed_once")), stop_before_step_7],
        )
    assert (tmp_path / "failed_once").read_text() == "failed at step 3"
    assert latest_state(storage)[1]["step"] == 6
    summary = finetune_variant(
        config, variant, base, train, tmp_path / "fairskin_s", checkpoints=storage, tracking=tracking
    )
    assert (summary["steps"], summary["workers"], summary["resumed_from_step"], summary["attempts"]) == (8, 1, 6, 3)
    assert [(s["attempt"], s["from_step"], s["first_step"]) for s in summary["starts"]] == [
        (1, 0, 1),
        (2, 3, 4),
        (3, 6, 7),
    ]
    assert _same_weights(straight, load_sd(str(tmp_path / "fairskin_s" / "pipeline")).unet.state_dict())
    assert [s for s, _ in _loss_steps(tracker.tracking_uri, run.run_id)] == list(range(1, 9))
    assert sorted(p.name for p in (storage / "in_process").iterdir()) == ["checkpoint_00000006", "checkpoint_00000008"]
    assert not (storage / finetune.RUN_NAME).exists() and torch.get_num_threads() == threads
    with pytest.raises(ConfigError, match="needs diffusion.num_workers = 1"):
        build_config("smoke", overrides=["diffusion.trainer=in_process", "diffusion.num_workers=2"])


# --------------------------------------------------------------------------- kills

# The pipeline's command line for the same fine-tune as `straight` (checkpoints every 2 steps).
KILL_SETTINGS = [
    "diffusion.max_steps=8",
    "diffusion.checkpoint_every=2",
    "diffusion.num_workers=1",
    "diffusion.variants=[fairskin_s]",
]


def _checkpoint_steps(folder: Path) -> list[int]:
    """Steps of the checkpoints on disk under a generator's checkpoint folder (recorded by Ray Train or not)."""
    steps = []
    for state in folder.glob(f"fit/checkpoint_*/{STATE_FILE}"):
        try:
            steps.append(json.loads(state.read_text())["step"])
        except (OSError, ValueError):  # being written
            pass
    return sorted(steps)


def _recorded_state(folder: Path) -> dict | None:
    """The ``state.json`` of the latest checkpoint in Ray Train's snapshot: what a rerun resumes from (None: none)."""
    try:
        found = latest_state(folder, while_written=True)
    except (OSError, ValueError):  # the snapshot is being written
        return None
    return found[1] if found else None


def _recorded_step(folder: Path) -> int:
    """The step of the latest checkpoint in Ray Train's snapshot (0: none)."""
    state = _recorded_state(folder)
    return state["step"] if state else 0


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"pipeline exited ({proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _start_pipeline(root: Path, log: Path, pause: float) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "tests/with_faults.py",
        "--step-pause",
        str(pause),
        "--",
        "jobs/full_pipeline.py",
        "--preset",
        "smoke",
        "--stages",
        "finetune",
        f"runtime.runs_root={root}",
        *KILL_SETTINGS,
    ]
    env = dict(os.environ)
    with open(log, "ab") as fh:  # its own process group: the signals reach it and its children, not pytest
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _loss_steps(uri: str, run_id: str) -> list[tuple[int, int]]:
    """(step, timestamp ms) of every logged `loss`, in step order."""
    return sorted((m.step, m.timestamp) for m in MlflowClient(uri).get_metric_history(run_id, "loss"))


def test_pipeline_killed_then_interrupted_resumes_with_the_same_weights(smoke_stages, straight, tmp_path, reap):
    # A runs root of its own (a copy of the session's smoke stages: prepare, vae, base, control_base skipped), so
    # the one finetune stage folder found below is this test's, whatever ran before it.
    root, log = smoke_stages(tmp_path / "runs"), tmp_path / "pipeline.log"
    uri = build_config("smoke", overrides=[f"runtime.runs_root={root}"]).tracking_uri()
    tail = lambda: log.read_text()[-3000:]  # noqa: E731
    folder_of = lambda: next((root / "checkpoints").glob("finetune-*/fairskin_s"), None)  # noqa: E731

    # 1. SIGKILL of the pipeline's process group once Ray Train has recorded a second checkpoint (a
    # checkpoint on disk enters Ray's snapshot a moment later: killing in between resumes from the first).
    # 1 s a step: the kill lands at step 2 or 4, so that step 2 below has a checkpoint to make before the last step
    # (at 0.5 s a slow poll once let the kill land at step 6: the resumed run's next checkpoint was its last, and
    # the Ctrl-C came after the fit had ended).
    proc = reap(_start_pipeline(root, log, pause=1.0))
    folder = _wait_for(
        lambda: (f := folder_of()) is not None and _recorded_step(f) >= 2 and f, 300, proc, "two recorded checkpoints"
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = _recorded_step(folder)
    assert 2 <= killed_at <= 4
    run_id = json.loads((folder / "mlflow_run.json").read_text())["run_id"]

    # 2. The same command continues from there (a new checkpoint, of a resumed attempt); Ctrl-C stops it.
    proc = reap(_start_pipeline(root, log, pause=2.0))  # slow: the Ctrl-C lands before the last step
    _wait_for(lambda: _recorded_step(folder) > killed_at, 300, proc, "a resumed checkpoint")
    assert latest_state(folder)[1]["attempt"] == 2, tail()  # a resumed attempt wrote it
    interrupted = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130, tail()
    assert time.time() - interrupted < 60
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"
    stopped_at = _recorded_step(folder)
    assert killed_at < stopped_at < 8  # the Ctrl-C kept what it can resume from
    logged_before = max(s for s, _ in _loss_steps(uri, run_id))

    # 3. The same command again ends the fine-tune from that checkpoint, in the same MLflow run.
    restarted = int(time.time() * 1000)
    proc = reap(_start_pipeline(root, log, pause=0))
    assert proc.wait(timeout=300) == 0, tail()
    stage = next((root / "stages").glob("finetune-*"))
    assert json.loads((stage / "_stage.json").read_text())["summary"]["fairskin_s_resumed_from_step"] == stopped_at
    steps = _loss_steps(uri, run_id)
    assert [s for s, _ in steps] == list(range(1, 9)), steps  # each step logged once
    # The restart logs the steps after the last one logged (that checkpoint's window first, if missing).
    assert [s for s, t in steps if t >= restarted] == list(range(logged_before + 1, 9))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _same_weights(straight, load_sd(str(stage / "fairskin_s" / "pipeline")).unet.state_dict())
    assert not folder.exists()  # checkpoints are deleted once the stage is complete


def _train_worker_pids() -> list[int]:
    """PIDs of this driver's live Ray Train workers (this job's actors only)."""
    import ray
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    actors = list_actors(filters=[("state", "=", "ALIVE"), ("job_id", "=", job)], limit=1000)
    return [a.pid for a in actors if "RayTrainWorker" in a.class_name]


def test_a_failed_attempt_then_a_killed_worker_resume_to_the_same_weights_and_no_record_holds_the_secret(
    smoke_base, straight, mlflow_http, ray_session, tmp_path, monkeypatch
):
    """Two failures of one fit, of both kinds (1 worker, a checkpoint every 2 steps, ``max_failures=2``): attempt 1
    raises in the train function before step 3 (after the step-2 checkpoint); attempt 2 resumes from step 2, and
    its Ray Train worker process is SIGKILLed once it has a checkpoint recorded; attempt 3 resumes from that one.
    The fit ends as the uninterrupted one (``straight``), bit for bit, every step in MLflow once.

    Issue 14 (secrets): it logs through a ``user:secret@`` tracking URI (an MLflow server on loopback). Rank 0 logs
    every step through it, yet Ray Train's record of the run and its three attempts (its state actor: the
    dashboard's Train page, export events) holds only the redacted URI, and no file under the fit's folders or
    the Ray session's temp dir holds the secret."""
    import secrets

    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    config, base, train = smoke_base
    config = _with(config, **{**STRAIGHT, "checkpoint_every": 2, "max_failures": 2})
    secret = f"s3cr3t-{secrets.token_hex(6)}"
    uri = f"http://fair:{secret}@127.0.0.1:{mlflow_http}"
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # what the dashboard's Train page needs
    tracker = Tracker(uri, "worker-kill")
    run = tracker.start("fairskin_s")
    # 1.2 s a step: the kill lands with at least four steps of attempt 2 to go.
    monkeypatch.setattr(finetune, "STEP_HOOKS", [StepPause(1.2)])
    storage, outcome = tmp_path / "checkpoints", {}

    def fit():
        try:
            outcome["summary"] = finetune_variant(
                config,
                get_variant("fairskin_s"),
                base,
                train,
                tmp_path / "fairskin_s",
                checkpoints=storage,
                tracking={"uri": tracker.tracking_uri, "run_id": run.run_id},
                step_hooks=[FailOnceAt(2, str(tmp_path / "failed_once"))],
            )
        except BaseException as exc:  # noqa: BLE001 - asserted below
            outcome["error"] = exc

    thread = threading.Thread(target=fit)
    thread.start()
    state = _wait_for(
        lambda: (st := _recorded_state(storage)) is not None and st["step"] > 2 and st,
        300,
        what="a checkpoint of the resumed attempt",
    )
    assert (tmp_path / "failed_once").read_text() == "failed at step 2"
    assert state["attempt"] == 2
    pids = _train_worker_pids()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"]["steps"] == 8 and outcome["summary"]["attempts"] == 3
    steps = [s for s, _ in _loss_steps(tracker.tracking_uri, run.run_id)]
    assert steps == list(range(1, 9))  # the steps run again are logged once
    got = load_sd(str(tmp_path / "fairskin_s" / "pipeline")).unet.state_dict()
    assert _same_weights(straight, got)
    assert not _same_weights(straight, load_sd(str(base)).unet.state_dict())  # it did train

    recorded = json.dumps(
        [r.model_dump(mode="json") for r in ray.get(get_state_actor().get_train_runs.remote()).values()], default=str
    )
    assert secret not in recorded
    assert f"***:***@127.0.0.1:{mlflow_http}" in recorded  # the fit's settings are there, redacted
    for folder in (tmp_path, Path(ray_session["temp_dir"])):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                assert secret.encode() not in data, path


def test_a_snapshot_caught_while_ray_rewrites_it_reads_as_none_only_when_polling(tmp_path):
    """Found flaky in a full run: a test polling a live fit read Ray Train's checkpoint-manager snapshot while
    Ray rewrote it in place (empty JSON), and Ray's CheckpointManagerInitializationError escaped the poll.
    Polling (while_written) reads that as "no checkpoint yet"; a resuming fit still gets Ray's error."""
    from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError

    run = tmp_path / "fit"
    run.mkdir()
    (run / "checkpoint_manager_snapshot.json").write_text("")
    assert latest_state(tmp_path, while_written=True) is None
    with pytest.raises(CheckpointManagerInitializationError):
        latest_state(tmp_path)
    assert latest_state(tmp_path / "absent", while_written=True) is None


def test_a_window_logged_again_after_a_resume_reaches_mlflow_once(tmp_path):
    from fairskin.diffusion.step_log import last_logged_step, log_steps, mlflow_logger

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "windows")
    run = tracker.start("fit")
    logger = mlflow_logger({"uri": tracker.tracking_uri, "run_id": run.run_id})
    window = [(s, {"loss": 1.0 / s, "lr": 1e-3}) for s in range(1, 7)]
    assert log_steps(logger, window[:4], last_logged_step(logger)) == 4  # killed after logging step 4
    # Resumed from the checkpoint of step 2: its window and the re-run steps 3-6 come again.
    assert log_steps(logger, window, last_logged_step(logger)) == 6
    history = MlflowClient(tracker.tracking_uri).get_metric_history(run.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]


def test_the_drop_control_never_sees_its_group_in_base_or_fine_tune(smoke_base):
    """control_drop_African: its base UNet is trained without the group from the base's initial weights
    (VAE and text encoder shared with the base), and its fine-tune streams only the other groups' rows (every
    row for a variant that is not a control: the at-once test above)."""
    import json

    from safetensors.torch import load_file

    config, base, train = smoke_base
    config = build_config(
        "smoke",
        overrides=[
            f"runtime.runs_root={config.runtime.runs_root}",
            "diffusion.cpus_per_worker=0.5",
            "diffusion.variants=[control_drop_african]",
            "diffusion.trainer=in_process",  # what it trains on is the driver's choice, the same for either trainer
        ],
    )
    results = run_pipeline(config, stages=["finetune"], echo=lambda *_: None).results
    assert results["base"].skipped  # the base is the shared one: the controls do not change its key
    control = results["control_base"].path
    assert json.loads((control / "control_bases.json").read_text()) == {"African": "without_african/pipeline"}
    african = int((train.meta["group"] == "African").sum())
    assert results["control_base"].summary["without_african_rows_dropped"] == african > 0

    def weights(folder, part):
        return load_file(next((folder / part).glob("*.safetensors")))

    dropped = control / "without_african" / "pipeline"
    for part in ("vae", "text_encoder"):
        shared, own = weights(base, part), weights(dropped, part)
        assert all(torch.equal(shared[k], own[k]) for k in shared)
    base_unet, dropped_unet = weights(base, "unet"), weights(dropped, "unet")
    assert not all(torch.equal(base_unet[k], dropped_unet[k]) for k in base_unet)

    summary = results["finetune"].summary
    assert summary["control_drop_african_train_rows"] == len(train) - african
    assert summary["control_drop_african_steps"] == config.diffusion.max_steps


def test_control_variants_are_resolved_checked_and_seeded_apart():
    from fairskin.config import ConfigError
    from fairskin.diffusion.variants import generator_seed, is_control

    config = build_config("smoke", overrides=["diffusion.variants=[vanilla,vanilla_twin,control_drop_caucasian]"])
    assert config.dropped_groups() == ["Caucasian"] and config.dropped_group("vanilla_twin") is None
    twin = config.diffusion.variant("vanilla_twin")
    assert (twin.weights, twin.loss) == ("none", "dm")  # vanilla's settings ...
    assert generator_seed(config.diffusion, "vanilla_twin") != generator_seed(
        config.diffusion, "vanilla"
    )  # ... own seeds
    assert is_control("vanilla_twin") and is_control("control_drop_caucasian") and not is_control("vanilla")
    with pytest.raises(ConfigError, match="control_drop_martian.*control_drop_african"):
        build_config("smoke", overrides=["diffusion.variants=[vanilla,control_drop_martian]"])


@pytest.fixture()
def mlflow_http(tmp_path_factory):
    """An MLflow tracking server on loopback (MLflow's Flask app under werkzeug, one process in its own
    session, ended by its process group); yields its port. It ignores credentials, so any
    ``user:password@`` in the URI is accepted."""
    import socket

    import requests

    folder = tmp_path_factory.mktemp("mlflow-http")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import os, sys; os.environ['_MLFLOW_SERVER_FILE_STORE'] = sys.argv[1]; "
        "os.environ['_MLFLOW_SERVER_ARTIFACT_ROOT'] = sys.argv[2]; "
        "from mlflow.server import app; from werkzeug.serving import make_server; "
        "make_server('127.0.0.1', int(sys.argv[3]), app, threaded=True).serve_forever()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, f"sqlite:///{folder / 'mlflow.db'}", str(folder / "art"), str(port)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "server.log", "w"),
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except requests.RequestException:
                assert proc.poll() is None and time.time() < deadline, (folder / "server.log").read_text()[-2000:]
                time.sleep(0.3)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is the server alone
        proc.wait(timeout=30)


def test_the_shard_feed_fine_tunes_from_shards_and_resumes_by_position(smoke_base, tmp_path):
    """diffusion.latent_feed = shards: the driver writes the latents as shards beside the checkpoints (the same
    latents as the in-memory cache), the worker streams them within its budget, and a run that failed at step 4
    and resumed ends with the weights of an uninterrupted one."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from fairskin.data.latent_shards import LatentShards

    config, base, train = smoke_base
    config = _with(config, **STRAIGHT, latent_feed="shards", feed_memory_budget_mb=4.0)
    variant = get_variant("fairskin_s", apply="sampler")
    # The uninterrupted fit and the one that fails once, side by side (each its own checkpoints and shards; fits at
    # once end as fits alone: test_variants_fine_tuned_at_once_on_ray_train_end_as_the_in_process_loop_alone).
    with ThreadPoolExecutor(max_workers=2) as pool:
        straight_job = pool.submit(
            finetune_variant, config, variant, base, train, tmp_path / "straight", checkpoints=tmp_path / "ck1"
        )
        resumed_job = pool.submit(
            finetune_variant,
            config,
            variant,
            base,
            train,
            tmp_path / "resumed",
            step_hooks=[FailOnceAt(4, str(tmp_path / "failed_once"))],
            checkpoints=tmp_path / "ck2",
        )
        straight, resumed = straight_job.result(), resumed_job.result()
    assert straight["steps"] == 8 and straight["train_rows"] == len(train)
    shards = LatentShards(tmp_path / "ck1" / "latents")
    assert shards.nbytes > 0 and len(shards) == len(train)
    stored = pq.ParquetDataset(shards.files).read()
    memory, _ = cache_training_set(
        load_sd(str(base)), train, subclass_prompts(config.diffusion.prompt_template, train.groups, train.diseases)
    )
    ids = stored.column("row_id").to_numpy()
    assert np.allclose(
        stored.column("latents").combine_chunks().to_numpy_ndarray(), memory.columns["latents"][ids], atol=1e-6
    )
    assert np.array_equal(stored.column("subclass").to_numpy(), train.subclass_id[ids])
    assert resumed["attempts"] == 2
    a = load_sd(str(tmp_path / "straight" / "pipeline")).unet.state_dict()
    assert _same_weights(a, load_sd(str(tmp_path / "resumed" / "pipeline")).unet.state_dict())
    assert not _same_weights(a, load_sd(str(base)).unet.state_dict())  # it did train
