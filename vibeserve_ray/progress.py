"""What long commands show while they work: a live display on a terminal, lines elsewhere.

`check`, `bench`, `search` and `deploy` choose the view once (`start`); the code doing
the work reports through this module and never prints progress itself:

- `event(line)`: something happened (a phase began, a round ended); one line;
- `task(name, total)`, then `advance(tokens=...)` per unit done: requests done of total
  and tokens/s so far, in the phase `name` (`total` None: a spinner); `done()` ends it;
- `status(text)`: a standing summary (a search round: candidates done, running, best).

On a terminal (stdout and stderr both) the view is rich's live display on stderr, with
events printed above it. Otherwise it is plain lines: each event, and each status when
it changes, so a `ray job submit` log reads as a story; counted work is left to the
lines its code already says every tenth. `--quiet` shows nothing but the result. Code
run where no command chose a view (a Ray worker, a library call) reports nothing here,
and events go to stderr.
"""

from __future__ import annotations

import sys
import time

_view: "_Plain | _Live | None" = None


def add_quiet_flag(parser) -> None:
    """`--quiet` on a command that shows progress."""
    parser.add_argument("--quiet", "-q", action="store_true", help="show no progress, only the result")


def start(quiet: bool = False) -> None:
    """Chooses the view for this process: quiet, live (both streams a terminal) or plain."""
    global _view
    stop()
    if quiet:
        _view = _Quiet()
    elif sys.stdout.isatty() and sys.stderr.isatty():
        _view = _Live()
    else:
        _view = _Plain()


def stop() -> None:
    """Ends the live display (its last state stays on screen)."""
    global _view
    if _view is not None:
        _view.stop()
    _view = None


def live() -> bool:
    """Whether counted work shows as a live bar (so its every-tenth lines would repeat it)."""
    return isinstance(_view, _Live)


def event(line: str) -> None:
    (_view or _DEFAULT).event(line)


def task(name: str, total: int | None) -> None:
    if _view is not None:
        _view.task(name, total, keep=True)


def advance(n: int = 1, tokens: int = 0) -> None:
    if _view is not None:
        _view.advance(n, tokens)


def done() -> None:
    """The current task is over (its bar goes)."""
    if _view is not None:
        _view.task("", None, keep=False)


def status(text: str) -> None:
    if _view is not None:
        _view.status(text)


class _Plain:
    def __init__(self):
        self.last_status = ""

    def event(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def task(self, name: str, total: int | None, keep: bool) -> None:
        pass

    def advance(self, n: int, tokens: int) -> None:
        pass

    def status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.event(text)

    def stop(self) -> None:
        pass


class _Quiet(_Plain):
    def event(self, line: str) -> None:
        pass


_DEFAULT = _Plain()


class _Live:
    """rich: the status line above one bar for the current task, redrawn in place."""

    def __init__(self):
        # rich loads only on a terminal (plain lines elsewhere)
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
        self.standing = Text("")
        self.live = Live(Group(self.standing, self.bar), console=Console(stderr=True), refresh_per_second=4, transient=True)
        self.live.start()
        self.current = None
        self.tokens, self.since = 0, time.monotonic()

    def event(self, line: str) -> None:
        self.live.console.print(line, markup=False, highlight=False)

    def task(self, name: str, total: int | None, keep: bool) -> None:
        if self.current is not None:
            self.bar.remove_task(self.current)
        self.current = self.bar.add_task(name, total=total, rate="") if keep else None
        self.tokens, self.since = 0, time.monotonic()

    def advance(self, n: int, tokens: int) -> None:
        if self.current is None:
            return
        self.tokens += tokens
        elapsed = time.monotonic() - self.since
        rate = f"{self.tokens / elapsed:,.0f} tok/s" if self.tokens and elapsed > 0 else ""
        self.bar.update(self.current, advance=n, rate=rate)

    def status(self, text: str) -> None:
        self.standing.plain = text

    def stop(self) -> None:
        self.live.stop()
