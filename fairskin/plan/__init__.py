"""Plan the compute a claim needs: the (R, K, S) that detects a given effect at least cost.

    python -m fairskin plan [--preset P] [--config FILE] [key=value ...] --endpoint E --mde M
        [--power 0.8] [--budget-hours H] [--gpus N] [--gpu-figures FILE] [--method t|normal] [--json]

Design and cost
---------------
One endpoint's paired difference (variant - baseline, the endpoint's units) is measured in a nested
design: R generator repeats (one fine-tune of every variant each), K pools per repeat (sampling
seeds of the same fine-tuned weights), S classifier seeds per pool (classifier endpoints only;
generation endpoints have S = 1). With the variance components sigma2_ft, sigma2_pool, sigma2_cls
(endpoint units squared; :mod:`fairskin.metrics.components` estimates them) a repeat's averaged
difference has variance v(K, S) = sigma2_ft + sigma2_pool / K + sigma2_cls / (K S), and the mean
over R repeats has var_of_mean = v(K, S) / R.

The study's cost is C(R, K, S) = R (c_ft + K (c_pool + S c_cls)) seconds, where (:class:`UnitCosts`)
c_ft is the wall time of one repeat's fine-tunes, c_pool of one pool per variant (generate and
evaluate), c_cls of one (repeat, pool, seed) cell's classifier runs (every variant x downstream
mode of the config's tune space), each over all of the configured variants, since a study runs
them all.

A two-sided test at level alpha with power 1 - beta detects a true difference M when, in the
normal approximation, var_of_mean <= V0 = (M / (z_{1-alpha/2} + z_{power}))^2; the exact version
is the paired t-test over R repeats: MDE(sd = sqrt(v(K, S)), n = R) <= M with the noncentral-t
power equation of :func:`fairskin.metrics.verdicts.mde`. alpha is the family's first (strictest)
Holm level, report.alpha / m with m the number of declared primary endpoints (report.primary):
the level at which the family's smallest p-value is judged.

Inputs, measured or assumed (:func:`measured_costs`, :func:`measured_components`, :func:`gpu_costs`)
----------------------------------------------------------------------------------------------------
Components: the newest ``<runs root>/**/variance_components.csv``. Unit costs: the latest finished
stage records ``<runs root>/stages/<stage>-<key>/_stage.json``: wall seconds per fine-tune, per
pool and per classifier trial at the concurrency they ran with (a stage's seconds over its units),
times the units per level in this config. Of each stage the latest record made with this config's
work settings is used, else the latest within 4x of them scaled linearly by the work (steps x
batch, images x sampling steps, epochs x count scale, pixels). A unit without such a record falls
back to a cost model (``HERE_MODEL``: README run 6, the study preset on 2 CPU cores, scaled the
same way) and is marked assumed. ``cost_gpu_hours``: the plan at ``paper`` scale on
one GPU, from ``benchmarks/gpu.py``'s figures where a file of them is found, else the README's
FLOP cost model (40 % MFU on an H100, assumed).

Modules
-------
::

    design.py        the components, unit costs and integer design; the power of a design (MDE, repeats)
    optimum.py       the nested-design optimiser: closed form (derived in its docstring), integer searches, plan
    cost_records.py  unit costs on this machine from the stage records (else the run-6 cost model)
    components.py    the measured variance components (``variance_components.csv``)
    gpu.py           GPU-hours at paper scale (``benchmarks/gpu.py``'s figures, else the FLOP model)
    cli.py           ``python -m fairskin plan``: options, the run, text and JSON output
"""

from fairskin.plan.cli import add_arguments, first_run_command, main, plan_json, plan_lines, run
from fairskin.plan.components import COMPONENTS_FILE, components_status, measured_components
from fairskin.plan.cost_records import (
    CLS_WORK,
    EVAL_WORK,
    FT_WORK,
    GEN_WORK,
    HERE_MODEL,
    MAX_SCALE,
    STAGE_RECORD,
    level_counts,
    measured_costs,
    stage_records,
)
from fairskin.plan.design import (
    MAX_LEVEL,
    MAX_R,
    MIN_R,
    Components,
    Design,
    Method,
    UnitCosts,
    design_mde,
    repeats_needed,
    target_variance,
    z_sum,
)
from fairskin.plan.gpu import GPU_FIGURES_FILE, PAPER_FLOP, gpu_costs, load_gpu_figures
from fairskin.plan.optimum import Plan, brute_force, closed_form, plan, smallest_mde

__all__ = [
    "CLS_WORK",
    "COMPONENTS_FILE",
    "EVAL_WORK",
    "FT_WORK",
    "GEN_WORK",
    "GPU_FIGURES_FILE",
    "HERE_MODEL",
    "MAX_LEVEL",
    "MAX_R",
    "MAX_SCALE",
    "MIN_R",
    "PAPER_FLOP",
    "STAGE_RECORD",
    "Components",
    "Design",
    "Method",
    "Plan",
    "UnitCosts",
    "add_arguments",
    "brute_force",
    "closed_form",
    "components_status",
    "design_mde",
    "first_run_command",
    "gpu_costs",
    "level_counts",
    "load_gpu_figures",
    "main",
    "measured_components",
    "measured_costs",
    "plan",
    "plan_json",
    "plan_lines",
    "repeats_needed",
    "run",
    "smallest_mde",
    "stage_records",
    "target_variance",
    "z_sum",
]
