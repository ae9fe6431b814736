"""The chat page's files (README "Chat page"), in process: served from the package with their
types and a strict Content-Security-Policy, open by their exact paths only (behind --api-key,
every other path stays protected), inside the perimeter like any route. The page itself, in a
browser: tests/e2e/test_browser.py."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.http.security import OPEN_PATHS
from mlx_server.adapters.http.webui import PAGE_FILES, PAGE_PATHS
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.http import ConnectedTestClient

ROOT = Path(__file__).parents[2]
STATIC = ROOT / "src" / "adapters" / "http" / "static"
KEY = "s3cret"
TYPES = {"/": "text/html; charset=utf-8", "/ui/app.js": "text/javascript; charset=utf-8",
         "/ui/style.css": "text/css; charset=utf-8"}


def client_for(**settings: Any) -> falcon.testing.TestClient:
    return ConnectedTestClient(build(Settings(engine="fake", **settings), engine=FakeEngine()))


@pytest.mark.parametrize("path", sorted(TYPES))
def test_each_file_is_served_with_its_type_and_the_policy(path: str) -> None:
    answer = client_for().simulate_get(path)
    assert answer.status_code == 200 and answer.headers["content-type"] == TYPES[path]
    assert answer.content == (STATIC / PAGE_FILES[path][0]).read_bytes()
    assert answer.headers["x-content-type-options"] == "nosniff"
    policy = dict(part.strip().split(" ", 1) for part in
                  answer.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'" and policy["img-src"] == "'self' data: blob:"
    assert policy["connect-src"] == "'self'" and policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in answer.headers["content-security-policy"]


def test_the_page_runs_under_its_own_policy() -> None:
    """No inline script, handler attribute or style attribute (the policy would block them), and
    nothing from another origin."""
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script[^>]*>(.*?)</script>", html, re.S) == [""]
    assert not re.search(r"\son\w+\s*=|\sstyle\s*=|javascript:", html, re.I)
    assert not re.search(r"(src|href)\s*=\s*\"(https?:)?//", html, re.I)
    script = (STATIC / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function",
                         script)
    assert re.findall(r"fetch\('([^']+)'", script) == ["/v1/models", "/v1/chat/completions"]


def test_with_an_api_key_the_page_is_open_and_v1_is_not() -> None:
    client = client_for(api_key=KEY)
    for path in TYPES:
        assert client.simulate_get(path).status_code == 200, path
    assert client.simulate_get("/v1/models").status_code == 401
    # exactly the page's files: no prefix, no other file name
    for path in ("/ui", "/ui/", "/ui/app.js.map", "/ui/other.js", "/index.html", "/static/app.js",
                 "/ui/app.js/x"):
        answer = client.simulate_get(path)
        assert answer.status_code == 401 and answer.json["error"]["code"] == "invalid_api_key", path
    for path in ("/ui/../v1/models", "/ui/%2E%2E/v1/models", "//ui/app.js", "/ui//app.js"):
        assert client.simulate_get(path).status_code == 404, path  # one spelling per route


def test_open_paths_are_the_spec_health_and_the_page_files() -> None:
    assert set(TYPES) == PAGE_PATHS
    assert {"/health", "/openapi.yaml"} | PAGE_PATHS == OPEN_PATHS


def test_the_page_stays_inside_the_perimeter() -> None:
    client = client_for()
    answer = client.simulate_get("/", host="evil.example")  # DNS rebinding: refused
    assert answer.status_code == 421 and answer.json["error"]["code"] == "host_not_allowed"
    assert client.simulate_post("/", json={}).status_code == 405
    assert "access-control-allow-origin" not in client.simulate_get(
        "/", headers={"Origin": "https://evil.example"}).headers


def test_every_page_file_ships_in_the_wheel() -> None:
    """setuptools' package-data for the HTTP adapter covers each file of static/."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["mlx_server.adapters.http"]
    shipped = {path.name for pattern in patterns for path in (ROOT / "src/adapters/http").glob(pattern)}
    assert shipped == {name for name, _ in PAGE_FILES.values()} == {p.name for p in STATIC.iterdir()}
