"""Output files of the command line: checked before any computation, written atomically.

:func:`reserve` checks every output path up front (not a directory, no clobbering without ``force``, the
parent is a directory or can be created, the directory is writable) by creating the temporary file each
output will be written to, in the target's own directory.  :meth:`Outputs.commit` renames the temporary
files over their targets (``os.replace``: atomic on POSIX), so a failure at any point leaves the targets
untouched and no partial file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Tuple

from .io import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_parent(path: Path, option: str) -> Path:
    """The existing or newly created parent directory of ``path``."""
    parent = path.parent
    for anc in [parent, *parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise InputError(f"{option} {path}: {anc} is a file, not a directory")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot create the directory {parent} ({exc.strerror})") from exc
    return parent


class Outputs:
    """Reserved outputs: ``tmp(name)`` is the temporary path to write, ``commit()`` publishes all of them."""

    def __init__(self, items: Dict[str, Tuple[Path, str]]):
        self._items = items  # name -> (target, temporary path); emptied by commit() / discard()
        self._targets: Dict[str, Path] = {}

    @property
    def names(self):
        return list(self._targets)

    def target(self, name: str) -> Path:
        return self._targets[name]

    def tmp(self, name: str) -> str:
        return self._items[name][1]

    def commit(self) -> None:
        for target, tmp in self._items.values():
            os.replace(tmp, target)
        self._items = {}

    def discard(self) -> None:
        for _, tmp in self._items.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._items = {}

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()  # after commit() there is nothing left to discard


def reserve(paths: Iterable[Tuple[str, Path, str]], force: bool) -> Outputs:
    """Check and reserve ``(name, path, option)`` outputs before any work; raises :class:`InputError`.

    ``option`` names the command-line option the path came from, for the message.
    """
    items: Dict[str, Tuple[Path, str]] = {}
    outputs = Outputs(items)
    try:
        for name, path, option in paths:
            path = Path(path)
            if path.is_dir():
                raise InputError(f"{option} {path} is a directory; give a file name")
            if path.exists() and not force:
                raise InputError(f"{path} exists; pass --force to overwrite it")
            parent = _check_parent(path, option)
            try:
                fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
            except OSError as exc:
                raise InputError(f"{option} {path}: cannot write to {parent} ({exc.strerror})") from exc
            os.close(fd)
            items[name] = (path, tmp)
            outputs._targets[name] = path
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise end up on the target
    except BaseException:
        outputs.discard()
        raise
    return outputs
