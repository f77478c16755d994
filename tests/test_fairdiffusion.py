"""FairDiffusion's Fair Bayesian Perturbation hook (fairskin.methods.fairdiffusion): the weights' distribution, the
bounds, the BO step against an independent acquisition evaluation, resume, the all-reduced reward, the registry."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch
from botorch.acquisition import UpperConfidenceBound
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from gpytorch.mlls import ExactMarginalLogLikelihood

from fairskin.diffusion.step import step_generator
from fairskin.methods import check_hooks, get_method
from fairskin.methods.fairdiffusion import (
    FairBayesianPerturbation,
    Settings,
    fairness_reward,
    propose_sigma,
)
from fairskin.methods.hooks import HookContext
from fairskin.methods.spec import VariantSpec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script inside gpytorch / botorch

GROUPS = ("I-II", "III-IV", "V-VI")
NUM_DISEASES = 2


def make_hook(groups=GROUPS, seed=11, rank=0, world=1, **settings) -> FairBayesianPerturbation:
    context = HookContext(seed=seed, groups=tuple(groups), num_diseases=NUM_DISEASES, rank=rank, world=world)
    return FairBayesianPerturbation(Settings(**settings), context)


def subclass_ids(groups: list[int], disease: int = 1) -> torch.Tensor:
    return torch.tensor([g * NUM_DISEASES + disease for g in groups], dtype=torch.long)


def sigma_keys(groups=GROUPS) -> list[str]:
    return [f"fairdiffusion_sigma_{name}" for name in ("i_ii", "iii_iv", "v_vi")[: len(groups)]]


def run_toy(hook: FairBayesianPerturbation, steps, gap) -> list[dict]:
    """Steps of a toy fine-tune whose group 0 loses ``gap(sigma)`` more than group 1 (y = -gap(sigma)); returns the
    metrics of each step."""
    out = []
    sub = subclass_ids([0, 1, 0, 1])
    for step in steps:
        hook.sample_weights(step, sub)
        extra = float(gap(hook.sigma))
        loss = torch.tensor([1.0 + extra, 1.0, 1.0 + extra, 1.0])
        out.append(hook.after_step(step, loss, sub))
    return out


# 1 -------------------------------------------------------------------------------------------------------------


def test_weights_have_mean_one_and_group_std_sigma():
    hook = make_hook(groups=GROUPS + ("extra",))
    sigma = [0.2, 0.7, 1.0, 0.0]
    hook.load_state_dict({"sigma": sigma})
    n = 60_000
    groups = torch.arange(4).repeat_interleave(n)
    w = hook.sample_weights(5, subclass_ids(groups.tolist(), disease=0))
    assert w.shape == (4 * n,) and w.dtype == torch.float32
    w = w.double()
    for g, s in enumerate(sigma):
        wg = w[groups == g]
        if s == 0:
            assert torch.equal(wg, torch.ones_like(wg))  # sigma 0: no perturbation
            continue
        assert abs(float(wg.mean()) - 1.0) < 4 * s / math.sqrt(n)
        assert abs(float(wg.std()) - s) < 4 * s / math.sqrt(2 * n)
    # Draws differ by step and by rank, repeat for the same (seed, step, rank), and are not the engine's noise stream.
    sub = subclass_ids([2] * 64)
    w5 = hook.sample_weights(5, sub)
    assert torch.equal(w5, hook.sample_weights(5, sub))
    assert not torch.equal(w5, hook.sample_weights(6, sub))
    other_rank = make_hook(groups=GROUPS + ("extra",), rank=1)
    other_rank.load_state_dict({"sigma": sigma})
    assert not torch.equal(w5, other_rank.sample_weights(5, sub))
    engine_eps = torch.randn(64, generator=step_generator(11, 5, 0))
    assert not torch.allclose((w5 - 1) / 1.0, engine_eps)


# 2 -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lower", "upper", "target"),
    [(0.0, 1.0, (3.0, 3.0)), (0.2, 0.6, (3.0, 3.0)), (0.2, 0.6, (-2.0, -2.0)), (0.0, 1.0, (-1.0, 2.0))],
)
def test_sigma_stays_in_bounds_under_exploration_and_bo(lower, upper, target):
    """y = -|sigma - target|^2 with ``target`` outside the box pushes sigma against its bounds."""
    settings = {"window": 6, "sigma_lower": lower, "sigma_upper": upper, "sigma_init": upper}
    tgt = torch.tensor(target, dtype=torch.float64)

    # The BO step alone, on pairs spread over the box: its candidate is the box's corner nearest the target.
    x = lower + (upper - lower) * torch.rand(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    candidate = propose_sigma(x, -((x - tgt) ** 2).sum(-1), Settings(**settings), seed=1)
    assert torch.allclose(candidate, tgt.clamp(lower, upper), rtol=0, atol=1e-9), candidate

    # The hook over many steps of exploration and BO (at steps 6, 12, 18, 24).
    hook = make_hook(groups=GROUPS[:2], **settings)
    seen = [[m[k] for k in sigma_keys(GROUPS[:2])] for m in run_toy(hook, range(25), lambda s: ((s - tgt) ** 2).sum())]
    seen = torch.tensor([*seen, hook.sigma.tolist()], dtype=torch.float64)
    assert bool(((seen >= lower) & (seen <= upper)).all()), seen
    # Not vacuous: some BO step moved sigma further than one exploration step can.
    jumps = (seen[7::6] - seen[6:-1:6]).abs().max()
    assert float(jumps) > (1 - 0.95) * (upper - lower), seen


# 3 -------------------------------------------------------------------------------------------------------------


def independent_ucb(x: torch.Tensor, y: torch.Tensor, beta: float = 0.1) -> UpperConfidenceBound:
    """UCB of a SingleTaskGP fitted the way the official code does it (its call, with botorch's defaults)."""
    gp = SingleTaskGP(x.double(), y.double().reshape(-1, 1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    return UpperConfidenceBound(gp, beta=beta)


def grid(points: int, lo=(0.0, 0.0), hi=(1.0, 1.0)) -> torch.Tensor:
    a = torch.linspace(lo[0], hi[0], points, dtype=torch.float64)
    b = torch.linspace(lo[1], hi[1], points, dtype=torch.float64)
    return torch.cartesian_prod(a, b)


def toy_gap(sigma: torch.Tensor) -> torch.Tensor:
    """The toy's group loss gap: smallest (y largest) at sigma = (0.75, 0.25)."""
    return (sigma[..., 0] - 0.75) ** 2 + (sigma[..., 1] - 0.25) ** 2


def test_bo_step_maximises_the_official_acquisition():
    x = torch.rand(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = -toy_gap(x)
    candidate = propose_sigma(x, y, Settings(), seed=5)
    assert candidate.shape == (2,)

    ucb = independent_ucb(x, y)
    with torch.no_grad():
        points = grid(121)
        values = ucb(points.unsqueeze(1))
        best = int(values.argmax())
        at_candidate = float(ucb(candidate.reshape(1, 1, 2)))
    spread = float(values.max() - values.min())
    assert at_candidate >= float(values[best]) - 1e-3 * spread
    argmax = points[best]
    assert torch.equal(candidate > 0.5, argmax > 0.5), (candidate, argmax)
    assert float((candidate - torch.tensor([0.75, 0.25], dtype=torch.float64)).norm()) < 0.15


def test_hook_runs_bo_every_window_then_explores():
    window, rate = 12, 0.95
    hook = make_hook(groups=GROUPS[:2], window=window, exploitation_rate=rate, sigma_init=0.5)
    metrics = run_toy(hook, range(window + 2), toy_gap)
    keys = sigma_keys(GROUPS[:2])
    used = torch.tensor([[m[k] for k in keys] for m in metrics], dtype=torch.float64)
    ys = torch.tensor([m["fairdiffusion_y"] for m in metrics], dtype=torch.float64)
    assert torch.allclose(ys, -toy_gap(used), rtol=0, atol=1e-6)  # float32 losses
    # Every step but the BO step: sigma <- r * sigma + (1 - r) * u with u in [0, 1].
    for t in range(len(metrics) - 1):
        if t == window:
            continue
        low, high = rate * used[t], rate * used[t] + (1 - rate)
        assert bool(((used[t + 1] >= low - 1e-12) & (used[t + 1] <= high + 1e-12)).all()), t
    # At step ``window`` (the official t > 0 and t % W == 0) the GP saw steps 0..W: the candidate c satisfies
    # sigma_{W+1} = r * c + (1 - r) * u, so c lies in a box of side (1 - r) / r; the best independently evaluated UCB
    # over that box is the global best.
    ucb = independent_ucb(used[: window + 1], ys[: window + 1])
    nxt = used[window + 1]
    lo = ((nxt - (1 - rate)) / rate).clamp(0, 1)
    hi = (nxt / rate).clamp(0, 1)
    with torch.no_grad():
        everywhere = ucb(grid(101).unsqueeze(1))
        in_box = ucb(grid(21, lo.tolist(), hi.tolist()).unsqueeze(1))
    spread = float(everywhere.max() - everywhere.min())
    assert float(in_box.max()) >= float(everywhere.max()) - 0.02 * spread


# 4 -------------------------------------------------------------------------------------------------------------


def test_state_round_trip_continues_bit_equal():
    settings = {"window": 4, "exploitation_rate": 0.9}
    sub = subclass_ids([0, 1, 2, 2, 1, 0, 2, 1])

    def step(hook, t):
        w = hook.sample_weights(t, sub)
        loss = torch.linspace(0.1, 0.8, 8) * (1 + torch.arange(8) % 3) + hook.sigma[sub // NUM_DISEASES].float()
        return w, hook.after_step(t, loss, sub)

    straight = make_hook(**settings)
    for t in range(7):  # BO at step 4; steps 5, 6 recorded in the next window
        step(straight, t)
    state = json.loads(json.dumps(straight.state_dict()))
    assert len(state["window_rewards"]) == 2

    resumed = make_hook(**settings)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sigma, straight.sigma)
    assert resumed.window_sigmas == straight.window_sigmas and resumed.window_rewards == straight.window_rewards
    for t in range(7, 14):  # BO at steps 8 and 12
        w_a, m_a = step(straight, t)
        w_b, m_b = step(resumed, t)
        assert torch.equal(w_a, w_b), t
        assert torch.equal(straight.sigma, resumed.sigma), t
        assert m_a == m_b
    with pytest.raises(ValueError, match="groups"):
        make_hook(groups=GROUPS[:2]).load_state_dict(state)


# 5 -------------------------------------------------------------------------------------------------------------


class TwoWorkers:
    """Collectives between two threads: an all-reduce (sum) and a broadcast from rank 0."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=120)
        self.slots: list[torch.Tensor | None] = [None, None]
        self.calls = {"all_reduce": 0, "broadcast": 0}

    def _exchange(self, rank: int, tensor: torch.Tensor, combine) -> torch.Tensor:
        self.slots[rank] = tensor.clone()
        self.barrier.wait()
        out = combine(self.slots[0], self.slots[1])
        self.barrier.wait()
        return out

    def context(self, rank: int) -> HookContext:
        def all_reduce_sum(t):
            if rank == 0:
                self.calls["all_reduce"] += 1
            return self._exchange(rank, t, lambda a, b: a + b)

        def broadcast_from_rank0(t):
            if rank == 0:
                self.calls["broadcast"] += 1
            return self._exchange(rank, t, lambda a, b: a.clone())

        return HookContext(
            seed=3,
            groups=GROUPS,
            num_diseases=NUM_DISEASES,
            rank=rank,
            world=2,
            all_reduce_sum=all_reduce_sum,
            broadcast_from_rank0=broadcast_from_rank0,
        )


def test_reward_uses_the_losses_of_all_workers():
    workers = TwoWorkers()
    settings = Settings(window=2)
    hooks = [FairBayesianPerturbation(settings, workers.context(r)) for r in range(2)]
    # Rank 0 sees groups 0 and 1, rank 1 groups 1 and 2: group 2 exists only in rank 1's shard.
    groups = [[0, 0, 1, 1, 0], [1, 2, 2, 1, 2]]
    steps = range(5)  # BO at steps 2 and 4

    def losses(rank, t):
        return torch.tensor([0.1 * (t + 1) + 0.37 * i + 0.5 * rank for i in range(5)], dtype=torch.float32)

    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(rank):
        try:
            for t in steps:
                sub = subclass_ids(groups[rank])
                hooks[rank].sample_weights(t, sub)
                results[rank].append((hooks[rank].after_step(t, losses(rank, t), sub), hooks[rank].sigma.clone()))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
            workers.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert workers.calls == {"all_reduce": 5, "broadcast": 2}

    for t in steps:
        union: dict[int, list[float]] = {}
        shard0: dict[int, list[float]] = {}
        for rank in range(2):
            for g, value in zip(groups[rank], losses(rank, t).tolist()):
                union.setdefault(g, []).append(value)
                if rank == 0:
                    shard0.setdefault(g, []).append(value)
        means = [sum(v) / len(v) for v in union.values()]
        expected = -(max(means) - min(means))
        shard_means = [sum(v) / len(v) for v in shard0.values()]
        assert abs(expected - (-(max(shard_means) - min(shard_means)))) > 0.1  # the test tells them apart
        for rank in range(2):
            metrics, sigma = results[rank][t]
            assert metrics["fairdiffusion_y"] == pytest.approx(expected, abs=1e-6), (rank, t)
        assert torch.equal(results[0][t][1], results[1][t][1]), t  # every worker holds the same sigma


def test_absent_groups_are_left_out_of_the_gap():
    sums = torch.tensor([2.0, 0.0, 9.0], dtype=torch.float64)
    counts = torch.tensor([4.0, 0.0, 3.0], dtype=torch.float64)
    assert fairness_reward(sums, counts) == pytest.approx(-(3.0 - 0.5))
    assert fairness_reward(sums, torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64)) is None
    assert fairness_reward(torch.tensor([1.0, math.inf, 0.0]), torch.tensor([1.0, 1.0, 0.0])) is None
    # A batch of one group records nothing (y undefined: nan, which the engine does not log).
    hook = make_hook(window=50)
    sub = subclass_ids([1, 1, 1])
    metrics = hook.after_step(0, torch.tensor([0.1, 0.2, 0.3]), sub)
    assert math.isnan(metrics["fairdiffusion_y"]) and hook.window_rewards == []


# 6 -------------------------------------------------------------------------------------------------------------


def test_registry_resolves_fairdiffusion_with_default_settings():
    spec = get_method("fairdiffusion").spec
    assert spec.weights == "none" and spec.loss == "dm"
    assert spec.hooks == {
        "fairdiffusion": {
            "window": None,
            "exploitation_rate": 0.95,
            "ucb_beta": 0.1,
            "sigma_lower": 0.0,
            "sigma_upper": 1.0,
            "sigma_init": 1.0,
            "num_restarts": 5,
            "raw_samples": 20,
        }
    }
    with pytest.raises(ValueError, match="time_window"):
        check_hooks(VariantSpec(name="fd_custom", hooks={"fairdiffusion": {"time_window": 30}}))
    with pytest.raises(ValueError, match="sigma_init"):
        check_hooks(VariantSpec(name="fd_custom", hooks={"fairdiffusion": {"sigma_upper": 0.5}}))
    custom = check_hooks(VariantSpec(name="fd_custom", hooks={"fairdiffusion": {"window": 30}}))
    assert custom.hooks["fairdiffusion"]["window"] == 30 and custom.hooks["fairdiffusion"]["ucb_beta"] == 0.1


def test_the_default_window_is_the_official_50_or_half_a_short_fine_tune():
    """Hand-worked: the paper's 12,000 steps and the study's 200 keep the official 50; the smoke preset's 6 steps
    get 3 (a Bayesian step at step 3), never fewer than 2 pairs; a window set in the settings wins."""
    from fairskin.methods.fairdiffusion import default_window

    assert [default_window(n) for n in (12_000, 200, 100, 6, 3, None)] == [50, 50, 50, 3, 2, 50]
    context = HookContext(seed=0, groups=("a", "b"), num_diseases=2, max_steps=6)
    assert FairBayesianPerturbation(Settings(), context).window == 3
    assert FairBayesianPerturbation(Settings(window=5), context).window == 5
