"""Live progress of a run's long phases (h0, each round's fine-tuning), through rich.

    display = Progress("auto")
    with display.phase(
        "fine-tune round 3", epochs=5, examples_per_epoch=1600, steps_per_epoch=25
    ) as p:
        train.fit(..., on_step=p.step)

In a terminal the phase shows as one live line: its name, a bar, the epoch, examples
per second and the time left; the line goes away when the phase ends, leaving the
round line the loop prints. When the display's stream is not a terminal (a log file,
a pipe, CI) nothing is printed unless ``mode="always"``. The display is written to
stderr, so ``> log`` keeps stdout's round lines free of it.

Counting is host-side only: :meth:`Phase.step` receives the number of examples a step
dispatched, and never waits for the device. With JAX's asynchronous dispatch the count
runs ahead of the device by the steps in flight, which :func:`alsa_jax.train.fit` bounds
by one epoch (it fetches the epoch's metrics before the next one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich import progress as rich_progress
from rich.console import Console
from rich.text import Text

from alsa_jax import validation

MODES = ("auto", "always", "never")


class Phase:
    """One phase's counter; :meth:`step` is the ``on_step`` callback of ``train.fit``.

    ``examples`` (examples counted so far) and ``steps`` are plain ints, also when
    nothing is displayed.
    """

    def __init__(self, progress: Any = None, task: Any = None, steps_per_epoch: int = 0):
        self._progress = progress
        self._task = task
        self._steps_per_epoch = steps_per_epoch
        self.examples = 0
        self.steps = 0

    @property
    def epoch(self) -> int:
        """The epoch under way, ``ceil(steps / steps_per_epoch)`` (at least 1); 0 if unknown."""
        if not self._steps_per_epoch:
            return 0
        return max(1, -(-self.steps // self._steps_per_epoch))

    def step(self, examples: int = 1) -> None:
        """Count one step of ``examples`` examples (host-side; never blocks on a device)."""
        self.examples += int(examples)
        self.steps += 1
        if self._progress is None:
            return
        fields = {"epoch": self.epoch} if self._steps_per_epoch else {}
        self._progress.update(self._task, advance=int(examples), **fields)


class RateColumn(rich_progress.ProgressColumn):
    """Examples (or another unit) per second over the recent steps."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: rich_progress.Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = "?" if speed is None else f"{speed:,.0f}"
        return Text(f"{shown} {self.unit}/s", style="progress.data.speed")


class Progress:
    """The live display of a run: one :meth:`phase` at a time.

    ``mode``: ``"auto"`` (live when the console writes to a terminal, silent otherwise),
    ``"always"`` (live also into a file or pipe, with a terminal's control codes) or
    ``"never"``. ``console``: a ``rich.console.Console`` (default: one on stderr).
    """

    def __init__(self, mode: str = "auto", *, console: Console | None = None):
        validation.check_choice("progress", mode, MODES)
        console = console if console is not None else Console(stderr=True)
        if mode == "always" and not console.is_terminal:
            console = Console(file=console.file, force_terminal=True, width=console.width)
        self.console = console
        self.live = mode == "always" or (mode == "auto" and console.is_terminal)

    @contextlib.contextmanager
    def phase(
        self,
        name: str,
        *,
        epochs: int | None = None,
        examples_per_epoch: int | None = None,
        steps_per_epoch: int | None = None,
        total: int | None = None,
        unit: str = "examples",
    ) -> Iterator[Phase]:
        """Show phase ``name`` live while the ``with`` block runs; yields its :class:`Phase`.

        The bar's length is ``total`` examples, or ``epochs * examples_per_epoch``; the
        epoch shown is ``ceil(steps / steps_per_epoch)`` of ``epochs`` (omit either to
        show no epoch). ``unit`` names what :meth:`Phase.step` counts.
        """
        if total is None and epochs is not None and examples_per_epoch is not None:
            total = int(epochs) * int(examples_per_epoch)
        show_epoch = bool(epochs) and bool(steps_per_epoch)
        if not self.live:
            yield Phase(steps_per_epoch=int(steps_per_epoch or 0) if show_epoch else 0)
            return
        columns = [
            rich_progress.TextColumn("{task.description}", style="bold", markup=False),
            rich_progress.BarColumn(bar_width=30),
            rich_progress.TaskProgressColumn(),
        ]
        if show_epoch:
            columns.append(
                rich_progress.TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}")
            )
        columns += [
            RateColumn(unit),
            rich_progress.TimeRemainingColumn(),
            rich_progress.TextColumn("left"),
        ]
        display = rich_progress.Progress(
            *columns,
            console=self.console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            speed_estimate_period=60.0,
        )
        task = display.add_task(name, total=total, epoch=1 if show_epoch else 0, epochs=epochs)
        with display:
            yield Phase(display, task, int(steps_per_epoch or 0) if show_epoch else 0)
