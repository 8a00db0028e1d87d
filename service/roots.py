"""The data roots: the only folders whose files the service lists, serves or loads.

Every path a request names goes through :meth:`DataRoots.resolve`, which follows
symlinks and refuses anything whose real location is outside the roots: ``..``
segments, absolute paths elsewhere, separators smuggled in encoded (``%2F``) or as
backslashes, NUL bytes, and symlinks inside a root that point out of it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from .errors import Forbidden, InputError, NotFound

logger = logging.getLogger("glimpse.service.roots")

__all__ = ["DataRoots"]

# A Windows drive path ("C:/x", "C:\\x") names a place outside any POSIX root.
_DRIVE = re.compile(r"[A-Za-z]:/")
_FIX_ROOTS = "name a path inside the data roots, or add a root with --data DIR (GLIMPSE_DATA)"


class DataRoots:
    """The existing folders among ``paths``, resolved (symlinks followed), in order.

    Missing ones are skipped with a log line; when none exists, InputError.
    """

    def __init__(self, paths: Iterable[str | os.PathLike]):
        given = [Path(p).expanduser() for p in paths]
        roots: list[Path] = []
        for path in given:
            if not path.is_dir():
                logger.info("data root %s skipped: not an existing folder", path)
                continue
            resolved = path.resolve()
            if resolved not in roots:
                roots.append(resolved)
        if not roots:
            raise InputError("at least one existing data folder (--data DIR)",
                             f"{', '.join(map(str, given)) or 'none'}, none of which exists",
                             "pass --data with a folder that holds checkpoints, galleries or "
                             "recordings (or run `glimpse demo` to make ./glimpse-demo)")
        self.paths: tuple[Path, ...] = tuple(roots)

    def __iter__(self):
        return iter(self.paths)

    def __repr__(self) -> str:
        return f"DataRoots({[str(p) for p in self.paths]})"

    def contains(self, path: str | os.PathLike) -> bool:
        """True when ``path``'s real location (symlinks followed) is inside a root."""
        try:
            real = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            return False
        return any(real.is_relative_to(root) for root in self.paths)

    def resolve(self, user_path: str | os.PathLike, *, must_exist: bool = True) -> Path:
        """The real path a request names, inside the roots.

        ``user_path`` is relative to a root (the first root where it exists) or absolute
        inside one. Raises Forbidden for anything that reaches outside the roots and
        NotFound (``must_exist``) for a path that names nothing.
        """
        text = os.fspath(user_path)
        for variant in _escape_variants(text):
            if (variant.startswith("/") and not self.contains(variant)) or _DRIVE.match(variant):
                raise Forbidden(f"a path inside the data roots ({self._listing()})",
                                f"{text!r}, which names {variant}", _FIX_ROOTS)
        path = Path(text)
        if path.is_absolute():
            candidates = [path]
        else:
            candidates = [root / path for root in self.paths]
            existing = [c for c in candidates if os.path.lexists(c)]
            candidates = existing[:1] or candidates[:1]
        real = _real(candidates[0])
        if not any(real.is_relative_to(root) for root in self.paths):
            raise Forbidden(f"a path inside the data roots ({self._listing()})",
                            f"{text!r}, which is {real}" if real != Path(text) else repr(text),
                            _FIX_ROOTS)
        if must_exist and not real.exists():
            raise NotFound(f"an existing file or folder inside the data roots ({self._listing()})",
                           f"{text!r}, which does not exist", "check the path; " + _FIX_ROOTS)
        return real

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` as shown to people: relative to its root (posix) where that names it
        unambiguously, else absolute."""
        real = Path(path).resolve()
        for root in self.paths:
            if real.is_relative_to(root):
                shown = real.relative_to(root).as_posix()
                try:
                    if shown != "." and self.resolve(shown) == real:
                        return shown
                except InputError:
                    pass
                break
        return str(real)

    def sessions_dir(self, wanted: str | os.PathLike | None) -> Path:
        """Where session folders go: ``wanted`` (inside a root), else ``<first root>/sessions``."""
        if wanted is None:
            return self.paths[0] / "sessions"
        return self.resolve(wanted, must_exist=False)

    def _listing(self) -> str:
        return ", ".join(str(p) for p in self.paths)


def _escape_variants(text: str) -> set[str]:
    """``text`` and what it may become once separators are decoded; Forbidden for NUL bytes
    and ``..`` segments in any of them."""
    # Percent-decoded twice: a proxy may have decoded once already, a client encoded twice.
    variants = {text, text.replace("\\", "/")}
    for _ in range(2):
        variants |= {unquote(v).replace("\\", "/") for v in variants}
    if any("\x00" in v for v in variants):
        raise Forbidden("a path without NUL bytes", repr(text), _FIX_ROOTS)
    if any(".." in PurePosixPath(v).parts for v in variants):
        raise Forbidden("a path inside the data roots, without '..' segments", repr(text), _FIX_ROOTS)
    return variants


def _real(path: Path) -> Path:
    """``path`` with every symlink followed (strict where it exists: a dangling link fails)."""
    try:
        return path.resolve(strict=os.path.lexists(path))
    except FileNotFoundError:  # a symlink whose target is missing: judge by where it points
        return Path(os.path.realpath(path))
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise Forbidden("a path that resolves", f"{path} ({err})", _FIX_ROOTS) from None
