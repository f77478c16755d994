"""Progress display for long work (rich), switchable off for tests and logs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_bar(
    items: Iterable[T], total: int | None = None, description: str = "", enabled: bool = True
) -> Iterator[T]:
    """Yield ``items`` while showing a rich progress bar (nothing is shown when disabled, nor while another
    bar is on screen: a background stage's bar and the next stage's cannot share the console)."""
    if not enabled:
        yield from items
        return
    from rich.errors import LiveError
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    progress = Progress(*columns, transient=False)
    try:
        progress.start()
    except LiveError:
        yield from items
        return
    with progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
