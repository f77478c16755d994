"""Method hooks across training workers: two processes in a gloo group (the collectives Ray Train's workers use),
each with its share of every global batch, the UNet in DistributedDataParallel."""

from __future__ import annotations

import math
import socket

import torch
import torch.multiprocessing as mp
from tiny_fit import ddp_worker, diffusion_settings, tiny_set

from fairskin.methods import check_hooks
from fairskin.methods.spec import VariantSpec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_hold_the_same_sigma_and_adapters_at_every_step(tmp_path):
    """LoRA adapters with FairDiffusion's perturbation (window 2: three Bayesian steps in six), two workers: at
    every step both use the same sigma and see the same y (the group losses all-reduced over the global batch, not
    a worker's own half), and they end with the same adapters, which trained."""
    data = tiny_set(tmp_path)
    variant = check_hooks(VariantSpec(name="both", hooks={"lora": {}, "fairdiffusion": {"window": 2}})).model_dump(
        mode="json"
    )
    d = diffusion_settings(max_steps=6, global_batch_size=8)
    mp.spawn(ddp_worker, args=(2, _free_port(), data, variant, d, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    sigma_keys = sorted(k for k in ranks[0]["metrics"][0] if k.startswith("fairdiffusion_sigma_"))
    assert len(sigma_keys) == 2
    for step0, step1 in zip(*(r["metrics"] for r in ranks)):
        assert [step0[k] for k in sigma_keys] == [step1[k] for k in sigma_keys], step0["step"]
        assert math.isfinite(step0["fairdiffusion_y"]) and step0["fairdiffusion_y"] == step1["fairdiffusion_y"]
    sigmas = {tuple(m[k] for k in sigma_keys) for m in ranks[0]["metrics"]}
    assert len(sigmas) == 6, "sigma moves every step (exploration, and the Bayesian step every 2)"
    a, b = ranks[0]["trained"], ranks[1]["trained"]
    assert a.keys() == b.keys() and all("lora_" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k)


def test_a_fairdiffusion_fine_tune_stopped_after_a_checkpoint_resumes_bit_equal(tmp_path):
    """Window 2 over six steps, a checkpoint after step 4 (inside the third window: its record is in state.json),
    a fresh trainee from it: the UNet and sigma at every later step equal an uninterrupted run's, bit for bit."""
    import json

    from tiny_fit import fit

    from fairskin.diffusion.loop import save_checkpoint

    data = tiny_set(tmp_path)
    variant = check_hooks(VariantSpec(name="fd", hooks={"fairdiffusion": {"window": 2}})).model_dump(mode="json")
    d = diffusion_settings(max_steps=6)
    straight, straight_metrics = fit(data, variant, d, seed=4)
    first, _ = fit(data, variant, d, seed=4, until=4)
    save_checkpoint(tmp_path / "ck", first, {"step": 4})
    saved = json.loads((tmp_path / "ck" / "state.json").read_text())["hooks"][0]
    assert len(saved["window_rewards"]) == 1 and saved["sigma"] == first.hooks[0].sigma.tolist()
    resumed, metrics = fit(data, variant, d, seed=4, checkpoint=tmp_path / "ck")

    def steady(rows):  # the host's pace differs run to run; every other figure must not
        return [{k: v for k, v in m.items() if k != "images_per_s"} for m in rows]

    assert steady(metrics) == steady(straight_metrics[4:])
    want, got = straight.unet.state_dict(), resumed.unet.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert torch.equal(straight.hooks[0].sigma, resumed.hooks[0].sigma)
