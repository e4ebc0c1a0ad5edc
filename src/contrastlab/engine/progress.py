"""What a run shows while it trains and evaluates: on a terminal, one bar over every step of the
run; anywhere else (a log file, a pipe), plain lines. Everything goes to standard error, so
standard output keeps the run folder and the results table."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class TrainingProgress:
    """Progress of a training run over ``epochs`` epochs of ``steps_per_epoch`` steps, from
    ``start_step`` (a resumed run's checkpoint). ETAs come from this process's own rate (steps
    since it started).

    On a terminal: one tqdm bar over the run's steps, the epoch in its description, the last
    logged loss and images/s after it, tqdm's ETA for the whole run. Elsewhere: a line at every
    logged step that does not end an epoch (``train.log_every``). Both: a summary line per epoch.
    With ``enabled`` false (``train.progress=false``, or not rank 0) nothing is written.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, start_step: int = 0, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.start_step = self.step = start_step
        self.started = time.perf_counter()
        self.bar = tqdm(total=self.total_steps, initial=start_step, file=self.stream, dynamic_ncols=True,
                        disable=not (enabled and is_terminal(self.stream)))

    def begin_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) starts."""
        self.epoch, self.epoch_started, self.epoch_images = epoch, time.perf_counter(), 0
        self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)

    def advance(self, images: int) -> None:
        """One step of ``images`` images (every process's) is done."""
        self.step += 1
        self.epoch_images += images
        self.bar.update()

    def logged(self, record: dict[str, Any]) -> None:
        """A metrics record was logged (its ``loss`` and ``images_per_s`` are shown)."""
        if not self.enabled:
            return
        numbers = f"loss {record['loss']:.4f}, {record['images_per_s']:.0f} img/s"
        if not self.bar.disable:
            self.bar.set_postfix_str(numbers)
        elif self.step % self.steps_per_epoch != 0:  # an epoch's last step gets the summary instead
            self._write(f"  step {self.step}/{self.total_steps} (epoch {self.epoch + 1}/{self.epochs}): "
                        f"{numbers}; {self._eta()}")

    def end_epoch(self, loss: float, online_acc: float | None = None) -> None:
        """The epoch ends with mean loss ``loss`` and online-probe accuracy ``online_acc`` (%)."""
        if not self.enabled:
            return
        seconds = time.perf_counter() - self.epoch_started
        parts = [f"loss {loss:.4f}"]
        if online_acc is not None:
            parts.append(f"online acc {online_acc:.2f}%")
        parts += [f"{self.epoch_images / max(seconds, 1e-9):.0f} img/s", format_duration(seconds)]
        self._write(f"epoch {self.epoch + 1}/{self.epochs}: {', '.join(parts)}; {self._eta()}")

    def close(self) -> None:
        self.bar.close()

    def _eta(self) -> str:
        elapsed = time.perf_counter() - self.started
        if self.step >= self.total_steps:
            return f"training took {format_duration(elapsed)}"
        done = self.step - self.start_step
        if done == 0:
            return "ETA -"
        return f"ETA {format_duration(elapsed / done * (self.total_steps - self.step))}"

    def _write(self, line: str) -> None:
        if self.bar.disable:
            print(line, file=self.stream, flush=True)
        else:
            self.bar.write(line, file=self.stream)


class PhaseLog:
    """A line per phase of a long computation (an evaluation's feature extraction, probes,
    diagnostics) when it ends, with its time: ``trained: probes done in 1.2 s``. Written whole, so a
    warning printed during the phase cannot split it. Silent unless ``enabled``."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr

    @contextmanager
    def phase(self, what: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        if self.enabled:
            print(f"{what} done in {format_duration(time.perf_counter() - started)}", file=self.stream, flush=True)
