"""The screen of `lorasweep run`: a live tqdm block on a terminal, plain event lines anywhere else.

On a terminal: one overall bar (finished of all trials, counts by state, ETA), then one line per
trial slot with the running trial's phase; lines that stay (a trial started or finished) are written
above the block. Elsewhere (a pipe, a CI log) nothing is redrawn: only those lines, each with the
overall counts and ETA, so a log reads as a history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

BAR_FORMAT = "{desc} |{bar:24}| {n_fmt}/{total_fmt} trials  "


class Screen:
    def __init__(self, out: TextIO, title: str, total: int, slots: int, interactive: bool) -> None:
        self.out = out
        self.title = title
        self.total = total
        self.slots = slots
        self.interactive = interactive
        self.bar: tqdm[None] | None = None
        self.lines: list[tqdm[None]] = []

    def _open(self) -> None:
        from tqdm import tqdm

        # The counts and the ETA are ours (tqdm's rate-based ETA knows nothing of parallel trials).
        self.bar = tqdm(
            total=self.total,
            desc=self.title,
            file=self.out,
            bar_format=BAR_FORMAT,
            dynamic_ncols=True,
            position=0,
            leave=True,
        )
        self.lines = [
            tqdm(total=0, file=self.out, bar_format="{desc}", dynamic_ncols=True, position=1 + i, leave=False)
            for i in range(self.slots)
        ]

    def say(self, line: str) -> None:
        """A line that stays: above the live block on a terminal, as is elsewhere."""
        if self.bar is not None:
            self.bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def update(self, finished: int, summary: str, running: Sequence[str]) -> None:
        """Redraw the block (a terminal only): ``finished`` of the total, the summary, one line per running trial."""
        if not self.interactive:
            return
        if self.bar is None:
            self._open()
        assert self.bar is not None
        self.bar.n = finished
        self.bar.bar_format = BAR_FORMAT + summary.replace("{", "{{").replace("}", "}}")
        self.bar.refresh()
        for index, line in enumerate(self.lines):
            line.set_description_str(running[index] if index < len(running) else "", refresh=True)

    def close(self) -> None:
        """Take the live block off the screen, leaving the overall bar's last state."""
        for line in self.lines:
            line.close()
        if self.bar is not None:
            self.bar.close()
        self.bar, self.lines = None, []
