"""Every package under src/ is listed in pyproject.toml (an unlisted one imports in editable mode
but is missing from the wheel), and the served spec ships inside the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_src_package_is_listed_for_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(["mlx_server", *init.parent.relative_to(ROOT / "src").parts])
             for init in (ROOT / "src").rglob("__init__.py")}
    assert listed == found


def test_openapi_spec_is_package_data() -> None:
    shipped = ROOT / "src" / "openapi.yaml"
    assert shipped.resolve() == (ROOT / "openapi.yaml").resolve()
    assert shipped.read_text().startswith("openapi: 3.1")
