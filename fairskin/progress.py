"""Progress display for long work.

* :func:`progress_bar`: a rich bar around an iterable, switchable off for tests and logs.
* :class:`StepProgress`: a reporter for a long training loop that also works when the console is a file
  (``python jobs/full_pipeline.py > log 2>&1``, where rich draws nothing until the loop ends): plain lines
  at least every 5 % of the steps or every minute, and the loop's figures sent to an MLflow run in
  batches while it runs.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

LogMetrics = Callable[[dict[str, float], int], None]


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


def format_duration(seconds: float) -> str:
    """``seconds`` (>= 0) as ``42s``, ``5m07s`` or ``1h02m03s`` (rounded down to the second); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class _Window:
    """Per metric: the sum and count of the values since the last flush, and the step of the last one."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps: dict[str, int] = {}

    def add(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1
            self.steps[key] = int(step)

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}

    def by_step(self) -> list[tuple[int, dict[str, float]]]:
        """[(step, {metric: mean since the last flush})] in step order, one entry per distinct last step."""
        grouped: dict[int, dict[str, float]] = {}
        for key, mean in self.means().items():
            grouped.setdefault(self.steps[key], {})[key] = mean
        return sorted(grouped.items())

    def clear(self) -> None:
        self.sums, self.counts, self.steps = {}, {}, {}

    def __bool__(self) -> bool:
        return bool(self.sums)


class StepProgress:
    """Progress of a loop of ``total`` steps: console lines and batched MLflow metrics while it runs.

    ``update(step, **metrics)`` after each step (``step`` counts the steps done, 1..total; ``metrics`` are
    that step's figures, e.g. ``vae_loss=0.012``), ``close()`` at the end (the loops that take a reporter
    call :meth:`begin` and :meth:`close` themselves).

    Console (``console=True``): on a terminal a rich bar; otherwise (a file, a pipe) one plain line

        ``[vae] step 300/6000 (5 %) vae_loss=0.0123 elapsed 1m02s eta 19m38s``

    whenever the steps done cross the next multiple of ``every_fraction`` of ``total`` (5 %, 10 %, ...), or
    ``every_seconds`` have passed since the last line, and always at the last step. A metric on a line is
    the mean of its values since the previous line; the ETA extrapolates the mean step time since
    :meth:`begin`.

    MLflow (``log_metrics``, e.g. a stage run's ``RunHandle.log_metrics``): called as
    ``log_metrics({metric: mean of its values since the previous call}, step)`` when ``log_every_steps``
    steps or ``log_every_seconds`` seconds have passed since the previous call, at the last step and at
    :meth:`close`: a few calls a minute, not one per step (an MLflow call costs milliseconds to a
    transaction). ``step`` is the step of the window's last value (or the ``metric_step`` given with it).
    A failing call is logged as a warning once and does not stop the loop.

    ``stream`` (default: ``sys.stdout`` at the time of writing) and ``clock`` (seconds, monotonic) are
    injectable for tests. ``rich``: None picks a rich bar exactly when the stream is a terminal.
    """

    def __init__(
        self,
        label: str,
        total: int = 0,
        log_metrics: LogMetrics | None = None,
        *,
        every_fraction: float = 0.05,
        every_seconds: float = 60.0,
        log_every_steps: int = 100,
        log_every_seconds: float = 10.0,
        console: bool = True,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        rich: bool | None = None,
    ):
        if not 0 < every_fraction <= 1:
            raise ValueError(f"every_fraction must be in (0, 1], got {every_fraction}")
        self.label = label
        self.total = int(total)
        self.log_metrics = log_metrics
        self.every_fraction = float(every_fraction)
        self.every_seconds = float(every_seconds)
        self.log_every_steps = max(1, int(log_every_steps))
        self.log_every_seconds = float(log_every_seconds)
        self.console = console
        self._stream = stream
        self.clock = clock
        self._rich_wanted = rich
        self.lines: int = 0  # plain lines written
        self.calls: int = 0  # log_metrics calls made
        self.closed = False
        self._bar: Any = None
        self._task: Any = None
        self._warned = False
        self.begin(total)

    # ------------------------------------------------------------------ set-up

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def begin(self, total: int | None = None, step: int = 0) -> StepProgress:
        """(Re)start the clock at ``step`` steps done (a resumed loop: its first step); ``total``: the loop's
        steps, when the caller knows them better than whoever built the reporter. Returns self."""
        if total is not None:
            self.total = int(total)
        now = self.clock()
        self.step = self.first_step = int(step)
        self.started = self._line_time = self._flush_time = now
        self._line_step = self._flush_step = int(step)
        self._line_window, self._log_window = _Window(), _Window()
        self._printed_step: int | None = None
        self.closed = False
        return self

    def _use_rich(self) -> bool:
        if not self.console:
            return False
        if self._rich_wanted is not None:
            return self._rich_wanted
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.errors import LiveError
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self._stream) if self._stream is not None else None,
            transient=False,
        )
        try:
            bar.start()
        except LiveError:  # an older rich refuses a second live display (a background stage's bar): plain lines
            self._rich_wanted = False
            return
        self._bar = bar
        self._task = bar.add_task(self.label, total=self.total or None, completed=self.step, figures="")

    # ------------------------------------------------------------------ the loop

    def record(self, step: int, metric_step: int | None = None, **metrics: float) -> None:
        """Record that ``step`` steps are done and that step's ``metrics`` (numbers), writing and logging
        nothing yet (for steps that arrive in bursts: :meth:`update` the last of them); ``metric_step``: the
        step MLflow files them under, when it is not ``step`` (e.g. one job's own step among several)."""
        self.step = int(step)
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        self._line_window.add(values, self.step)
        if self.log_metrics is not None:
            self._log_window.add(values, self.step if metric_step is None else int(metric_step))

    def update(self, step: int, metric_step: int | None = None, **metrics: float) -> None:
        """:meth:`record` the step, then write a line / draw the bar and send the metrics when due."""
        self.record(step, metric_step, **metrics)
        now = self.clock()
        last = self.total > 0 and self.step >= self.total
        if self.console and not (self._use_rich() and self._draw_bar()):
            if last or self._crossed_fraction() or now - self._line_time >= self.every_seconds:
                self._write_line(now)
        if self.log_metrics is not None and (
            last
            or self.step - self._flush_step >= self.log_every_steps
            or now - self._flush_time >= self.log_every_seconds
        ):
            self.flush(now)

    def _crossed_fraction(self) -> bool:
        if self.total <= 0:
            return False
        size = self.every_fraction * self.total
        return int(self.step / size + 1e-9) > int(self._line_step / size + 1e-9)

    def line(self, now: float | None = None) -> str:
        """The plain line for the current state: steps done of ``total`` (and the percentage, rounded down),
        each metric's mean since the previous line, the time since :meth:`begin` and the time left at the
        mean step time so far (``?`` before the first step)."""
        now = self.clock() if now is None else now
        elapsed = now - self.started
        parts = [
            f"[{self.label}] step {self.step}/{self.total}" if self.total > 0 else f"[{self.label}] step {self.step}"
        ]
        if self.total > 0:
            parts.append(f"({int(100 * self.step / self.total)} %)")
        parts += [f"{key}={value:.4g}" for key, value in self._line_window.means().items()]
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total > 0:
            done = self.step - self.first_step
            left = max(0, self.total - self.step)
            parts.append(f"eta {format_duration(elapsed / done * left) if done > 0 else '?'}")
        return " ".join(parts)

    def _write_line(self, now: float) -> None:
        stream = self.stream
        stream.write(self.line(now) + "\n")
        flush = getattr(stream, "flush", None)
        if flush is not None:
            flush()
        self.lines += 1
        self._line_time, self._line_step, self._printed_step = now, self.step, self.step
        self._line_window.clear()

    def _draw_bar(self) -> bool:
        """Draw the rich bar (started on first use); False when it cannot be (plain lines from then on)."""
        if self._bar is None:
            self._start_bar()
            if self._bar is None:
                return False
        figures = " ".join(f"{k}={v:.4g}" for k, v in self._line_window.means().items())
        self._bar.update(self._task, completed=self.step, total=self.total or None, figures=figures)
        self._line_window.clear()
        return True

    def flush(self, now: float | None = None) -> None:
        """Send the metrics gathered since the previous call to ``log_metrics`` (one call per distinct step)."""
        self._flush_time = self.clock() if now is None else now
        self._flush_step = self.step
        if self.log_metrics is None or not self._log_window:
            return
        batches = self._log_window.by_step()
        self._log_window.clear()
        for step, means in batches:
            try:
                self.log_metrics(means, step)
                self.calls += 1
            except Exception as exc:  # tracking must never stop an hour of training
                if not self._warned:
                    self._warned = True
                    logging.getLogger("fairskin").warning(
                        "%s: logging progress metrics failed (%s); the loop goes on", self.label, exc
                    )

    def close(self) -> None:
        """End the display (a plain line for the last step unless one was written) and flush the metrics."""
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.console and not self._use_rich() and self._printed_step != self.step and self.step > self.first_step:
            self._write_line(now)
        self.flush(now)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
