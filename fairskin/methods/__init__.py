"""Generator methods: one module per method, a registry by name, and plug-ins by entry point.

A method module declares ``VERSION`` (an int, bumped when what the method makes changes: it is part of
the fine-tune and generate stage keys, so editing a method re-keys what it made) and ``METHODS``, the
variants it registers (:class:`~fairskin.methods.spec.VariantSpec`). A module may also declare
``resolve(name) -> VariantSpec | None`` for a family of names (``control_drop_<group>``).

Built-in modules::

    vanilla      the paper's fine-tune, no resampling (the baseline)
    resampling   level 1: class-balanced (cbrs) and square-root (sqrs) subclass weights
    cbdm         level 2: the class-diversity regulariser on the noise-prediction loss
    fairskin     levels 1 + 2: FairSkin-C (cbrs + CBDM) and FairSkin-S (sqrs + CBDM)
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

from fairskin.methods.spec import VariantSpec

BUILTIN_MODULES = (
    "fairskin.methods.vanilla",
    "fairskin.methods.resampling",
    "fairskin.methods.cbdm",
    "fairskin.methods.fairskin",
    "fairskin.methods.controls",
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
        """What the stage keys hold of this method: the resolved spec, its module and the module's version."""
        return {"spec": self.spec.model_dump(mode="json"), "module": self.module, "version": self.version}


class _Registry:
    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}
        self.resolvers: list[tuple[ModuleType, int]] = []
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

    def add_module(self, module: ModuleType) -> None:
        version = getattr(module, "VERSION", None)
        if not isinstance(version, int) or isinstance(version, bool):
            raise MethodError(f"method module {module.__name__}: VERSION must be an int, got {version!r}")
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

    def get(self, name: str) -> Method | None:
        self.load()
        if name in self.methods:
            return self.methods[name]
        for module, version in self.resolvers:
            spec = module.resolve(name)
            if spec is not None:
                return Method(spec, module.__name__, version)
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
