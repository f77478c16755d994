"""What a generator method is made of, as validated settings: :class:`VariantSpec`.

A *variant* is a named method configuration: the level-1 subclass weights and how they apply, the loss
(the paper's noise-prediction loss, or CBDM's regulariser on top), its CBDM strength, its learning rate and
steps, a seed salt (a twin under its own randomness) and a dropped group (a positive control). The modules
of :mod:`fairskin.methods` declare variants; the configuration (``diffusion.variants``) names them.

This module imports pydantic only: the configuration imports it, never the other way round.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Variant names: a generator id is "<variant>" or "<variant>-r<k>", so no "-" in names.
VARIANT_NAME = r"^[a-z][a-z0-9_]{0,63}$"

CONTROL_DROP_PREFIX = "control_drop_"  # control_drop_<group>: vanilla without that group's images
# control_mix_<group>_<pct>: a pool, not a fine-tune (fairskin.diffusion.mix_pool): each of the group's images
# from control_drop_<group>'s pool with probability pct / 100, else vanilla's. pct an integer (no '.' in names).
CONTROL_MIX_PREFIX = "control_mix_"
_MIX = re.compile(r"^control_mix_(?P<slug>[a-z0-9_]+?)_(?P<pct>[0-9]{1,2})$")


class VariantSpec(BaseModel):
    """One diffusion fine-tune configuration (a method under a name; see :mod:`fairskin.methods`).

    ``weights``: level-1 subclass weights; ``apply``: how they are applied, exactly one way
    (``sampler``: a weighted draw per epoch; ``loss``: per-sample loss weights on a plain
    shuffle); ``loss``: ``dm`` or ``cbdm``. ``cbdm_tau`` / ``cbdm_gamma``: this variant's CBDM
    strength (None: ``diffusion.cbdm_tau`` / ``cbdm_gamma``). ``seed_salt``: mixed into every
    generator seed of the variant, so a twin of another variant (same settings, own salt)
    is trained and sampled under its own randomness.
    """

    # As the configuration's sections: unknown keys, wrong types and inf / nan name the field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True, allow_inf_nan=False)

    name: str = Field(pattern=VARIANT_NAME)
    weights: Literal["none", "cbrs", "sqrs"] = "none"
    apply: Literal["sampler", "loss"] = "sampler"
    loss: Literal["dm", "cbdm"] = "dm"
    cbdm_tau: float | None = Field(None, ge=0)
    cbdm_gamma: float | None = Field(None, ge=0)
    seed_salt: int = Field(0, ge=0)
    # This variant's learning rate and fine-tune steps (None: diffusion.learning_rate / max_steps), so a
    # generator study's trial (issue 17) can enter the ablation as a variant with all its settings.
    learning_rate: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    # A control: the group (its name, any case; spaces as "_") whose training images this variant's
    # fine-tune and the base it starts from never see, so the generator is known to be worse for it.
    drop_group: str | None = Field(None, min_length=1)
    # The method hooks this variant trains with, in order, each with its settings (a method module registers the
    # hook under its name: fairskin.methods.hooks); validated by the hook's own Settings when the registry resolves
    # the variant. Empty: the plain fine-tune loop.
    hooks: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def fingerprint_dump(self) -> dict[str, Any]:
        """The spec as the stage keys hold it: without ``hooks`` when it has none, so the variants that existed
        before hooks keep their keys."""
        return self.model_dump(mode="json", exclude=set() if self.hooks else {"hooks"})


def parse_mix_control(name: str) -> tuple[str, int]:
    """``"control_mix_african_20"`` -> ``("african", 20)``; ValueError unless pct is an integer in 1..99."""
    match = _MIX.match(name)
    if match is None or not 1 <= int(match["pct"]) <= 99:
        raise ValueError(f"{name!r} is not control_mix_<group>_<pct> with pct an integer from 1 to 99")
    return match["slug"], int(match["pct"])


def is_mix_control(name: str) -> bool:
    """Whether variant ``name`` is a mixed pool (no fine-tune of its own)."""
    return name.startswith(CONTROL_MIX_PREFIX)


def group_slug(group: str) -> str:
    """A group name as it appears in a variant name: ``"African"`` -> ``"african"``."""
    return re.sub(r"[^a-z0-9]+", "_", group.lower()).strip("_")
