"""benchmarks/gpu.py in its tiny mode (no CUDA here): every section runs through the engine's own step,
sampling and FID-feature code, prints a JSON line per section and ends with one holding every figure.

When ``make gpu-wheels`` has fetched the diffusers wheel, the run hides this venv's diffusers so that
the script imports diffusers from the wheel, as on the device machine (which has none). Modules the
device machine lacks (ray, mlflow, pydantic, optuna, torch_fidelity) must not be imported.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO

WHEELS = REPO / "benchmarks" / "wheels"

# Installed diffusers hidden: a finder ahead of the others resolves `diffusers` only from the folders
# gpu.py unpacks its wheels into (fairskin-wheels-*), so the first import fails as on the device machine.
HIDE_DIFFUSERS = """
import importlib.machinery, runpy, sys
class HideInstalled:
    def find_spec(self, name, path=None, target=None):
        if name != "diffusers":
            return None
        wheels = [p for p in sys.path if "fairskin-wheels-" in p]
        spec = importlib.machinery.PathFinder.find_spec(name, wheels) if wheels else None
        if spec is None:
            raise ModuleNotFoundError("No module named 'diffusers' (hidden by the test)")
        return spec
sys.meta_path.insert(0, HideInstalled())
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

EXPECTED = (
    ["mode", "device", "diffusers_source", "forbidden_modules_imported", "peak_bf16_flops"]
    + [
        f"train_{what}_{kind}"
        for what in ("images_per_s", "step_s", "tflop_per_step", "mfu")
        for kind in ("vanilla", "cbdm", "cbdm_g0", "encode")
    ]
    + [
        "ratio_cbdm_vs_vanilla_gamma_pos",
        "floor_cbdm_gamma_pos",
        "flop_ratio_cbdm_vs_vanilla_gamma_pos",
        "gap_cbdm_gamma_pos_vs_floor",
        "ratio_cbdm_vs_vanilla_gamma0",
        "floor_cbdm_gamma0",
        "flop_ratio_cbdm_vs_vanilla_gamma0",
        "gap_cbdm_gamma0_vs_floor",
        "ratio_encode_vs_cached",
        "flop_ratio_encode_vs_cached",
        "goal_mfu",
        "goal_cbdm_gap",
        "sample_tflop_per_image_step",
    ]
    + [f"sample_images_per_s_{dtype}_{steps}" for dtype in ("fp32", "bf16", "fp16") for steps in (50, 25)]
    + ["fid_images_per_s_fp32", "fid_images_per_s_bf16"]
    + [f"lora_{what}_{kind}" for what in ("step_s", "trainable_parameters_m") for kind in ("full", "lora")]
    + ["ratio_lora_vs_full_step_s"]
)


def test_gpu_benchmark_tiny_mode_reports_every_section_as_json():
    vendored = any(WHEELS.glob("diffusers-*.whl"))
    script = str(REPO / "benchmarks" / "gpu.py")
    cmd = [sys.executable, "-c", HIDE_DIFFUSERS, script] if vendored else [sys.executable, script]
    # --budget-s: a loaded shared machine must not skip measurements (the default tiny budget is 300 s)
    proc = subprocess.run(cmd + ["--quick", "--budget-s", "900"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [line["section"] for line in lines] == ["env", "train", "sample", "fid", "lora", "all"]
    last = lines[-1]
    missing = [k for k in EXPECTED if k not in last]
    assert not missing, missing
    assert last["mode"] == "tiny cpu" and "no CUDA" in last["note"]
    assert last["forbidden_modules_imported"] == []
    assert not [k for k in last if k.endswith("_error") or k.endswith("_skipped")]
    if vendored:
        assert last["diffusers_source"].startswith("diffusers-"), last["diffusers_source"]
    constraints = (REPO / "constraints.txt").read_text()
    assert f"diffusers=={last['diffusers']}" in constraints
    measured = [k for k in EXPECTED if re.match(r"(train_images_per_s|sample_images_per_s|fid_images_per_s)", k)]
    assert all(last[k] and last[k] > 0 for k in measured), {k: last[k] for k in measured}
    # FLOP floors: a CBDM step with gamma > 0 is two UNet passes with gradients, gamma = 0 adds a no-grad one.
    assert abs(last["flop_ratio_cbdm_vs_vanilla_gamma_pos"] - 2.0) < 0.01
    assert 1.3 < last["flop_ratio_cbdm_vs_vanilla_gamma0"] < 1.45
    assert last["flop_ratio_encode_vs_cached"] > 1
    # LoRA trains the adapters only: rank 4 on the attention projections is a few percent of the tiny UNet
    assert 0 < last["lora_trainable_parameters_m_lora"] < last["lora_trainable_parameters_m_full"] / 10
    assert last["lora_step_s_lora"] > 0 and last["lora_step_s_full"] > 0


def test_wheel_list_pins_the_constrained_diffusers():
    """The wheel carried to the device machine is the diffusers the engine is tested with."""
    pinned = re.search(r"^diffusers==(\S+)", (REPO / "constraints.txt").read_text(), re.M).group(1)
    wanted = re.search(r"^diffusers==(\S+)", (WHEELS / "requirements.txt").read_text(), re.M).group(1)
    assert pinned == wanted


def test_step_sampling_and_feature_modules_import_and_run_without_ray_mlflow_pydantic():
    modules = (
        "fairskin",
        "fairskin.diffusion.losses",
        "fairskin.diffusion.step",
        "fairskin.diffusion.models",
        "fairskin.diffusion.sampler",
        "fairskin.metrics.features",
        "fairskin.classify.models",
    )
    absent = ("ray", "mlflow", "pydantic", "optuna", "torch_fidelity", "pandas")
    # make_scheduler is called too: a lazy import inside it (e.g. of fairskin.config) reaches the device
    # machine as well, and only the slow tiny-mode benchmark test would see it otherwise.
    use = (
        "from fairskin.diffusion.sampler import make_scheduler; "
        "make_scheduler('ddim', {'rescale_betas_zero_snr': True, 'prediction_type': 'v_prediction'})"
    )
    code = f"import sys, {', '.join(modules)}; {use}; print([m for m in {absent!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
