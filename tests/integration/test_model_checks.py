"""A broken model is refused before the loaded one is released (issue 14), with real MLX.

Checked before the release (model_files.check_model_dir and the engine's memory estimate):
config.json readable and a JSON object with a model_type mlx_vlm has, *.safetensors present, every
weight file's size known and matching its own header, the weights fitting in memory once the
current model is gone. What only mlx_vlm's load can find (tensors that do not fit the
architecture, garbage bytes) still fails after the release: the server then has no model, and
the next request loads one again."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import falcon.testing
import pytest

from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.hf_store import HuggingFaceStore
from mlx_server.adapters.store.model_files import check_model_dir
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.errors import ModelUnavailable
from tests.support.http import ConnectedTestClient

PARIS = [{"role": "user", "content": "The capital of France is"}]


def safetensors(tensors: dict[str, tuple[str, list[int], int]], *, data: bytes | None = None) -> bytes:
    """A safetensors file: name -> (dtype, shape, bytes); the data zeros unless given."""
    header, offset = {}, 0
    for name, (dtype, shape, size) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + (b"\0" * offset if data is None else data)


def weights(directory: Path) -> Path:
    return next(directory.glob("*.safetensors"))


def truncate(directory: Path) -> None:
    path = weights(directory)
    path.write_bytes(path.read_bytes()[:-100])


def garble_header(directory: Path) -> None:
    path = weights(directory)
    data = bytearray(path.read_bytes())
    data[8:20] = b"#not json!#!"
    path.write_bytes(bytes(data))


def lie_about_a_shape(directory: Path) -> None:
    path = weights(directory)
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["shape"])
    header[name]["shape"] = [dim * 2 for dim in header[name]["shape"]]
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length:])


def dangle(directory: Path) -> None:
    path = weights(directory)
    path.unlink()
    path.symlink_to(directory / "gone.bin")


def too_big(directory: Path) -> None:
    """1 TiB of weights, valid header; a sparse file, so it takes no disk."""
    for path in directory.glob("*.safetensors"):
        path.unlink()
    size = 2**40
    head = safetensors({"huge": ("F32", [size // 4], size)}, data=b"")
    with (directory / "model.safetensors").open("wb") as stream:
        stream.write(head)
        stream.truncate(len(head) + size)


def write(name: str, text: str) -> Callable[[Path], None]:
    return lambda directory: (directory / name).write_text(text)


def remove(pattern: str) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        for path in directory.glob(pattern):
            path.unlink()
    return apply


BROKEN: dict[str, Callable[[Path], None]] = {
    "config-not-json": write("config.json", "{"),
    "config-a-list": write("config.json", "[1, 2]"),
    "config-binary": lambda d: (d / "config.json").write_bytes(b"\xff\xfe\0\0"),
    "config-unknown-type": write("config.json", json.dumps({"model_type": "no_such_arch"})),
    "config-type-not-a-string": write("config.json", json.dumps({"model_type": ["gemma3"]})),
    "config-type-traversal": write("config.json", json.dumps({"model_type": "../gemma3"})),
    "no-weights": remove("*.safetensors"),
    "truncated-weights": truncate,
    "garbled-header": garble_header,
    "empty-weights": lambda d: weights(d).write_bytes(b""),
    "shape-lies": lie_about_a_shape,
    "dangling-weights": dangle,
    "too-big": too_big,
}


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=False)
    return target


@pytest.fixture(scope="module")
def models(tiny_gemma3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir: a good tiny gemma3, a broken copy per BROKEN case, and one copy whose files
    look right but whose tensors are not the model's (found only by mlx_vlm's load)."""
    root = tmp_path_factory.mktemp("models")
    copy_model(tiny_gemma3, root / "good")
    for name, breakage in BROKEN.items():
        breakage(copy_model(tiny_gemma3, root / name))
    wrong = copy_model(tiny_gemma3, root / "wrong-tensors")
    remove("*.safetensors")(wrong)
    (wrong / "model.safetensors").write_bytes(safetensors({"bogus.weight": ("F32", [4], 16)}))
    return root


@pytest.fixture(scope="module")
def served(models: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[falcon.testing.TestClient, MlxEngine]:
    engine = MlxEngine(prefix_cache=False)
    store = HuggingFaceStore(tmp_path_factory.mktemp("converted"), offline=True,
                             models_dirs=[models])
    app = build(Settings(fallback_model=None, models_dirs=(models,)), engine=engine, catalog=store)
    return ConnectedTestClient(app), engine


def chat(client: falcon.testing.TestClient, model: str) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions", json={
        "model": model, "messages": PARIS, "max_tokens": 2, "temperature": 0})


def test_the_good_copy_passes_the_checks(models: Path) -> None:
    size = check_model_dir("good", models / "good")
    assert size == sum(p.stat().st_size for p in (models / "good").glob("*.safetensors")) > 0


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_the_checks_find_each_breakage(models: Path, case: str) -> None:
    if case == "too-big":  # a complete file: only the memory check refuses it
        assert check_model_dir(case, models / case) > 2**40
        return
    with pytest.raises(ModelUnavailable) as caught:
        check_model_dir(case, models / case)
    assert caught.value.param == "model"


def test_a_broken_model_leaves_the_loaded_one_serving(
        served: tuple[falcon.testing.TestClient, MlxEngine], models: Path) -> None:
    client, engine = served
    assert chat(client, "good").status_code == 200
    model, good = engine._model, str((models / "good").resolve())
    for case in sorted(BROKEN):
        result = chat(client, case)
        assert result.status_code == 503, (case, result.text)
        error = result.json["error"]
        assert (error["code"], error["param"]) == ("model_unavailable", "model"), case
        assert engine.loaded is not None and engine.loaded.id == good, case
        assert engine._model is model, case  # the very same weights: nothing was released
    again = chat(client, "good")
    assert again.status_code == 200 and again.json["model"] == good
    assert engine._model is model  # served without loading again


def test_too_big_says_how_big(served: tuple[falcon.testing.TestClient, MlxEngine]) -> None:
    client, _ = served
    assert chat(client, "good").status_code == 200
    message = chat(client, "too-big").json["error"]["message"]
    assert "needs about 1024.0 GiB" in message


def test_what_only_the_load_finds_still_leaves_a_serving_server(
        served: tuple[falcon.testing.TestClient, MlxEngine], models: Path) -> None:
    """Tensors that are not the model's pass every file check: the old model is gone by the time
    mlx_vlm says so. The answer is still a 503, and the next request loads a model again."""
    client, engine = served
    assert chat(client, "good").status_code == 200
    result = chat(client, "wrong-tensors")
    assert result.status_code == 503 and result.json["error"]["code"] == "model_unavailable"
    assert engine.loaded is None
    again = chat(client, "good")
    assert again.status_code == 200 and engine.loaded is not None


def test_an_unreadable_weight_file_is_refused_first(
        served: tuple[falcon.testing.TestClient, MlxEngine], models: Path,
        tmp_path: Path) -> None:
    """A weight path that cannot be read as a file (a directory in its place: unreadable to root
    as well, so the test runs as any user)."""
    unreadable = copy_model(models / "good", models / "unreadable")
    path = weights(unreadable)
    path.unlink()
    path.mkdir()
    client, engine = served
    assert chat(client, "good").status_code == 200
    assert chat(client, "unreadable").status_code == 503
    assert engine.loaded is not None and engine.loaded.id.endswith("good")
