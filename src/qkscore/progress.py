"""A progress bar for long loops: rich with items/s and ETA on a terminal, one line per update
(at most every 10 s) in a log."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress"]


class Progress:
    """A rich progress bar with items/s and ETA; in a log (no terminal) one line per update."""

    def __init__(
        self,
        enabled: bool,
        label: str,
        total: int,
        done: int,
        *,
        unit: str = "items",
        extra: Callable[[], str] | None = None,
    ) -> None:
        """``extra`` adds a figure of the caller's after the rate (generation: tokens/s)."""
        self.enabled, self.label, self.total, self.done = enabled, label, total, done
        self.unit, self.extra = unit, extra

    def _extra(self) -> str:
        return f", {self.extra()}" if self.extra is not None else ""

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda _n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        if not console.is_terminal:
            return self._log_lines(console)
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total, completed=self.done, rate="")

        def advance(n: int) -> None:
            self._bar.advance(task, n)
            speed = self._bar.tasks[0].speed
            rate = f"{speed:.1f} {self.unit}/s" if speed else ""
            self._bar.update(task, rate=rate + self._extra())

        return advance

    def _log_lines(self, console) -> Callable[[int], None]:
        import time

        start, state = time.monotonic(), {"done": self.done, "new": 0, "last": 0.0}

        def advance(n: int) -> None:
            state["done"] += n
            state["new"] += n
            now = time.monotonic() - start
            if now - state["last"] < 10 and state["done"] < self.total:
                return
            state["last"] = now
            rate = state["new"] / now if now > 0 else 0.0
            eta = (self.total - state["done"]) / rate if rate else float("nan")
            console.print(
                f"{self.label}: {state['done']}/{self.total} {self.unit}, "
                f"{rate:.2f} {self.unit}/s{self._extra()}, ETA {eta:.0f} s",
                highlight=False,
            )

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled and hasattr(self, "_bar"):
            self._bar.stop()
