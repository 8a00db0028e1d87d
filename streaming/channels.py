"""Channels by name: the one lookup that names what is missing, and short listings.

A recording, a stream and a checkpoint each carry channel names; every place that
matches one list against another uses :func:`find_channels`, and every message
that lists names uses :func:`listing`, so the errors read the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InputError


def listing(names: Sequence[str], limit: int = 10) -> str:
    """``"a, b, c, and 12 more"``: the first ``limit`` names, then how many are left."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return f"{shown}, and {more} more" if more > 0 else shown


def find_channels(need: Sequence[str], have: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """Where each name of ``need`` sits in ``have`` (first occurrence), and those missing.

    Returns ``(where, missing)``: ``where`` maps every found name of ``need`` to its
    index in ``have``; ``missing`` lists the names of ``need`` not in ``have``, in
    ``need``'s order.
    """
    first: dict[str, int] = {}
    for i, name in enumerate(have):
        first.setdefault(name, i)
    where = {n: first[n] for n in need if n in first}
    missing = [n for n in need if n not in first]
    return where, missing


def require_channels(need: Sequence[str], have: Sequence[str], *, expected: str, source: str,
                     fix: str) -> list[int]:
    """Indices into ``have`` of every name of ``need``, in ``need``'s order.

    Raises :class:`InputError` naming the missing channels otherwise; ``source``
    says what lacked them (``"sub-01 (run-01_meg.fif)"``, ``"stream X"``).
    """
    where, missing = find_channels(need, have)
    if missing:
        raise InputError(expected, f"{source} lacks {len(missing)} of the {len(need)} channels: "
                                   f"{listing(missing)}", fix)
    return [where[n] for n in need]
