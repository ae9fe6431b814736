"""The domain is pure: standard library and attrs only, nothing from adapters or app."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "src" / "domain"
ALLOWED_THIRD_PARTY = {"attrs"}


def _depth(path: Path) -> int:
    """How many packages below the domain `path` sits (0: a module of the domain itself)."""
    return len(path.relative_to(DOMAIN).parts) - 1 if path.is_relative_to(DOMAIN) else 0


def foreign_imports(path: Path, depth: int | None = None) -> list[str]:
    """Imports in `path` that are neither stdlib, attrs, nor relative within the domain (a
    relative import may climb to the domain package, never above it). `depth`: how deep below
    the domain `path` sits, when it is not really there."""
    depth = _depth(path) if depth is None else depth
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if 1 <= node.level <= depth + 1:
                continue  # `from .x import y`, `from ..x import y` in a subpackage: inside
            if node.level:
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
    assert list((DOMAIN / "families").glob("*.py"))  # subpackages are walked too


def test_domain_imports_only_stdlib_and_attrs() -> None:
    offenders = {str(p.relative_to(DOMAIN)): foreign_imports(p) for p in DOMAIN.rglob("*.py")}
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_checker_catches_an_adapter_import(tmp_path: Path) -> None:
    module = tmp_path / "leaky.py"
    module.write_text("from ..adapters.fake_engine import FakeEngine\nimport mlx.core\n"
                      "from mlx_server.app import config\nimport json\nfrom .ports import Clock\n")
    assert foreign_imports(module) == ["..adapters.fake_engine", "mlx.core", "mlx_server.app"]


def test_checker_allows_climbing_to_the_domain_only_from_a_subpackage(tmp_path: Path) -> None:
    module = tmp_path / "family.py"
    module.write_text("from ..conversation import Message\nfrom .profile import Profile\n"
                      "from ...adapters.fake_engine import FakeEngine\n")
    assert foreign_imports(module, depth=1) == ["...adapters.fake_engine"]
    assert foreign_imports(module) == ["..conversation", "...adapters.fake_engine"]
    assert _depth(DOMAIN / "families" / "gemma3.py") == 1
