"""Local models are opt-in (issue 14): only paths named on the command line (`--model`,
`--fallback-model`, `mlx-server pull`) and the entries of `--models-dir` directories are servable.
Any other path, and any name the OS would choke on, is the same 404 model_not_found as an unknown
model, never a 500, and what a client sees does not depend on what exists on disk.

Over HTTP with the fake engine and the real HuggingFaceStore (no weights are loaded), and on the
fake engine's StaticCatalog."""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from huggingface_hub import constants

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.store.hf_store import HuggingFaceStore
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings, add_serve_arguments, settings_from_args, settings_from_env
from mlx_server.domain.errors import ModelNotFound
from tests.support.fakes import CountingIds, FixedClock
from tests.support.http import ConnectedTestClient

USER = [{"role": "user", "content": "hi"}]


def write_model(directory: Path, model_type: str = "llama") -> Path:
    """A model directory as far as the store can tell: config.json and one safetensors file."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (directory / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header
                                                  + b"\0" * 8)
    return directory


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A models dir (two models, a .gguf, junk and a symlink leading out), a model named on the
    command line, and models elsewhere that nobody allowed."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty hub cache
    models = tmp_path / "models"
    write_model(models / "alpha")
    write_model(models / "beta", "gemma3")
    (models / "gamma.gguf").write_bytes(b"GGUF")
    (models / "notes.txt").write_text("not a model")
    (models / "no-config").mkdir()
    secret = write_model(tmp_path / "elsewhere" / "secret")
    (models / "escape").symlink_to(secret, target_is_directory=True)
    (models / "escape.gguf").symlink_to(tmp_path / "elsewhere" / "outside.gguf")
    (tmp_path / "elsewhere" / "outside.gguf").write_bytes(b"GGUF")
    cli = write_model(tmp_path / "cli" / "chosen")
    write_model(tmp_path / "cli" / "sibling")
    return {"root": tmp_path, "models": models, "secret": secret, "cli": cli,
            "sibling": tmp_path / "cli" / "sibling"}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(disk: dict[str, Path], engine: FakeEngine) -> falcon.testing.TestClient:
    settings = Settings(model=str(disk["cli"]), fallback_model=None, models_dirs=(disk["models"],))
    return ConnectedTestClient(build(settings, engine=engine, clock=FixedClock(), ids=CountingIds()))


def chat(client: falcon.testing.TestClient, model: Any) -> falcon.testing.Result:
    body = json.dumps({"model": model, "messages": USER})  # ASCII: a lone surrogate as \ud800
    return client.simulate_post("/v1/chat/completions", body=body,
                                headers={"Content-Type": "application/json"})


def get_model(client: falcon.testing.TestClient, model: str) -> falcon.testing.Result:
    return client.simulate_get("/v1/models/" + urllib.parse.quote(model, safe="/~"))


def assert_not_found(result: falcon.testing.Result) -> None:
    error = result.json["error"]
    if result.status_code == 400 and error["code"] == "invalid_value":  # '': refused by validation
        assert error["param"] == "model"
        return
    assert result.status_code == 404, result.text
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_found", "model", "invalid_request_error")


def hostile_names(disk: dict[str, Path]) -> list[str]:
    """Every way the attacker reached a path or crashed the resolver, and more of each class."""
    models, secret, root = disk["models"], disk["secret"], disk["root"]
    return [
        str(secret), str(secret) + "/", str(secret / "config.json"), str(disk["sibling"]),
        str(models / "escape"), str(models / "escape.gguf"), str(models / "notes.txt"),
        str(models / "no-config"), str(models / ".." / "elsewhere" / "secret"),
        str(models / "alpha" / ".." / ".." / "elsewhere" / "secret"), str(models), str(root),
        os.path.relpath(secret), "./" + os.path.relpath(secret), "../" * 12 + str(secret)[1:],
        "escape", "notes.txt", "no-config", ".", "..", "../..", "/", "//", "/etc", "/etc/passwd",
        "/proc/self/environ", "/dev/zero", "~", "~/", "~root", "~root/.ssh", "~nosuchuser",
        "~nosuchuser/model", "file://" + str(secret), "file:" + str(secret),
        "file:///etc/passwd", "\\\\server\\share", "C:\\models\\x", "", " ", "\t", "a\nb",
        "alpha\n", "\nalpha", "al\x00pha", str(secret) + "\x00", "\x00", "\x1b[31m", "\x7f",
        "x" * 10_000, "/" + "x" * 10_000, "a/" * 3000, "o" * 200 + "/" + "n" * 200,
        "owner/" + "n" * 97, "владелец/модель", "owner/mödel", "🦙/🦙", "\ud800",
        "a/b/c", "owner//name", "owner/../name", "-owner/name", "owner/name.",
    ]


# -- what an operator allows is served -------------------------------------------------------

def test_models_dir_entries_are_listed_and_addressable(
        client: falcon.testing.TestClient, disk: dict[str, Path], engine: FakeEngine) -> None:
    models, alpha = disk["models"], str((disk["models"] / "alpha").resolve())
    listed = {m["id"]: m for m in client.simulate_get("/v1/models").json["data"]}
    assert listed[alpha]["aliases"] == ["alpha"] and listed[alpha]["owned_by"] == "mlx-server"
    assert listed[str((models / "beta").resolve())]["aliases"] == ["beta"]
    assert listed[str((models / "gamma.gguf").resolve())]["aliases"] == ["gamma.gguf"]
    assert str(disk["cli"].resolve()) in listed  # named on the command line
    assert not [i for i in listed if "secret" in i or "escape" in i or "sibling" in i]
    assert not [i for i in listed if "notes" in i or "no-config" in i]
    for name in ("alpha", str(models / "alpha"), str(models / "alpha") + "/",
                 str(models / "beta" / ".." / "alpha"), str(models / "." / "alpha"), alpha):
        result = chat(client, name)
        assert result.status_code == 200, (name, result.text)
        assert result.json["model"] == alpha
        if not name.startswith("/"):  # NOTE: Falcon routes no `//` URL: /v1/models//abs/path
            assert get_model(client, name).json["id"] == alpha
    assert engine.loads[-1] == alpha


def test_the_command_line_model_is_served(client: falcon.testing.TestClient,
                                          disk: dict[str, Path], engine: FakeEngine) -> None:
    chosen = str(disk["cli"].resolve())
    assert chat(client, str(disk["cli"])).json["model"] == chosen
    assert engine.loads == [chosen]  # preloaded at start, not loaded again
    assert_not_found(chat(client, str(disk["sibling"])))  # its neighbour was not named


def test_a_model_added_to_a_models_dir_later_is_found(
        client: falcon.testing.TestClient, disk: dict[str, Path]) -> None:
    assert_not_found(chat(client, "delta"))
    write_model(disk["models"] / "delta")
    assert chat(client, "delta").status_code == 200  # no listing needed first
    assert chat(client, str(disk["models"] / "delta")).status_code == 200


def test_symlinks_inside_a_models_dir_count(tmp_path: Path) -> None:
    models = tmp_path / "models"
    real = write_model(models / "real")
    (models / "link").symlink_to(real, target_is_directory=True)
    (tmp_path / "via").symlink_to(models, target_is_directory=True)
    store = HuggingFaceStore(tmp_path / "c", offline=True, models_dirs=[tmp_path / "via"])
    for name in ("link", "real", str(tmp_path / "via" / "link"), str(models / "link"), str(real)):
        assert store.resolve(name).id == str(real.resolve())


# -- anything else is an unknown model, whatever is on disk -----------------------------------

def test_hostile_names_are_404_over_http(client: falcon.testing.TestClient,
                                         disk: dict[str, Path], engine: FakeEngine) -> None:
    for name in hostile_names(disk):
        assert_not_found(chat(client, name))
        if name and "\x00" not in name and name.strip() == name and len(name) < 8000 \
                and name != "\ud800":  # a URL cannot carry a lone surrogate
            result = get_model(client, name)
            assert result.status_code == 404, (name, result.text)
            assert result.json["error"]["code"] in ("model_not_found", "unknown_url"), name
    assert engine.loads == [str(disk["cli"].resolve())]  # only the preloaded model, ever


def test_an_existing_path_and_a_missing_one_get_the_same_bytes(
        client: falcon.testing.TestClient, disk: dict[str, Path]) -> None:
    pairs = [(str(disk["secret"]), str(disk["root"] / "elsewhere" / "nothing")),
             (str(disk["models"] / "escape"), str(disk["models"] / "missing")),
             (str(disk["models"] / "notes.txt"), str(disk["models"] / "nonexistent.txt")),
             ("/etc", "/etcx"), ("/etc/passwd", "/etc/no-such-file"),
             ("~root", "~nosuchuser"), (os.path.relpath(disk["secret"]), "../nowhere/at/all")]
    for exists, missing in pairs:
        for ask in (chat, get_model) if "/" not in exists else (chat,):  # URL errors echo it
            first, second = ask(client, exists), ask(client, missing)
            assert first.status_code == second.status_code == 404
            assert first.content == second.content, (exists, missing)
    assert str(disk["root"]) not in chat(client, str(disk["secret"])).text  # never echoed


def test_non_strings_are_400(client: falcon.testing.TestClient) -> None:
    for value in (None, 1, ["alpha"], {"path": "/etc"}, True):
        result = chat(client, value)
        assert result.status_code == 400 and result.json["error"]["param"] == "model", value


def test_hostile_names_never_reach_the_filesystem(
        disk: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without models dirs, no hostile name may stat, list or open anything."""
    store = HuggingFaceStore(disk["root"] / "c", offline=True, local_models=[disk["cli"]])
    touched: list[object] = []

    def refuse(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            touched.append((name, args))
            raise AssertionError(f"filesystem access: {name}{args}")
        return call

    for name in ("stat", "lstat", "listdir", "scandir", "open", "readlink", "access"):
        monkeypatch.setattr(os, name, refuse(name))
    for name in hostile_names(disk):
        if name.startswith("o" * 10) or "/" not in name or not name.isascii():
            with pytest.raises(ModelNotFound):
                store.resolve(name)
    monkeypatch.undo()
    assert touched == []


def test_models_dir_lookups_stay_inside_it(disk: dict[str, Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With a models dir, only names that would be its direct entries are looked up on disk (and
    an entry that is a symlink is followed, to find out it leads out)."""
    models = str(disk["models"])
    store = HuggingFaceStore(disk["root"] / "c", offline=True, models_dirs=[models])
    seen: list[str] = []

    def record(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(os.fspath(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "lstat", record(os.lstat))
    monkeypatch.setattr(os, "stat", record(os.stat))
    for name in hostile_names(disk):
        seen.clear()
        with pytest.raises(ModelNotFound):
            store.resolve(name)
        entry = "/" not in name or os.path.dirname(os.path.normpath(name)) == models
        assert entry or seen == [], (name, seen)


def test_the_fake_engines_catalog_refuses_the_same_names(disk: dict[str, Path]) -> None:
    client = ConnectedTestClient(build(Settings(engine="fake"), engine=FakeEngine()))
    for name in hostile_names(disk):
        assert_not_found(chat(client, name))
    assert chat(client, "gemma").status_code == 200
    assert client.simulate_get("/v1/models/~nosuchuser").json["error"]["code"] == "model_not_found"
    same = [chat(client, str(disk["secret"])).content, chat(client, "/no/such/path").content]
    assert same[0] == same[1]


# -- the flag ---------------------------------------------------------------------------------

def parse(args: list[str], environ: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, environ or {})
    return settings_from_args(parser.parse_args(args))


def test_models_dir_flag_is_repeatable_comma_separated_and_read_from_the_environment() -> None:
    assert parse([]).models_dirs == ()
    assert parse(["--models-dir", "a", "--models-dir", "b, c"]).models_dirs == (
        Path("a"), Path("b"), Path("c"))
    environ = {"MLX_SERVER_MODELS_DIR": "/x,/y"}
    assert settings_from_env(environ).models_dirs == (Path("/x"), Path("/y"))
    assert parse(["--models-dir", "/z"], environ).models_dirs == (Path("/z"),)  # the flag wins


def test_relative_models_dirs_resolve_against_the_start_directory(
        disk: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(disk["root"])
    store = HuggingFaceStore(disk["root"] / "c", offline=True, models_dirs=["models"],
                             local_models=["cli/chosen"])
    monkeypatch.chdir("/")
    alpha = str((disk["models"] / "alpha").resolve())
    assert store.resolve("alpha").id == alpha
    assert store.resolve("models/alpha").id == alpha  # spelled as on the command line
    assert store.resolve("cli/chosen").id == str(disk["cli"].resolve())
