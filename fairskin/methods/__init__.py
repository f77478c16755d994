"""Generator methods: one module per method, a registry by name, and plug-ins by entry point.

A method module declares ``VERSION`` (an int, bumped when what the method makes changes: it is part of
the fine-tune and generate stage keys, so editing a method re-keys what it made) and ``METHODS``, the
variants it registers (:class:`~fairskin.methods.spec.VariantSpec`). A module may also declare
``resolve(name) -> VariantSpec | None`` for a family of names (``control_drop_<group>``), and ``HOOKS``,
the :class:`~fairskin.methods.hooks.TrainingHook` classes it adds to the fine-tune loop by name (a variant
uses them through ``VariantSpec.hooks``: ``lora`` and ``fairdiffusion`` do).

Built-in modules::

    vanilla      the paper's fine-tune, no resampling (the baseline)
    resampling   level 1: class-balanced (cbrs) and square-root (sqrs) subclass weights
    cbdm         level 2: the class-diversity regulariser on the noise-prediction loss
    fairskin     levels 1 + 2: FairSkin-C (cbrs + CBDM) and FairSkin-S (sqrs + CBDM)
    lora         low-rank adapters on the UNet's attention (peft), alone or with FairSkin's levels
    fairdiffusion  FairDiffusion's Fair Bayesian Perturbation of the per-sample loss weights (botorch)
    controls     the engine's controls: vanilla_twin, control_drop_<group>, control_mix_<group>_<pct>

A package installed beside the engine adds its own with an entry point (``pyproject.toml``)::

    [project.entry-points."fairskin.methods"]
    my_method = "my_package.my_method"    # a module with VERSION and METHODS

and ``diffusion.variants=[vanilla,my_method]`` then runs it through every stage.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType

from fairskin.methods.hooks import HookContext, TrainingHook
from fairskin.methods.spec import VariantSpec

BUILTIN_MODULES = (
    "fairskin.methods.vanilla",
    "fairskin.methods.resampling",
    "fairskin.methods.cbdm",
    "fairskin.methods.fairskin",
    "fairskin.methods.controls",
    "fairskin.methods.lora",
    "fairskin.methods.fairdiffusion",
)
ENTRY_POINT_GROUP = "fairskin.methods"


class MethodError(ValueError):
    """A method module that cannot be used: names the module and what is wrong."""


@dataclass(frozen=True)
class Method:
    """A registered variant: its spec and the module (and that module's version) that declared it."""

    spec: VariantSpec
    module: str
    version: int

    def fingerprint(self) -> dict:
        """What the stage keys hold of this method: the resolved spec, its module and the module's version, and
        the module and version of each hook it uses."""
        out = {"spec": self.spec.fingerprint_dump(), "module": self.module, "version": self.version}
        if self.spec.hooks:
            out["hooks"] = {name: f"{_REGISTRY.hook(name)[1]}@{_REGISTRY.hook(name)[2]}" for name in self.spec.hooks}
        return out


class _Registry:
    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}
        self.resolvers: list[tuple[ModuleType, int]] = []
        self.hooks: dict[str, tuple[type[TrainingHook], str, int]] = {}  # name -> (class, module, version)
        self.loaded = False

    def load(self) -> None:
        if self.loaded:
            return
        self.loaded = True  # before importing: a module that imports the registry does not recurse
        for name in BUILTIN_MODULES:
            self.add_module(importlib.import_module(name))
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                module = entry.load()
            except Exception as exc:  # an installed plug-in that does not import: say which
                raise MethodError(f"method plug-in {entry.name!r} ({entry.value}) failed to import: {exc}") from exc
            if not isinstance(module, ModuleType):
                raise MethodError(f"method plug-in {entry.name!r} ({entry.value}) must name a module")
            self.add_module(module)
        # Hook settings checked once every module's hooks are known, their defaults filled in (so a changed
        # default re-keys what the method made).
        for name, method in self.methods.items():
            self.methods[name] = Method(check_hooks(method.spec), method.module, method.version)

    def add_module(self, module: ModuleType) -> None:
        version = getattr(module, "VERSION", None)
        if not isinstance(version, int) or isinstance(version, bool):
            raise MethodError(f"method module {module.__name__}: VERSION must be an int, got {version!r}")
        for name, cls in getattr(module, "HOOKS", {}).items():
            if not (isinstance(cls, type) and issubclass(cls, TrainingHook)):
                raise MethodError(f"method module {module.__name__}: HOOKS[{name!r}] is not a TrainingHook subclass")
            if name in self.hooks:
                raise MethodError(
                    f"method module {module.__name__}: hook {name!r} is already registered by {self.hooks[name][1]}"
                )
            self.hooks[name] = (cls, module.__name__, version)
        specs = getattr(module, "METHODS", [])
        for spec in specs:
            if not isinstance(spec, VariantSpec):
                raise MethodError(f"method module {module.__name__}: METHODS holds {spec!r}, not a VariantSpec")
            if spec.name in self.methods:
                raise MethodError(
                    f"method module {module.__name__}: {spec.name!r} is already registered by "
                    f"{self.methods[spec.name].module}"
                )
            self.methods[spec.name] = Method(spec, module.__name__, version)
        if callable(getattr(module, "resolve", None)):
            self.resolvers.append((module, version))

    def hook(self, name: str) -> tuple[type[TrainingHook], str, int]:
        self.load()
        if name not in self.hooks:
            raise KeyError(f"unknown method hook {name!r}; registered: {sorted(self.hooks)}")
        return self.hooks[name]

    def get(self, name: str) -> Method | None:
        self.load()
        if name in self.methods:
            return self.methods[name]
        for module, version in self.resolvers:
            spec = module.resolve(name)
            if spec is not None:
                return Method(check_hooks(spec), module.__name__, version)
        return None


