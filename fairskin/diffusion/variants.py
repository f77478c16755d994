"""Generator ids and their seeds: a generator is a variant (a method under a name, :mod:`fairskin.methods`)
fine-tuned and sampled under one repeat's seed, named ``<variant>`` for repeat 0 and ``<variant>-r<k>`` after."""

from __future__ import annotations

from fairskin.config import DiffusionConfig


def generator_seed(diffusion: DiffusionConfig, generator: str) -> int:
    """The seed of a generator (fine-tune and pool): ``diffusion.repeat_seeds[r]`` for repeat r,
    mixed with the variant's ``seed_salt`` when it has one. Every variant without a salt shares
    repeat r's seed, so its fine-tune draws and pool noise are those of the other variants."""
    from fairskin.provenance import split_generator_id

    variant, repeat = split_generator_id(generator)
    if repeat >= len(diffusion.repeat_seeds):
        raise ValueError(
            f"generator {generator!r}: repeat {repeat} but diffusion.repeat_seeds has "
            f"{len(diffusion.repeat_seeds)} seed(s)"
        )
    return salted_seed(diffusion.repeat_seeds[repeat], diffusion.variant(variant).seed_salt)


def salted_seed(seed: int, salt: int) -> int:
    """``seed`` mixed with a variant's ``seed_salt`` (an int in [0, 2^31)); salt 0 leaves it unchanged."""
    import numpy as np

    if salt == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(salt)]).generate_state(1, np.uint64)[0] >> 33)


# The noise of pool seed k > 0 comes from (generator seed, POOL_STREAM, k): a stream no variant salt or repeat seed
# reaches (salted_seed mixes two words, this three).
POOL_STREAM = 0x706F6F6C  # "pool"


def pool_noise_seed(diffusion: DiffusionConfig, pool: str) -> int:
    """The seed of a pool's noise: its generator's seed (:func:`generator_seed`) for pool seed 0, the pool every run
    made before ``generation.pool_seeds``; for pool seed k > 0 a seed drawn from (generator seed, POOL_STREAM, k)."""
    import numpy as np

    from fairskin.provenance import split_pool_id

    generator, k = split_pool_id(pool)
    seed = generator_seed(diffusion, generator)
    if k == 0:
        return seed
    return int(np.random.SeedSequence([seed, POOL_STREAM, int(k)]).generate_state(1, np.uint64)[0] >> 33)


def pool_ids(generators_: list[str], pool_seeds: list[int]) -> list[str]:
    """Every pool of ``generators_`` under ``pool_seeds`` (``generation.pool_seeds``), generator-major:
    ``[vanilla, vanilla-p1, vanilla-r1, vanilla-r1-p1, ...]`` for pool seeds [0, 1]."""
    from fairskin.provenance import pool_id

    return [pool_id(g, k) for g in generators_ for k in pool_seeds]


def generators(diffusion: DiffusionConfig) -> list[str]:
    """Every generator id of the configuration, repeat-major within each variant:
    ``[vanilla, vanilla-r1, ..., fairskin_s, fairskin_s-r1, ...]``."""
    from fairskin.provenance import generator_id

    return [generator_id(v, r) for v in diffusion.variants for r in range(diffusion.repeats)]


def is_control(variant: str) -> bool:
    """Whether ``variant`` exists to test the engine (see :mod:`fairskin.methods.controls`)."""
    from fairskin.methods.controls import is_control as control

    return control(variant)


def fine_tuned_generators(diffusion: DiffusionConfig) -> list[str]:
    """The generator ids that are fine-tuned: :func:`generators` less the mixed-pool controls."""
    from fairskin.config import is_mix_control
    from fairskin.provenance import split_generator_id

    return [g for g in generators(diffusion) if not is_mix_control(split_generator_id(g)[0])]
