"""FairDiffusion: Fair Bayesian Perturbation of the per-sample loss weights (Luo et al., "FairDiffusion: enhancing
equity in latent diffusion models via fair Bayesian perturbation", Science Advances 2025).

The official code is ``examples/text_to_image/train_text_to_image_proposed.py`` of
github.com/Harvard-Ophthalmology-AI-Lab/FairDiffusion (lines ~936-1071 at HEAD: ``sigma_all_groups``,
``instance_weights``, ``loss_gap``, ``bo_train_x_y``, the ``SingleTaskGP`` / ``UpperConfidenceBound`` /
``optimize_acqf`` block and the ``fair_exploitation_rate`` update). This module reproduces that algorithm as a
:class:`~fairskin.methods.hooks.TrainingHook`, with the skin-tone groups (``HookContext.groups``) as its one
attribute.

The algorithm, with K groups, g(i) the group of sample i, ``t`` the optimizer step (0-based), W the window::

    sigma_0 = 1 (every entry; the official ``torch.ones``)
    step t:   eps_i ~ N(0, 1) per sample                       (generator seeded by (seed, t, rank))
              w_i = 1 + sigma_t[g(i)] * eps_i                    (sample_weights)
              loss = (1/B) sum_i w_i * mse_i                     (the engine's loss: its mean over the batch)
              m_g = mean of mse_i over the samples of group g in the GLOBAL batch (all ranks; mse before w)
              y_t = -(max_g m_g - min_g m_g)                     (fairness_reward; groups absent: see below)
              record (sigma_t, y_t)
              if t > 0 and t % W == 0:                           (the official condition)
                  GP = SingleTaskGP fitted to the recorded pairs (fit_gpytorch_mll on the exact marginal likelihood)
                  sigma_t = argmax over [lo, hi]^K of UCB(x) = mu(x) + sqrt(beta) * sd(x), beta = 0.1
                            (optimize_acqf, q=1, num_restarts=5, raw_samples=20; rank 0, broadcast)
                  clear the record
              sigma_{t+1} = r * sigma_t + (1 - r) * u,  u ~ U(lo, hi)^K, r = 0.95
                            (every step, after the BO step: the BO's candidate itself is mixed the same step)

The weights w_i are not clipped: with sigma near 1 about 16 % of them are negative, as in the official code.

What differs from the official code, and why:

* One attribute (the skin-tone group): the official code perturbs three attributes at once (race, gender,
  ethnicity: w_i = 1 + sum_a sigma[a, g_a(i)] * eps_{a,i}, y = -sum_a gap_a).
* A group absent from the global batch is left out of the max / min (the gap is over the groups present). The
  official code takes the mean of an empty tensor (nan), its max / min turn nan and the gap is then replaced by
  0, so any batch missing a group scores the best possible y. With fewer than two groups present, or a loss
  that is not finite, y is undefined: nothing is recorded that step (the metric is nan, which the engine does
  not log), and a window with no record keeps sigma (only the exploration step applies).
* The step count is the engine's global optimizer step. The official ``step`` is the per-epoch index of the
  dataloader (micro-batches under gradient accumulation) and restarts each epoch, so its windows restart at
  each epoch while its record runs on; the first window holds W + 1 pairs in both.
* The GP's data are float64 (the official ``.float()`` makes them float32, which botorch warns against), and
  the outcome transform is written out: ``Standardize(m=1)``, no input transform (sigma already lies in the
  box). That is what the official call ``SingleTaskGP(x, y)`` builds under botorch >= 0.12 (RBF kernel with
  dimension-scaled log-normal lengthscale prior, log-normal noise prior, outcomes standardised). The official
  repository pins no botorch version and dates from August 2024, when ``SingleTaskGP(x, y)`` standardised
  nothing and used a scaled Matern-5/2 kernel with a Gamma(1.1, 0.05) noise prior: with y values of order
  1e-2 that GP explains them as noise. Writing the transform out keeps a later botorch default from changing
  the method silently.
* Reproducible draws: eps, the exploration draws and the GP fit / acquisition optimisation (run under
  ``torch.random.fork_rng`` with ``torch.manual_seed``) come from seeds derived from (seed, step[, rank]), in
  streams of their own (not the engine's noise and timestep streams). The official code draws from the global
  RNG: unseeded in its README's commands (no ``--seed``); with ``--seed``, ``accelerate``'s ``set_seed`` seeds
  every process alike, so every rank draws the same eps. A resumed run does not restore it.
* The BO runs on rank 0 only and its sigma is broadcast, so every worker holds the same sigma. The official
  code runs the BO and the exploration draw on every process from that process's RNG, so without ``--seed``
  the processes' sigmas drift apart after the first step.
* The weights always apply. With ``--snr_gamma`` the official code skips ``instance_weights`` and never defines
  ``batch_loss`` (the gap it reads is undefined). The engine always multiplies the weights into its loss; the
  per-sample losses the hook receives are the engine's noise term (with Min-SNR weighting when the engine
  applies it), before any sample weight.

State (``state_dict``): sigma and the window's record, as JSON floats (exact round trip: Python floats print as
their shortest exact repr). No RNG state is needed: every draw is seeded by (seed, step[, rank]), so a run
resumed at step t repeats the draws of the uninterrupted run bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fairskin.methods.hooks import HookContext, TrainingHook
from fairskin.methods.spec import VariantSpec, group_slug

VERSION = 1

# Stream tags (numpy SeedSequence spawn keys): the hook's draws never repeat the engine's own (seed, step[, rank])
# streams, whose spawn key is empty.
_STREAM = 0xFD1
_EPS, _EXPLORE, _BO = 0, 1, 2


class Settings(BaseModel):
    """Fair Bayesian Perturbation's settings (the official command-line flags where it has them)."""

    # The docstring under each field is its description (use_attribute_docstrings).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    window: int | None = Field(None, ge=1)
    """Steps between BO updates of sigma (official ``--fair_time_window``): at every step t > 0 with
    t % window == 0 a GP is fitted to the (sigma, y) pairs recorded since the last update. None: the official
    default 50, or half the fine-tune's steps when that is fewer (at least 2), so that a short fine-tune (the
    smoke preset's 6 steps: window 3) still takes a Bayesian step."""

    exploitation_rate: float = Field(0.95, ge=0, le=1)
    """Official ``--fair_exploitation_rate`` r: after every step sigma <- r * sigma + (1 - r) * U(lower, upper)."""

    ucb_beta: float = Field(0.1, ge=0)
    """beta of the upper-confidence-bound acquisition mu + sqrt(beta) * sd (official: 0.1)."""

    sigma_lower: float = Field(0.0, ge=0)
    """Lower bound of every sigma entry: the BO's box and the exploration draws' range (official: 0)."""

    sigma_upper: float = Field(1.0, gt=0)
    """Upper bound of every sigma entry (official: 1)."""

    sigma_init: float = Field(1.0, ge=0)
    """Every sigma entry at step 0 (official: ``torch.ones``); within [sigma_lower, sigma_upper]."""

    num_restarts: int = Field(5, ge=1)
    """``optimize_acqf``'s gradient restarts (official: 5)."""

    raw_samples: int = Field(20, ge=1)
    """``optimize_acqf``'s random points from which the restarts are chosen (official: 20)."""

    @model_validator(mode="after")
    def _check_bounds(self) -> Settings:
        if not self.sigma_lower < self.sigma_upper:
            raise ValueError(f"sigma_lower ({self.sigma_lower}) must be below sigma_upper ({self.sigma_upper})")
        if not self.sigma_lower <= self.sigma_init <= self.sigma_upper:
            raise ValueError(
                f"sigma_init ({self.sigma_init}) must lie in [sigma_lower, sigma_upper] = "
                f"[{self.sigma_lower}, {self.sigma_upper}]"
            )
        if self.raw_samples < self.num_restarts:
            raise ValueError(f"raw_samples ({self.raw_samples}) must be at least num_restarts ({self.num_restarts})")
        return self


