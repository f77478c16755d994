"""One process-wide lock for building and loading models (no dependencies: the GPU benchmark imports it).

diffusers' and transformers' ``from_pretrained`` patch ``nn.Module.register_parameter`` (meta device) and
``torch.nn.init`` (no initialisation) for the whole process while they build the model: a model built on
another thread at that moment comes out on the meta device, or silently uninitialised. Threads build
models here (a background stage beside the next ones, variants fine-tuned from driver threads), so every
build or load of a model holds :data:`model_lock`; re-entrant, since a loader may build.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

model_lock = threading.RLock()


def one_model_at_a_time(build: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a function that builds or loads a model so that it holds :data:`model_lock`."""

    @functools.wraps(build)
    def holding_the_lock(*args: Any, **kwargs: Any) -> Any:
        with model_lock:
            return build(*args, **kwargs)

    return holding_the_lock
