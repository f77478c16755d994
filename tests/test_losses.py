"""Level 2 losses: the CBDM regulariser's stop-gradients, time weight and reductions."""

from types import SimpleNamespace

import pytest
import torch

from fairskin.diffusion.losses import (
    cbdm_regulariser,
    cbdm_time_weight,
    other_subclasses,
    per_sample_mse,
    prediction_target,
    training_loss,
)


class ToyUNet(torch.nn.Module):
    """h = a * x_t + b * mean(cond): the prompt enters linearly, so gradients can be read off."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7))
        self.b = torch.nn.Parameter(torch.tensor(1.3))
        self.calls = 0

    def forward(self, x, t, encoder_hidden_states):
        self.calls += 1
        return SimpleNamespace(sample=self.a * x + self.b * encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1))


def _scheduler(kind="epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 4, 8, 8, generator=g),
        torch.randn(b, 3, 5, generator=g),
        torch.randn(b, 3, 5, generator=g),
        torch.randn(b, 4, 8, 8, generator=g),
        torch.randint(1, 1000, (b,), generator=g),
    )


def test_regulariser_is_zero_when_the_other_label_is_the_same():
    latents, cond, _, noise, t = _batch()
    out = training_loss(
        ToyUNet(), _scheduler(), latents, cond, cond.clone(), torch.ones(4), noise=noise, timesteps=t, use_cbdm=True
    )
    assert out.regulariser == pytest.approx(0.0, abs=1e-12)
    different = training_loss(
        ToyUNet(), _scheduler(), latents, cond, cond + 1, torch.ones(4), noise=noise, timesteps=t, use_cbdm=True
    )
    assert different.regulariser > 0


@pytest.mark.parametrize("gamma", [0.25, 0.0])
def test_gradients_flow_only_where_the_stop_gradients_allow(gamma):
    """reg = w mse(h, sg h') + gamma w mse(sg h, h'): with h - h' = b (c - c'), the gradient on
    the y' prompt is exactly -gamma times the gradient on the y prompt (without the stop-gradients
    both would be (1 + gamma) times larger in size)."""
    latents, cond, cond_other, noise, t = _batch()
    cond.requires_grad_(True)
    cond_other.requires_grad_(True)
    unet = ToyUNet()
    x = torch.randn(4, 4, 8, 8)
    h = unet(x, t, cond).sample
    if gamma > 0:
        h_other = unet(x, t, cond_other).sample
    else:
        with torch.no_grad():
            h_other = unet(x, t, cond_other).sample
    reg = cbdm_regulariser(h, h_other, cbdm_time_weight(t, 1000, 1.0), gamma).sum()
    reg.backward()
    if gamma > 0:
        assert torch.allclose(cond_other.grad, -gamma * cond.grad, atol=1e-6)
    else:
        assert cond_other.grad is None
    # And the same through training_loss (one batched call when gamma > 0, two calls otherwise).
    unet = ToyUNet()
    c1, c2 = cond.detach().clone().requires_grad_(True), cond_other.detach().clone().requires_grad_(True)
    out = training_loss(
        unet, _scheduler(), latents, c1, c2, torch.ones(4), noise=noise, timesteps=t, use_cbdm=True, gamma=gamma
    )
    out.loss.backward()
    assert unet.calls == (1 if gamma > 0 else 2)
    if gamma > 0:
        assert c2.grad is not None and c2.grad.abs().sum() > 0
    else:
        assert c2.grad is None


def test_time_weight_scales_with_t():
    h, h_other = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    h, h_other = h[:1].expand(2, -1, -1, -1), h_other[:1].expand(2, -1, -1, -1)
    w = cbdm_time_weight(torch.tensor([250, 1000]), 1000, tau=2.0)
    assert w.tolist() == [0.5, 2.0]
    reg = cbdm_regulariser(h, h_other, w, 0.25)
    assert reg[1] / reg[0] == pytest.approx(4.0)
    assert reg[0] == pytest.approx(0.5 * 1.25 * float(per_sample_mse(h[:1], h_other[:1])))


def test_per_sample_weights_scale_the_loss_and_the_batch_divides_by_its_size():
    latents, cond, cond_other, noise, t = _batch()
    args = dict(noise=noise, timesteps=t, use_cbdm=True)
    ones = training_loss(ToyUNet(), _scheduler(), latents, cond, cond_other, torch.ones(4), **args)
    only_first = training_loss(
        ToyUNet(),
        _scheduler(),
        latents[:1],
        cond[:1],
        cond_other[:1],
        torch.ones(1),
        noise=noise[:1],
        timesteps=t[:1],
        use_cbdm=True,
    )
    weighted = training_loss(ToyUNet(), _scheduler(), latents, cond, cond_other, torch.tensor([3.0, 0, 0, 0]), **args)
    assert float(weighted.loss) == pytest.approx(3.0 * float(only_first.loss) / 4, rel=1e-5)
    assert float(ones.loss) != pytest.approx(float(weighted.loss))


def test_dropped_prompt_skips_the_regulariser_and_v_prediction_targets_velocity():
    latents, cond, cond_other, noise, t = _batch()
    unet = ToyUNet()
    out = training_loss(
        unet,
        _scheduler(),
        latents,
        cond,
        cond_other,
        torch.ones(4),
        noise=noise,
        timesteps=t,
        use_cbdm=True,
        prompt_dropped=True,
    )
    assert out.regulariser == 0.0 and unet.calls == 1
    v = _scheduler("v_prediction")
    assert torch.allclose(prediction_target(v, latents, noise, t), v.get_velocity(latents, noise, t))
    assert not torch.allclose(prediction_target(v, latents, noise, t), noise)


def test_other_subclass_default_is_uniform_over_all_subclasses_y_included():
    """The official CBDM fine-tune draw: y' uniform over every subclass, y itself included."""
    from scipy import stats

    y = torch.full((15000,), 4)
    other = other_subclasses(y, 15, torch.Generator().manual_seed(0))
    counts = torch.bincount(other, minlength=15).numpy()
    assert counts[4] > 800  # y' = y about 1/15 of the time
    assert stats.chisquare(counts).pvalue > 0.001


