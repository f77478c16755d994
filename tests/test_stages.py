import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO

from fairskin.config import build_config
from fairskin.pipeline.keyed import STAGE_RECORD, is_finished, run_stage, stage_dir, stage_key


def _body(marker):
    def body(out):
        (out / "result.txt").write_text(marker)
        return {"marker": marker}

    return body


def test_key_depends_on_the_slice_read_and_on_inputs(smoke_config):
    other_seed = smoke_config.model_copy(update={"runtime": smoke_config.runtime.model_copy(update={"seed": 9})})
    assert stage_key("prepare", smoke_config, ["data"]) == stage_key("prepare", other_seed, ["data"])
    assert stage_key("prepare", smoke_config, ["data", "runtime.seed"]) != stage_key(
        "prepare", other_seed, ["data", "runtime.seed"]
    )
    first = run_stage(smoke_config, "a", ["data"], _body("1"))
    assert stage_key("b", smoke_config, [], {"a": first}) != stage_key("b", smoke_config, [])


def test_finished_stage_is_skipped_and_force_redoes_it(smoke_config):
    first = run_stage(smoke_config, "prepare", ["data"], _body("first"))
    assert not first.skipped and (first.path / "result.txt").read_text() == "first"
    again = run_stage(smoke_config, "prepare", ["data"], _body("second"))
    assert again.skipped and again.path == first.path and again.summary == {"marker": "first"}
    forced = run_stage(smoke_config, "prepare", ["data"], _body("third"), force=True)
    assert not forced.skipped and (forced.path / "result.txt").read_text() == "third"


def test_failed_body_leaves_old_output_untouched(smoke_config):
    first = run_stage(smoke_config, "prepare", ["data"], _body("good"))

    def broken(out):
        (out / "result.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage(smoke_config, "prepare", ["data"], broken, force=True)
    assert (first.path / "result.txt").read_text() == "good" and is_finished(first.path)
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]


def test_killed_stage_leaves_no_folder_that_looks_finished(smoke_config, tmp_path):
    script = textwrap.dedent(f"""
        import time
        from fairskin.config import build_config
        from fairskin.pipeline.keyed import run_stage
        config = build_config("smoke", overrides=["runtime.runs_root={smoke_config.runtime.runs_root}"])
        def body(out):
            (out / "part-1.txt").write_text("written before the kill")
            (out.parent / "started").write_text("1")
            time.sleep(60)
        run_stage(config, "prepare", ["data"], body)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    root = smoke_config.runtime.runs_root / "stages"
    deadline = time.time() + 60
    while not (root / "started").exists():
        assert time.time() < deadline and proc.poll() is None, "the stage never started"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    key = stage_key("prepare", smoke_config, ["data"])
    final = stage_dir(smoke_config, "prepare", key)
    assert not final.exists()
    leftovers = [p for p in root.iterdir() if p.name.startswith(".prepare-")]
    assert leftovers and not any((p / STAGE_RECORD).exists() for p in leftovers)
    # The next run cleans the dead process's partial folder and completes.
    result = run_stage(smoke_config, "prepare", ["data"], _body("after"))
    assert not result.skipped and is_finished(final)
    assert not [p for p in root.iterdir() if p.name.startswith(".prepare-")]


def test_generate_is_keyed_by_what_a_pools_bytes_depend_on_only(smoke_config):
    from fairskin.pipeline import pipeline_stage_key

    def key(*overrides):
        config = build_config("smoke", overrides=[f"runtime.runs_root={smoke_config.runtime.runs_root}", *overrides])
        return pipeline_stage_key("generate", config, {})

    same = key()
    # The judge, the FID reference split and the actor count do not change a single pool byte.
    assert (
        key(
            "generation.judge_images_per_subclass=7",
            "generation.judge_batch_size=3",
            "generation.real_split=test",
            "generation.num_actors=1",
        )
        == same
    )
    for changed in (
        "generation.inference_steps=3",
        "generation.scheduler=dpm",
        "generation.guidance_scale=1.5",
        "generation.images_per_subclass=11",
        "generation.channels_last=true",
    ):
        assert key(changed) != same, changed


def test_a_stage_running_beside_another_keeps_its_temporary_folder(tmp_path):
    """A background stage's temporary folder carries this process's PID; the stage starting beside it must
    not take it for a killed run's leftover (clean_stale_partials once removed every folder of its own PID)."""
    from fairskin.io import atomic_directory
    from fairskin.pipeline.keyed import clean_stale_partials

    root = tmp_path / "stages"
    with atomic_directory(root / "base-abc") as writing:
        (writing / "half.txt").write_text("still being written")
        leftover = root / f".control_base-def.partial-{os.getpid()}-0123abcd"
        leftover.mkdir()  # this PID's, but no atomic_directory call is writing it: a failed attempt's
        assert clean_stale_partials(root) == [leftover]
        assert (writing / "half.txt").is_file()
    assert (root / "base-abc" / "half.txt").is_file()


def test_a_background_stage_runs_while_the_next_stages_that_do_not_need_it_do():
    """run_in_order: `base` (background) runs on a thread while `control_base` (not its input) runs; `finetune`
    (its input) waits for it. Sequential code would block in `base` until its wait for `control_base` timed out."""
    import threading

    from fairskin.pipeline import Stage, run_in_order

    started = {name: threading.Event() for name in ("base", "control_base")}
    finished: list[str] = []

    def body(name, waits_for=None):
        def run(stage):
            started[name].set() if name in started else None
            if waits_for is not None:
                assert started[waits_for].wait(timeout=20), f"{name} never ran beside {waits_for}"
            finished.append(name)

        return run

    bodies = {
        "vae": body("vae"),
        "base": body("base", waits_for="control_base"),
        "control_base": body("control_base", waits_for="base"),
        "finetune": body("finetune"),
    }
    plan = [
        Stage("vae", (), None),
        Stage("base", (), None, inputs=("vae",), background=True),
        Stage("control_base", (), None, inputs=("vae",)),
        Stage("finetune", (), None, inputs=("base", "control_base")),
    ]
    run_in_order(plan, lambda stage: bodies[stage.name](stage))
    assert finished[0] == "vae" and finished[-1] == "finetune" and set(finished[1:3]) == {"base", "control_base"}

    # A background stage's error reaches the caller, after the stages beside it have finished (kept).
    def failing(stage):
        if stage.name == "base":
            raise RuntimeError("base failed")
        finished.append(stage.name)

    finished.clear()
    with pytest.raises(RuntimeError, match="base failed"):
        run_in_order(plan, failing)
    assert finished == ["vae", "control_base"]

    # An interrupt on the main path tells the background stage to stop (its Ray waits check the flag).
    from fairskin.runtime import background_stop

    seen_stop = threading.Event()

    def interrupted(stage):
        if stage.name == "base":
            seen_stop.set() if background_stop.wait(timeout=20) else None
        elif stage.name == "control_base":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_order(plan, interrupted)
    assert seen_stop.is_set()
