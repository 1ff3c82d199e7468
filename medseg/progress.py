"""Progress bars on stderr (rich): one class for every long loop of medseg.

Names in descriptions may come from files (series descriptions, paths): they are shown through
`medseg.terminal.literal`, so rich markup in them is printed as text.
"""

from __future__ import annotations

from typing import Any

from medseg.terminal import literal


class ProgressBars:
    """An outer bar (series, epochs) and an inner bar (steps of the current one), or nothing.

    Args:
        enabled: False makes every method a no-op (and nothing is imported).
        total: items of the outer bar.
        label: the outer bar's description.
        transient: remove the bars when done.
    """

    def __init__(self, enabled: bool, total: int, label: str = "series", transient: bool = False) -> None:
        self.enabled = enabled and total > 0
        self._p: Any = None
        self._name = ""
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("{task.description}", justify="left"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=transient,
            )
            self._outer = self._p.add_task(label, total=total)
            self._inner = self._p.add_task("", total=1, visible=False)

    def start(self) -> ProgressBars:
        """Show the bars (also what ``with ProgressBars(...)`` does)."""
        if self._p:
            self._p.start()
        return self

    def close(self) -> None:
        """Stop drawing (also at the end of a ``with`` block)."""
        if self._p:
            self._p.update(self._inner, visible=False)
            self._p.stop()

    def __enter__(self) -> ProgressBars:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start_item(self, name: str, stage: str = "reading") -> None:
        """A new item of the outer bar begins (its name is shown literally)."""
        if self._p:
            self._name = literal(name)
            self._p.update(self._inner, description=f"  {self._name}: {stage}", completed=0, total=1, visible=True)

    def step(self, stage: str, done: int, total: int) -> None:
        """Progress within the current item: `done` of `total` of `stage`."""
        if self._p:
            self._p.update(self._inner, description=f"  {self._name}: {stage}", completed=done, total=max(total, 1))

    def item_finished(self, n: int = 1) -> None:
        """`n` items of the outer bar are finished."""
        if self._p:
            self._p.advance(self._outer, n)
