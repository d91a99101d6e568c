"""Progress bars of the pipeline's phases, one look for all: the count against its total, percentage, rate and
time left, a "loading model" note while the encoder loads, and every bar closed when its phase ends or stops,
so that the summary starts on a line of its own and no bar is drawn again after an error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

    from pipeline.base import PipelineContext

_OPEN: ContextVar[list[tqdm] | None] = ContextVar("phase_bars", default=None)
LOADING = "loading model"


def bar(ctx: PipelineContext, desc: str, *, unit: str = "img", total: int | None = None) -> tqdm:
    """A bar for this phase (hidden with ``--no-progress``); the phase's ``phase_bars`` closes it."""
    from tqdm import tqdm

    made = tqdm(desc=desc, unit=unit, total=total, disable=not ctx.progress, dynamic_ncols=True)
    opened = _OPEN.get()
    if opened is not None:
        opened.append(made)
    return made


@contextmanager
def phase_bars() -> Iterator[None]:
    """Around one phase: the bars it opened are closed (left on screen, ended by a newline) when it returns
    or raises, before anything else prints."""
    token = _OPEN.set([])
    try:
        yield
    finally:
        for made in reversed(_OPEN.get() or []):
            made.close()
        _OPEN.reset(token)


@contextmanager
def loading_model(made: tqdm) -> Iterator[None]:
    """The bar says "loading model" while the encoder loads; its clock then restarts, so the rate and the time
    left count the embedding alone."""
    made.set_postfix_str(LOADING)
    try:
        yield
    finally:
        made.set_postfix_str("", refresh=False)
        made.reset(total=made.total)
