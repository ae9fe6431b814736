"""Which local models (MLX directories, .gguf files) clients may name: only those the operator opted
in, by naming them on the command line (`--model`, `--fallback-model`, `mlx-server pull PATH`) or
by putting them in a `--models-dir`. Any other path is, to a client, an unknown name.

A client's name is matched against the index as text (after `..` is folded lexically): it reaches
the filesystem only when it would name an entry directly inside a models dir, and that entry then
counts only if its real path (symlinks resolved) is still inside that dir. So no error, message
or timing that a client sees depends on what exists elsewhere on disk, and names the OS would
choke on (NUL bytes, 10 kB strings, `~nosuchuser`) never reach it."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

log = logging.getLogger(__name__)

_MAX_NAME = 4096  # PATH_MAX: nothing longer can name a file
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")  # no model a client may name has control characters


@attrs.frozen
class LocalModel:
    """A servable local model: its real path and the models-dir entry names it is known by."""

    path: Path  # a model directory holding config.json, or a .gguf file; symlinks resolved
    names: tuple[str, ...] = ()


@attrs.frozen
class _Root:
    lexical: str  # the models dir as named (absolute, `..` folded): how clients may spell it
    real: Path  # the same with symlinks resolved: where its entries must stay


class LocalModels:
    """The allowed local models, indexed by every spelling a client may use: the command-line
    string, its absolute path, its real path, and (models dirs) `dir/entry` and the entry name."""

    def __init__(self, cwd: Path, named: Iterable[str | Path] = (),
                 dirs: Iterable[str | Path] = ()) -> None:
        """Relative paths resolve against `cwd` (the working directory at start), now."""
        self._cwd = cwd
        self._named: dict[str, Path] = {}
        self._scanned: dict[str, Path] = {}  # replaced whole by refresh(): safe across threads
        self._entry_names: dict[Path, tuple[str, ...]] = {}
        self._roots = [root for raw in dirs if (root := self._root(str(raw))) is not None]
        for raw in named:
            self.allow(str(raw))
        self.refresh()

    def allow(self, raw: str) -> bool:
        """Allow the model an operator named (a path, `~` expanded); False if it names none."""
        lexical = _absolute(self._cwd, _expand(raw))
        real = _real(lexical) if lexical else None
        if real is None or not _is_model(real):
            return False
        for key in (raw, lexical, str(real)):
            self._named.setdefault(key, real)
        return True

    def find(self, name: str) -> Path | None:
        """The allowed model `name` spells, or None; see the module docstring for when this
        touches the filesystem."""
        keys = _request_keys(self._cwd, name)
        for key in keys:
            found = self._named.get(key) or self._scanned.get(key)
            if found is not None:
                return found
        for root, entry in self._candidates(name, keys):  # new in a models dir since the scan?
            if (found := self._entry(root, entry)) is not None:
                self._scanned = {**self._scanned, **self._keys(root, entry, found)}
                return found
        return None

    def allows(self, path: Path) -> bool:
        """Whether `path` (a real path) is an allowed model: fetch's last check."""
        return path in self._named.values() or path in self._scanned.values()

    def models(self) -> list[LocalModel]:
        """Every allowed model, command-line ones first, each once."""
        found: dict[Path, tuple[str, ...]] = {path: () for path in self._named.values()}
        for path in self._scanned.values():
            found.setdefault(path, ())
        return [LocalModel(path, self._entry_names.get(path, names)) for path, names in found.items()]

    def refresh(self) -> None:
        """Rescan the models dirs (their direct entries): models added or removed since show."""
        scanned: dict[str, Path] = {}
        names: dict[Path, tuple[str, ...]] = {}
        for root in self._roots:
            for entry in _entries(root.real):
                found = self._entry(root, entry)
                if found is not None:
                    for key, value in self._keys(root, entry, found).items():
                        scanned.setdefault(key, value)
                    if scanned.get(entry) == found:
                        names[found] = (*names.get(found, ()), entry)
        self._scanned, self._entry_names = scanned, names

    def _root(self, raw: str) -> _Root | None:
        lexical = _absolute(self._cwd, _expand(raw))
        real = _real(lexical) if lexical else None
        if real is None or not real.is_dir():
            log.warning("--models-dir %s is not a directory: ignored", raw)
            return None
        return _Root(lexical, real)

    def _candidates(self, name: str, keys: Sequence[str]) -> list[tuple[_Root, str]]:
        """(models dir, entry name) pairs `name` would spell: a bare name, or a path whose parent
        is a models dir."""
        pairs: list[tuple[_Root, str]] = []
        for root in self._roots:
            if keys and "/" not in name and name not in (".", ".."):
                pairs.append((root, name))
            for key in keys[1:]:
                parent, entry = os.path.split(key)
                if parent in (root.lexical, str(root.real)) and entry:
                    pairs.append((root, entry))
        return pairs

    @staticmethod
    def _entry(root: _Root, entry: str) -> Path | None:
        """The real path of a model directly in `root`, if `entry` is one and stays inside it."""
        real = _real(str(root.real / entry))
        if real is None or real == root.real or not real.is_relative_to(root.real):
            return None
        return real if _is_model(real) else None

    @staticmethod
    def _keys(root: _Root, entry: str, real: Path) -> dict[str, Path]:
        return {entry: real, os.path.join(root.lexical, entry): real,
                str(root.real / entry): real, str(real): real}


def _request_keys(cwd: Path, name: str) -> list[str]:
    """How a client's `name` may appear in the index: as sent, and as an absolute path with `..`
    folded (relative paths against the start directory). `~` is not expanded: a client has no
    business with the server's home directories. [] for names no allowed model can have."""
    if not name or len(name) > _MAX_NAME or _UNSAFE.search(name):
        return []
    if name.startswith("/"):
        return [name, os.path.normpath(name)]
    if name.startswith("~") or ("/" not in name and not name.startswith(".")):
        return [name]
    return [name, os.path.normpath(os.path.join(cwd, name))]


def _expand(raw: str) -> str:
    """`~` expanded for the operator's own paths; an unknown user leaves the path as written."""
    try:
        return os.path.expanduser(raw)
    except (RuntimeError, KeyError, ValueError):
        return raw


def _absolute(cwd: Path, raw: str) -> str:
    if not raw or _UNSAFE.search(raw):
        return ""
    return os.path.normpath(os.path.join(cwd, raw))


def _real(path: str) -> Path | None:
    """`path` with every symlink resolved, or None when it does not exist (or cannot)."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except (OSError, ValueError, RuntimeError):  # missing, loop, too long, NUL, bad encoding
        return None


def _is_model(path: Path) -> bool:
    """A model directory (config.json inside) or a .gguf file; what is in them is checked later."""
    try:
        if path.is_dir():
            return (path / "config.json").is_file()
        return path.is_file() and path.suffix.lower() == ".gguf"
    except (OSError, ValueError):
        return False


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as exc:
        log.warning("models dir %s cannot be listed: %s", directory, exc)
        return []
