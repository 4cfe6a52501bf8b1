"""One progress bar for every long loop: tqdm on stderr, silent when disabled or for a single item."""

from __future__ import annotations

import sys
from collections.abc import Iterable

__all__ = ["note", "progress_bar"]


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
):
    """A tqdm bar on stderr around ``iterable`` (or a manual one: ``iterable=None``, call ``update``).

    The bar is disabled when ``enabled`` is false or there are fewer than two items, so
    scripts and tests print nothing for trivial work.  Always returns a tqdm object, which
    iterates like ``iterable`` and has ``update``/``close`` in both cases.
    """
    from tqdm.auto import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    disable = not enabled or (total is not None and total < 2)
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=sys.stderr
    )


def note(message: str) -> None:
    """A line on stderr that does not break a running progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