def _seed(seed: int, step: int, rank: int | None, purpose: int) -> int:
    """A 63-bit seed from (seed, step[, rank]) in the stream ``purpose`` (as the engine's ``step_generator``)."""
    parts = [seed, step] + ([] if rank is None else [rank])
    state = np.random.SeedSequence(parts, spawn_key=(_STREAM, purpose)).generate_state(1, np.uint64)[0]
    return int(state >> 1)


def draw_generator(seed: int, step: int, rank: int | None, purpose: int) -> torch.Generator:
    """A CPU generator seeded by (seed, step[, rank]) in the hook's stream ``purpose`` (eps, exploration, BO)."""
    return torch.Generator().manual_seed(_seed(seed, step, rank, purpose))


def sample_weights(sigma: torch.Tensor, groups: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights w_i = 1 + sigma[groups_i] * eps_i.

    sigma (K,) float; groups (B,) int in [0, K); eps (B,) float, standard normal draws -> (B,) in eps's dtype.
    """
    return 1.0 + sigma.to(eps.dtype)[groups.long()] * eps


def group_loss_sums(per_sample_loss: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[sum of the losses per group; count per group]: (2, K) float64 on the CPU, summed in a fixed order.

    per_sample_loss (B,) float; groups (B,) int in [0, K). The all-reduce over workers sums these tensors.
    """
    loss = per_sample_loss.detach().to("cpu", torch.float64).reshape(-1)
    groups = groups.detach().to("cpu", torch.long).reshape(-1)
    out = torch.zeros(2, num_groups, dtype=torch.float64)
    out[0].index_add_(0, groups, loss)
    out[1].index_add_(0, groups, torch.ones_like(loss))
    return out


def fairness_reward(group_sums: torch.Tensor, group_counts: torch.Tensor) -> float | None:
    """y = -(max_g m_g - min_g m_g), m_g = group_sums[g] / group_counts[g] over the groups with a count > 0.

    group_sums, group_counts (K,) -> a float <= 0; None when fewer than two groups are present or a mean is not
    finite (the gap is then undefined).
    """
    present = group_counts > 0
    if int(present.sum()) < 2:
        return None
    means = (group_sums[present] / group_counts[present]).to(torch.float64)
    if not bool(torch.isfinite(means).all()):
        return None
    return -float(means.max() - means.min())


def explore(sigma: torch.Tensor, uniform: torch.Tensor, settings: Settings) -> torch.Tensor:
    """The exploration step sigma <- r * sigma + (1 - r) * (lower + (upper - lower) * uniform).

    sigma (K,) in [lower, upper]; uniform (K,) U(0, 1) draws -> (K,) float64, still in [lower, upper].
    """
    rate = settings.exploitation_rate
    draw = settings.sigma_lower + (settings.sigma_upper - settings.sigma_lower) * uniform.to(torch.float64)
    out = rate * sigma.to(torch.float64) + (1.0 - rate) * draw
    return out.clamp(settings.sigma_lower, settings.sigma_upper)  # only rounding can step outside


def propose_sigma(sigmas: torch.Tensor, rewards: torch.Tensor, settings: Settings, seed: int) -> torch.Tensor:
    """The BO step: the maximiser over [lower, upper]^K of UCB(beta) of a ``SingleTaskGP`` fitted to the pairs.

    sigmas (N, K) the sigma of each recorded step; rewards (N,) its y; ``seed`` seeds torch's RNG for the fit and
    the acquisition's optimisation (the caller's RNG state is left as it was) -> (K,) float64 in the box.
    """
    from botorch.acquisition import UpperConfidenceBound
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood

    x = sigmas.detach().to("cpu", torch.float64).reshape(len(rewards), -1)
    y = rewards.detach().to("cpu", torch.float64).reshape(-1, 1)
    k = x.shape[1]
    bounds = torch.tensor([[settings.sigma_lower] * k, [settings.sigma_upper] * k], dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gp = SingleTaskGP(x, y, outcome_transform=Standardize(m=1), input_transform=None)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        ucb = UpperConfidenceBound(gp, beta=settings.ucb_beta)
        candidate, _ = optimize_acqf(
            ucb, bounds=bounds, q=1, num_restarts=settings.num_restarts, raw_samples=settings.raw_samples
        )
    return candidate.detach().reshape(k).to(torch.float64).clamp(settings.sigma_lower, settings.sigma_upper)


def default_window(max_steps: int | None) -> int:
    """The window when the settings leave it to the run: 50 (official), or ``max_steps // 2`` when smaller, >= 2."""
    return 50 if max_steps is None else max(2, min(50, max_steps // 2))


class FairBayesianPerturbation(TrainingHook):
    """FairDiffusion's Fair Bayesian Perturbation (see the module docstring): per-sample weights
    1 + sigma[group] * eps, sigma tuned every ``window`` steps by BO on the global group-loss gap."""

    Settings = Settings

    def __init__(self, settings: Settings, context: HookContext) -> None:
        super().__init__(settings, context)
        self.num_groups = len(context.groups)
        if self.num_groups < 1:
            raise ValueError("fairdiffusion needs at least one group")
        self.sigma = torch.full((self.num_groups,), float(settings.sigma_init), dtype=torch.float64)
        self.window_sigmas: list[list[float]] = []  # the sigma of each recorded step since the last BO update
        self.window_rewards: list[float] = []  # its y
        self.window = settings.window or default_window(context.max_steps)

    def sample_weights(self, step: int, subclass) -> torch.Tensor:
        """(B,) float32 CPU weights 1 + sigma[group] * eps for this rank's ``subclass`` ids (B,) at ``step``."""
        groups = self.context.group_of(torch.as_tensor(subclass).detach().to("cpu", torch.long))
        eps = torch.randn(groups.shape, generator=draw_generator(self.context.seed, step, self.context.rank, _EPS))
        return sample_weights(self.sigma, groups, eps)

    def after_step(self, step: int, per_sample_loss, subclass) -> dict[str, float]:
        """Record (sigma, y) with y from the all-reduced group losses, run the BO step when ``step`` ends a window,
        then the exploration step. Returns the step's sigma per group and its y (nan when undefined)."""
        ctx = self.context
        groups = ctx.group_of(torch.as_tensor(subclass).detach().to("cpu", torch.long))
        local = group_loss_sums(torch.as_tensor(per_sample_loss), groups, self.num_groups)
        total = ctx.all_reduce_sum(local.to(ctx.device)).to("cpu", torch.float64)
        reward = fairness_reward(total[0], total[1])
        used = self.sigma
        if reward is not None:
            self.window_sigmas.append(used.tolist())
            self.window_rewards.append(reward)
        if step > 0 and step % self.window == 0:
            candidate = used
            if ctx.rank == 0 and self.window_rewards:
                candidate = propose_sigma(
                    torch.tensor(self.window_sigmas, dtype=torch.float64),
                    torch.tensor(self.window_rewards, dtype=torch.float64),
                    self.settings,
                    seed=_seed(ctx.seed, step, None, _BO),
                )
            # Every rank takes part in the broadcast, whatever rank 0 decided.
            self.sigma = ctx.broadcast_from_rank0(candidate.to(ctx.device)).to("cpu", torch.float64)
            self.window_sigmas, self.window_rewards = [], []
        uniform = torch.rand(
            self.num_groups, generator=draw_generator(ctx.seed, step, None, _EXPLORE), dtype=torch.float64
        )
        self.sigma = explore(self.sigma, uniform, self.settings)
        metrics = {f"fairdiffusion_sigma_{group_slug(g)}": float(s) for g, s in zip(ctx.groups, used.tolist())}
        metrics["fairdiffusion_y"] = math.nan if reward is None else reward
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """sigma (for the next step) and the window's record, as JSON floats."""
        return {
            "sigma": self.sigma.tolist(),
            "window_sigmas": [list(s) for s in self.window_sigmas],
            "window_rewards": list(self.window_rewards),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; ValueError when it holds another number of groups."""
        sigma = [float(s) for s in state["sigma"]]
        sigmas = [[float(s) for s in row] for row in state.get("window_sigmas", [])]
        rewards = [float(r) for r in state.get("window_rewards", [])]
        if len(sigma) != self.num_groups or any(len(row) != self.num_groups for row in sigmas):
            raise ValueError(f"fairdiffusion state holds sigma for {len(sigma)} groups, this run has {self.num_groups}")
        if len(sigmas) != len(rewards):
            raise ValueError(f"fairdiffusion state: {len(sigmas)} recorded sigmas but {len(rewards)} rewards")
        self.sigma = torch.tensor(sigma, dtype=torch.float64)
        self.window_sigmas, self.window_rewards = sigmas, rewards


HOOKS = {"fairdiffusion": FairBayesianPerturbation}
METHODS = [VariantSpec(name="fairdiffusion", weights="none", loss="dm", hooks={"fairdiffusion": {}})]
