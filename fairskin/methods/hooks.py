"""What a method may change in a fine-tune: :class:`TrainingHook`, the interface the one fine-tune loop
(:mod:`fairskin.diffusion.loop`) calls, and :class:`HookContext`, what the loop tells a hook.

A variant names its hooks with their settings (``VariantSpec.hooks = {"lora": {"rank": 8}}``); a method
module registers hook classes by name (``HOOKS = {"lora": LoraHook}``). The loop, for each hook in order:

    hook.configure_unet(unet)                       # before the optimizer: add adapters, freeze parameters
    rate = hook.learning_rate(rate)                 # the optimizer's learning rate
    hook.load_weights(unet, checkpoint)             # on resume, where the hook saved its own weights
    hook.load_state_dict(state["hooks"][name])      # on resume: what it carries across steps
    for each step:
        w = hook.sample_weights(step, subclass)     # (B,) multiplies the level-1 weights, or None
        ... one optimizer step ...
        hook.after_step(step, per_sample_loss, subclass)   # update its state; returns metrics to log
    at a checkpoint: hook.save_weights(unet, folder), hook.state_dict()
    at the end: hook.export(unet, pipeline_folder)  # its part of the result (LoRA's adapter file beside the base)

Only the parameters that require gradients train (the optimizer takes those). A hook that keeps no EMA copy
(``keeps_ema = False``: the EMA follows the whole UNet, an adapter method trains a few parameters) turns the
EMA off for its variant.

This module imports pydantic and torch only: methods import no engine module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


def _identity(tensor):
    return tensor


@dataclass(frozen=True)
class HookContext:
    """What a hook knows of the fine-tune it runs in.

    ``seed``: the generator's seed (a hook's draws are seeded by (seed, step[, rank]) so a resumed run repeats
    them); ``rank`` / ``world``: this worker and how many train; ``groups``: the skin-tone group names, and
    ``num_diseases``: subclass ids are group-major (``subclass = group * num_diseases + disease``);
    ``all_reduce_sum`` / ``broadcast_from_rank0``: collectives over the workers (identities on one);
    ``max_steps``: the fine-tune's optimizer steps (None: unknown).
    """

    seed: int
    groups: tuple[str, ...]
    num_diseases: int
    max_steps: int | None = None
    rank: int = 0
    world: int = 1
    device: Any = "cpu"
    all_reduce_sum: Callable[[Any], Any] = field(default=_identity)
    broadcast_from_rank0: Callable[[Any], Any] = field(default=_identity)

    def group_of(self, subclass):
        """The group index of each subclass id: an int tensor (B,) -> (B,)."""
        return subclass // self.num_diseases


class NoSettings(BaseModel):
    """A hook without settings."""

    model_config = ConfigDict(extra="forbid")


class TrainingHook:
    """A method's part in the fine-tune loop; every method here does nothing (the paper's plain fine-tune).

    Subclasses set ``Settings`` (a pydantic model: a variant's ``hooks[name]`` is validated by it, unknown keys
    and wrong types named) and override what they change.
    """

    Settings: ClassVar[type[BaseModel]] = NoSettings
    keeps_ema: ClassVar[bool] = True
    adapter: ClassVar[bool] = False  # the result is a file beside the base pipeline, whose UNet stays the base

    def __init__(self, settings: BaseModel, context: HookContext) -> None:
        self.settings = settings
        self.context = context

    def configure_unet(self, unet) -> None:
        """Change the UNet before the optimizer is built (add adapters, freeze what does not train)."""

    def learning_rate(self, rate: float) -> float:
        """The optimizer's learning rate given the variant's ``rate`` (an adapter method may scale it)."""
        return rate

    def save_weights(self, unet, folder: Path) -> bool:
        """Save the trained weights into checkpoint ``folder`` the hook's way; True when it did (the loop then
        saves no ``unet`` folder)."""
        return False

    def load_weights(self, unet, folder: Path) -> bool:
        """Load what :meth:`save_weights` saved in checkpoint ``folder`` into the configured ``unet``; True when
        it did."""
        return False

    def export(self, unet, pipeline_folder: Path) -> None:
        """Write the hook's part of the result into ``pipeline_folder`` (a saved pipeline: the base's UNet when
        ``adapter``, else the trained one), e.g. an adapter's weights file."""

    def export_checkpoint(self, checkpoint: Path, pipeline_folder: Path) -> None:
        """As :meth:`export`, from a checkpoint folder that :meth:`save_weights` wrote."""

    def sample_weights(self, step: int, subclass) -> Any | None:
        """Per-sample loss multipliers (B,) float32 for step ``step`` (0-based) of this rank's ``subclass`` ids
        (B,), or None for ones."""
        return None

    def after_step(self, step: int, per_sample_loss, subclass) -> dict[str, float]:
        """After optimizer step ``step`` (0-based): this rank's per-sample noise losses (B,) (detached, before any
        weight) and subclass ids (B,). Returns metrics to log (floats)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the hook carries across steps, as JSON (saved in every checkpoint's ``state.json``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


def hook_names(hooks: Sequence[TrainingHook]) -> list[str]:
    """The class names of ``hooks`` (for messages)."""
    return [type(h).__name__ for h in hooks]
