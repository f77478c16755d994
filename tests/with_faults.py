"""Run an engine script with faults registered (the test side of fault injection, for subprocess drivers):

    python tests/with_faults.py [--step-pause S] [--item-pause S] -- jobs/full_pipeline.py ARGS...

registers :class:`faults.StepPause` / :class:`faults.ItemPause` with the engine, then runs the script as
``__main__`` with ``ARGS``. SIGINT gets Python's own handler first, as under a terminal: a test that sends Ctrl-C
to the script must not depend on how the test run was started (a background job of a non-interactive shell, as
``nohup make test &``, starts its children with SIGINT ignored, and Python then keeps ignoring it).
"""

from __future__ import annotations

import argparse
import runpy
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import ItemPause, StepPause  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-pause", type=float, default=0.0, help="seconds before every fine-tune step")
    parser.add_argument("--item-pause", type=float, default=0.0, help="seconds before every pool item")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from fairskin.diffusion import finetune, generate

    if ns.step_pause:
        finetune.STEP_HOOKS.append(StepPause(ns.step_pause))
    if ns.item_pause:
        generate.ITEM_HOOKS.append(ItemPause(ns.item_pause))
    sys.argv = [ns.script, *ns.args]
    runpy.run_path(ns.script, run_name="__main__")


if __name__ == "__main__":
    main()
