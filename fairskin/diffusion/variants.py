"""The diffusion fine-tune variants of the paper, as a registry (adding one is adding an entry).

weights: level-1 subclass weights; apply: how they are applied (exactly one way); loss: dm or cbdm.
"""

from __future__ import annotations

from fairskin.config import DiffusionConfig, VariantSpec

VARIANTS: dict[str, VariantSpec] = {}


def register_variant(spec: VariantSpec) -> VariantSpec:
    VARIANTS[spec.name] = spec
    return spec


for _spec in (
    VariantSpec(name="vanilla", weights="none", loss="dm"),
    VariantSpec(name="cbrs", weights="cbrs", loss="dm"),
    VariantSpec(name="sqrs", weights="sqrs", loss="dm"),
    VariantSpec(name="cbdm", weights="none", loss="cbdm"),
    VariantSpec(name="fairskin_c", weights="cbrs", loss="cbdm"),
    VariantSpec(name="fairskin_s", weights="sqrs", loss="cbdm"),
    # A negative control: vanilla under its own generator seeds, known to be equivalent to vanilla.
    # (The positive control, control_drop_<group>, is resolved by name: DiffusionConfig.variant.)
    VariantSpec(name="vanilla_twin", weights="none", loss="dm", seed_salt=1),
):
    register_variant(_spec)


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


def generators(diffusion: DiffusionConfig) -> list[str]:
    """Every generator id of the configuration, repeat-major within each variant:
    ``[vanilla, vanilla-r1, ..., fairskin_s, fairskin_s-r1, ...]``."""
    from fairskin.provenance import generator_id

    return [generator_id(v, r) for v in diffusion.variants for r in range(diffusion.repeats)]


def is_control(variant: str) -> bool:
    """Whether ``variant`` exists to test the engine (``vanilla_twin``, ``control_drop_<group>``,
    ``control_mix_<group>_<pct>``)."""
    from fairskin.config import CONTROL_DROP_PREFIX, CONTROL_MIX_PREFIX

    return variant == "vanilla_twin" or variant.startswith((CONTROL_DROP_PREFIX, CONTROL_MIX_PREFIX))


def fine_tuned_generators(diffusion: DiffusionConfig) -> list[str]:
    """The generator ids that are fine-tuned: :func:`generators` less the mixed-pool controls."""
    from fairskin.config import is_mix_control
    from fairskin.provenance import split_generator_id

    return [g for g in generators(diffusion) if not is_mix_control(split_generator_id(g)[0])]


def get_variant(name: str, apply: str | None = None) -> VariantSpec:
    """The registered variant ``name`` (optionally with another weight-application mode)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; registered: {sorted(VARIANTS)}")
    spec = VARIANTS[name]
    return spec if apply is None else spec.model_copy(update={"apply": apply})
