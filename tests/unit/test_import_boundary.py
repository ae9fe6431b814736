"""The domain is pure: standard library and attrs only, nothing from adapters or app."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "src" / "domain"
ALLOWED_THIRD_PARTY = {"attrs"}


def foreign_imports(path: Path) -> list[str]:
    """Imports in `path` that are neither stdlib, attrs, nor relative within the domain."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                continue  # `from .x import y`: a sibling domain module
            if node.level > 1:
                bad.append("." * node.level + (node.module or ""))
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY:
                bad.append(name)
    return bad


def test_domain_modules_exist() -> None:
    assert len(list(DOMAIN.glob("*.py"))) >= 6


def test_domain_imports_only_stdlib_and_attrs() -> None:
    offenders = {str(p.name): foreign_imports(p) for p in DOMAIN.glob("*.py")}
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_checker_catches_an_adapter_import(tmp_path: Path) -> None:
    module = tmp_path / "leaky.py"
    module.write_text("from ..adapters.fake_engine import FakeEngine\nimport mlx.core\n"
                      "from mlx_server.app import config\nimport json\nfrom .ports import Clock\n")
    assert foreign_imports(module) == ["..adapters.fake_engine", "mlx.core", "mlx_server.app"]
