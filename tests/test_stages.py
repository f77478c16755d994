import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO
from fairskin.config import build_config
from fairskin.stages import STAGE_RECORD, is_finished, run_stage, stage_dir, stage_key


def _body(marker):
    def body(out):
        (out / "result.txt").write_text(marker)
        return {"marker": marker}
    return body


def test_key_depends_on_the_slice_read_and_on_inputs(smoke_config):
    other_seed = smoke_config.model_copy(update={"runtime": smoke_config.runtime.model_copy(update={"seed": 9})})
    assert stage_key("prepare", smoke_config, ["data"]) == stage_key("prepare", other_seed, ["data"])
    assert stage_key("prepare", smoke_config, ["data", "runtime.seed"]) != stage_key(
        "prepare", other_seed, ["data", "runtime.seed"])
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
        from fairskin.stages import run_stage
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
    from fairskin.config import build_config
    from fairskin.pipeline import pipeline_stage_key

    def key(*overrides):
        config = build_config("smoke", overrides=[f"runtime.runs_root={smoke_config.runtime.runs_root}", *overrides])
        return pipeline_stage_key("generate", config, {})

    same = key()
    # The judge, the FID reference split and the actor count do not change a single pool byte.
    assert key("generation.judge_images_per_subclass=7", "generation.judge_batch_size=3",
               "generation.real_split=test", "generation.num_actors=1") == same
    for changed in ("generation.inference_steps=3", "generation.scheduler=dpm", "generation.guidance_scale=1.5",
                    "generation.images_per_subclass=11", "generation.channels_last=true"):
        assert key(changed) != same, changed
