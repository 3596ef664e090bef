"""Progress bars that leave nothing behind: tqdm's text bar in a terminal, an HTML line in a notebook.

``tqdm.auto`` draws an ipywidgets bar in a notebook; every bar is a widget model, and a saved notebook
keeps one widget view per bar (dozens per notebook) that shows "Error displaying widget: model not found"
when it is reopened. ``bar`` draws instead, in an open notebook, one HTML line that it updates in place
(``IPython.display`` with a display id, at most a few times a second): the saved file holds plain HTML and
no widget model. Elsewhere (terminal, papermill, nbval) it is tqdm's text bar.

An evaluation's bar counts batches, and one batch of a strong attack can take a minute on a CPU. Inside
``showing_attack_steps(bar)`` the attacks report each iteration (``attack_step``), and the bar shows which
attack runs and at which step ("APGD-CE step 37/100"), redrawn at most twice a second.

Example:
    >>> for x, y in bar(loader, total=len(loader), desc="epoch 1/3"):
    ...     ...
"""

from __future__ import annotations

import contextlib
import html
import sys
import time
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

from tqdm import tqdm as text_bar

T = TypeVar("T")
REFRESH_SECONDS = 0.5


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class HtmlBar(Generic[T]):
    """A progress line in a notebook output, redrawn in place through a display id (no widget)."""

    def __init__(self, iterable: Iterable[T], total: int | None, desc: str, *, leave: bool):
        self.iterable, self.total, self.desc, self.leave = iterable, total, desc, leave
        self.n, self.postfix, self.stage, self.handle = 0, "", "", None
        self.start = self.drawn = time.perf_counter()

    def render(self) -> str:
        elapsed = time.perf_counter() - self.start
        if self.total:
            share = min(1.0, self.n / self.total)
            left = elapsed / self.n * (self.total - self.n) if self.n else None
            eta = f", about {_clock(left)} left" if left is not None and self.n < self.total else ""
            meter = (f"<progress value='{self.n}' max='{self.total}' style='width:12em'></progress> "
                     f"{self.n}/{self.total} ({100 * share:.0f} %)")
        else:
            meter, eta = f"{self.n}", ""
        extra = f" — {html.escape(self.postfix)}" if self.postfix else ""
        extra += f" — {html.escape(self.stage)}" if self.stage else ""
        return (f"<div class='cartl-progress'><b>{html.escape(self.desc)}</b> {meter}, "
                f"{_clock(elapsed)} elapsed{eta}{extra}</div>")

    def _draw(self, text: str) -> None:
        from IPython.display import HTML, display
        if self.handle is None:
            self.handle = display(HTML(text), display_id=True)
        else:
            self.handle.update(HTML(text))

    def __iter__(self) -> Iterator[T]:
        self._draw(self.render())
        try:
            for item in self.iterable:
                yield item
                self.n += 1
                now = time.perf_counter()
                if now - self.drawn >= REFRESH_SECONDS:
                    self.drawn = now
                    self._draw(self.render())
        finally:
            # leave=False: the line is emptied (the output stays, with nothing in it), as tqdm removes its bar
            self._draw(self.render() if self.leave else "")

    def note(self, text: str) -> None:
        """What the current item is doing (e.g. an attack's step), redrawn at most every ``REFRESH_SECONDS``."""
        self.stage = text
        now = time.perf_counter()
        if self.handle is not None and now - self.drawn >= REFRESH_SECONDS:
            self.drawn = now
            self._draw(self.render())

    def set_postfix(self, values: Mapping[str, Any], refresh: bool = False) -> None:
        """Metrics shown after the bar (as tqdm's ``set_postfix``); drawn with the next update."""
        self.postfix = ", ".join(f"{name} {value}" for name, value in values.items())


def bar(iterable: Iterable[T], *, total: int | None = None, desc: str = "", disable: bool = False,
        leave: bool = False) -> "HtmlBar | text_bar":
    """``iterable`` with a progress bar (see the module's docstring); ``disable`` draws nothing.

    The result iterates like ``iterable`` and has ``set_postfix`` (tqdm's, or ``HtmlBar``'s).
    """
    from .widgets import headless, in_panel
    if disable or headless():
        return text_bar(iterable, total=total, desc=desc, leave=leave, disable=disable)
    if in_panel():  # an ipywidgets Output ignores redraws through a display id: a text bar, on stdout
        return text_bar(iterable, total=total, desc=desc, leave=leave, file=sys.stdout)
    return HtmlBar(iterable, total, desc, leave=leave)


_LISTENERS: list[Callable[[str], None]] = []  # the innermost ``showing_attack_steps`` bar last


def attack_step(name: str, step: int, steps: int) -> None:
    """Called by the attacks at every iteration; shown by the innermost ``showing_attack_steps`` bar (else free)."""
    if _LISTENERS:
        _LISTENERS[-1](f"{name} step {step}/{steps}")


def _listener(progress: Any) -> Callable[[str], None] | None:
    """How ``progress`` shows an attack's step: ``HtmlBar.note``, tqdm's postfix (rate-limited), or not at all."""
    if isinstance(progress, HtmlBar):
        return progress.note
    if isinstance(progress, text_bar) and not progress.disable:
        drawn = [0.0]

        def note(text: str) -> None:
            now = time.perf_counter()
            if now - drawn[0] >= REFRESH_SECONDS:
                drawn[0] = now
                progress.set_postfix_str(text, refresh=True)
        return note
    return None


@contextlib.contextmanager
def showing_attack_steps(progress: Any) -> Iterator[None]:
    """While inside, the attacks' iterations show on ``progress`` (a ``bar``; a disabled one shows nothing)."""
    listener = _listener(progress)
    if listener is not None:
        _LISTENERS.append(listener)
    try:
        yield
    finally:
        if listener is not None:
            _LISTENERS.remove(listener)


def write(message: str, **kwargs: Any) -> None:
    """Print a line without breaking a text bar that is being drawn."""
    text_bar.write(message, **kwargs)


__all__ = ["HtmlBar", "attack_step", "bar", "showing_attack_steps", "write"]
