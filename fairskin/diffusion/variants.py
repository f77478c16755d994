"""The diffusion fine-tune variants of the paper, as a registry (adding one is adding an entry).

weights: level-1 subclass weights; apply: how they are applied (exactly one way); loss: dm or cbdm.
"""

from __future__ import annotations

from fairskin.config import VariantSpec

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
):
    register_variant(_spec)


def get_variant(name: str, apply: str | None = None) -> VariantSpec:
    """The registered variant ``name`` (optionally with another weight-application mode)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; registered: {sorted(VARIANTS)}")
    spec = VARIANTS[name]
    return spec if apply is None else spec.model_copy(update={"apply": apply})