_REGISTRY = _Registry()


def method_names() -> list[str]:
    """The registered method names (families such as ``control_drop_<group>`` are not listed)."""
    _REGISTRY.load()
    return sorted(_REGISTRY.methods)


def find_method(name: str) -> Method | None:
    """The method registered under ``name`` or resolved by a module's ``resolve``; None when unknown."""
    return _REGISTRY.get(name)


def get_method(name: str) -> Method:
    """The method ``name``; KeyError naming the registered ones when unknown."""
    method = find_method(name)
    if method is None:
        raise KeyError(f"unknown method {name!r}; registered: {method_names()}")
    return method


def method_spec(name: str, apply: str | None = None) -> VariantSpec:
    """The spec of method ``name`` (optionally with another weight-application mode)."""
    spec = get_method(name).spec
    return spec if apply is None else spec.model_copy(update={"apply": apply})


def methods_fingerprint(methods: Iterable[Method]) -> str:
    """16 hex digits over the methods' resolved specs, modules and versions (order-free)."""
    blob = json.dumps(sorted((m.fingerprint() for m in methods), key=lambda f: f["spec"]["name"]), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_hooks(spec: VariantSpec) -> VariantSpec:
    """``spec`` with each hook's settings validated by its ``Settings`` (defaults filled in); ValueError naming the
    variant, the hook and the field otherwise."""
    checked = {}
    for name, settings in spec.hooks.items():
        try:
            cls = _REGISTRY.hook(name)[0]
        except KeyError as exc:
            raise ValueError(f"variant {spec.name!r}: {exc.args[0]}") from None
        try:
            checked[name] = cls.Settings(**settings).model_dump(mode="json")
        except Exception as exc:
            raise ValueError(f"variant {spec.name!r}, hook {name!r}: {exc}") from None
    return spec if checked == spec.hooks else spec.model_copy(update={"hooks": checked})


def build_hooks(variant: dict, context: HookContext) -> list[TrainingHook]:
    """The hooks of a variant (a ``VariantSpec`` dump, as the fine-tune loop receives it), in order, built with their
    validated settings for ``context``."""
    hooks = []
    for name, settings in (variant.get("hooks") or {}).items():
        cls = _REGISTRY.hook(name)[0]
        hooks.append(cls(cls.Settings(**settings), context))
    return hooks
