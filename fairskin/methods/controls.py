"""The engine's controls, generators whose difference from vanilla is known, so that a claim can show
what it detects:

- ``vanilla_twin`` (negative): vanilla under its own generator seeds (``seed_salt``), equivalent to vanilla;
- ``control_drop_<group>`` (positive): vanilla whose fine-tune and base never see the group's images;
- ``control_mix_<group>_<pct>`` (graded): no fine-tune of its own; a pool mixing control_drop_<group>'s
  images for that group with probability pct / 100 into vanilla's (``fairskin.diffusion.mix_pool``).
"""

from __future__ import annotations

from fairskin.methods.spec import CONTROL_DROP_PREFIX, VariantSpec, is_mix_control, parse_mix_control

VERSION = 1
METHODS = [VariantSpec(name="vanilla_twin", weights="none", loss="dm", seed_salt=1)]


def resolve(name: str) -> VariantSpec | None:
    """The spec of a control family member (``control_drop_<group>``, ``control_mix_<group>_<pct>``), else None.

    A mixed pool has no fine-tune: it gets vanilla's spec under its own name, so its repeat seeds are vanilla's.
    """
    if name.startswith(CONTROL_DROP_PREFIX):
        return VariantSpec(
            name=name, weights="none", apply="sampler", loss="dm", drop_group=name.removeprefix(CONTROL_DROP_PREFIX)
        )
    if is_mix_control(name):
        parse_mix_control(name)  # a malformed name fails here, naming the expected form
        return VariantSpec(name=name, weights="none", loss="dm")
    return None


def is_control(variant: str) -> bool:
    """Whether ``variant`` exists to test the engine (``vanilla_twin``, ``control_drop_<group>``,
    ``control_mix_<group>_<pct>``)."""
    return variant == "vanilla_twin" or variant.startswith(CONTROL_DROP_PREFIX) or is_mix_control(variant)