def test_other_subclass_option_excludes_y_and_covers_the_rest():
    y = torch.full((15000,), 4)
    other = other_subclasses(y, 15, torch.Generator().manual_seed(0), include_self=False)
    assert not (other == 4).any()
    counts = torch.bincount(other, minlength=15)
    assert counts[4] == 0 and (counts[torch.arange(15) != 4] > 900).all()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_min_snr_gamma_weighs_the_x0_error_by_min_snr_gamma_and_caps_the_clean_timesteps(kind):
    from diffusers import DDPMScheduler

    from fairskin.diffusion.losses import min_snr_weight

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind, rescale_betas_zero_snr=True)
    t = torch.tensor([0, 10, 100, 500, 900, 999])
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    weight = min_snr_weight(scheduler, t, gamma=5.0)
    assert torch.isfinite(weight).all() and (weight <= 1 + 1e-6).all()
    # The x_0 error costs SNR_t (epsilon) or SNR_t + 1 (v) of the plain loss; weighted, min(SNR_t, 5) at every t.
    per_x0 = weight * (snr if kind == "epsilon" else snr + 1)
    finite = snr > 0
    assert torch.allclose(per_x0[finite], snr[finite].clamp(max=5.0), rtol=1e-4)
    assert weight[0] < 0.01  # t = 0 is nearly clean: capped hard
    assert float(weight[-1]) == (1.0 if kind == "epsilon" else 0.0)  # zero terminal SNR: the 0/0 limit, no NaN

    latents, cond, _, noise, _ = _batch(b=6)
    plain = training_loss(
        ToyUNet(), scheduler, latents, cond, None, torch.ones(6), noise=noise, timesteps=t, use_cbdm=False
    )
    weighted = training_loss(
        ToyUNet(),
        scheduler,
        latents,
        cond,
        None,
        torch.ones(6),
        noise=noise,
        timesteps=t,
        use_cbdm=False,
        snr_gamma=5.0,
    )
    h = ToyUNet()(scheduler.add_noise(latents, noise, t), t, cond).sample
    expected = (per_sample_mse(h, prediction_target(scheduler, latents, noise, t)) * weight).sum() / 6
    assert torch.isclose(weighted.loss, expected) and not torch.isclose(weighted.loss, plain.loss)
