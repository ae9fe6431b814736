"""The perimeter, in process on the fake engine: an API key no spelling of a path gets around, JSON
bodies only as `application/json`, and a loopback server that answers loopback names only (DNS
rebinding). Real sockets: tests/e2e/test_timeouts.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.http.app import ROUTER_PROBES
from mlx_server.adapters.http.perimeter import allowed_hosts_for, host_name, is_canonical, is_json
from mlx_server.adapters.http.security import bearer_token
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.http import ConnectedTestClient

KEY = "s3cret"
CHAT = {"model": "gemma", "messages": [{"role": "user", "content": "hi"}]}
GEMMA_ENCODED = "/v1/models/mlx-community%2Fgemma-3-4b-it-4bit"
PROTECTED = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
             ("GET", "/v1/models"), ("GET", "/v1/models/gemma"),
             ("GET", GEMMA_ENCODED), ("GET", "/metrics"),
             *(("GET", probe) for probe in ROUTER_PROBES)]  # sglang-router's worker probes
AUTH = {"Authorization": f"Bearer {KEY}"}


def client_for(**settings: Any) -> falcon.testing.TestClient:
    return ConnectedTestClient(build(Settings(engine="fake", **settings), engine=FakeEngine()))


def send(client: falcon.testing.TestClient, method: str, path: str,
         headers: dict[str, str] | None = None, **kwargs: Any) -> falcon.testing.Result:
    if method == "POST":  # a body each route takes (a legacy completion's: CHAT's model, a prompt)
        kwargs.setdefault("json", {"model": "gemma", "prompt": "hi"}
                          if path.rstrip("/").endswith("/v1/completions") else CHAT)
    return client.simulate_request(method, path, headers=headers, **kwargs)


def assert_envelope(result: falcon.testing.Result, status: int, code: str | None = None) -> None:
    assert result.status_code == status, (result.status_code, result.text)
    error = result.json["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code


def spellings(path: str) -> Iterator[str]:
    """Other ways to write `path` that a router, a proxy or a path check may read differently."""
    tail = path[1:]
    yield "/" + path  # //v1/...
    yield "//" + path  # ///v1/...
    yield path.replace("/", "//")  # //v1//models
    yield path.replace("/", "///")
    yield "/" + tail.replace("/", "%2F")  # /v1%2Fchat%2Fcompletions
    yield "/%2F" + tail  # decoded: //v1/...
    yield "/%2F%2F" + tail
    yield "/./" + tail
    yield "/%2E/" + tail
    yield "/v1/../" + tail
    yield "/v1/%2E%2E/" + tail
    yield "/" + tail.replace("/", "/./")
    yield "/x/../" + tail
    yield path + "//"
    yield path + "/."
    yield path.upper()


# -- 1. the API key ---------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_no_spelling_of_a_protected_route_is_served_without_the_key(method: str, path: str) -> None:
    client = client_for(api_key=KEY, metrics_auth=True)
    assert send(client, method, path, AUTH).status_code == 200  # the route is really there
    for spelled in spellings(path):
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            answer = send(client, method, spelled, headers)
            assert answer.status_code in (401, 404), (method, spelled, headers, answer.status_code)
            assert_envelope(answer, answer.status_code)


def test_non_canonical_paths_are_404_even_with_the_key() -> None:
    client = client_for(api_key=KEY)
    for spelled in ("//v1/models", "///v1/models", "/v1//models", "/%2Fv1/models", "/./v1/models",
                    "/v1/../v1/models", "/v1/models/.", "//health", "/health/./"):
        assert_envelope(send(client, "GET", spelled, AUTH), 404, "unknown_url")


def test_an_encoded_slash_inside_a_model_id_still_works_behind_the_key() -> None:
    client = client_for(api_key=KEY)
    answer = send(client, "GET", GEMMA_ENCODED, AUTH)
    assert answer.status_code == 200 and answer.json["id"] == "mlx-community/gemma-3-4b-it-4bit"
    assert_envelope(send(client, "GET", GEMMA_ENCODED), 401, "invalid_api_key")


def test_every_route_but_the_open_ones_needs_the_key() -> None:
    client = client_for(api_key=KEY)
    for path in ("/health", "/health/", "/openapi.yaml", "/metrics", "/", "/ui/app.js", "/ui/style.css"):
        assert send(client, "GET", path).status_code == 200, path
    for method, path in [("GET", "/ui"), ("GET", "/index.html"),
                         ("GET", "/v1"), ("GET", "/v2/models"), ("GET", "/admin"),
                         ("DELETE", "/v1/models/gemma"), ("POST", "/v1/completions"),
                         ("GET", "/v1/chat/completions"), ("OPTIONS", "/v1/models")]:
        answer = send(client, method, path)
        assert_envelope(answer, 401, "invalid_api_key")
        assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}",
                                    f"BeArEr {KEY}", f"Bearer  {KEY}"])
def test_the_bearer_scheme_is_case_insensitive(header: str) -> None:
    answer = send(client_for(api_key=KEY), "POST", "/v1/chat/completions", {"Authorization": header})
    assert answer.status_code == 200


@pytest.mark.parametrize("header", ["", KEY, f"Basic {KEY}", f"Token {KEY}", "Bearer", "Bearer ",
                                    f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Bearer {KEY.upper()}",
                                    f"Bearer{KEY}", f"Bearer {KEY} {KEY}", "Bearer é"])
def test_a_wrong_or_malformed_credential_is_401(header: str) -> None:
    answer = send(client_for(api_key=KEY), "POST", "/v1/chat/completions", {"Authorization": header})
    assert_envelope(answer, 401, "invalid_api_key")


def test_bearer_token_parsing() -> None:
    assert bearer_token(f"bearer   {KEY}") == KEY
    assert bearer_token(None) is None and bearer_token("Bearer") is None
    assert bearer_token(f"Basic {KEY}") is None


def test_metrics_auth_puts_metrics_behind_the_key_and_leaves_health_open() -> None:
    client = client_for(api_key=KEY, metrics_auth=True)
    assert_envelope(send(client, "GET", "/metrics"), 401, "invalid_api_key")
    assert send(client, "GET", "/metrics", AUTH).status_code == 200
    assert send(client, "GET", "/health").status_code == 200
    assert send(client_for(api_key=KEY), "GET", "/metrics").status_code == 200  # open by default


def test_a_cors_preflight_passes_without_the_key() -> None:
    client = client_for(api_key=KEY, cors_origins=("http://localhost:3000",))
    preflight = client.simulate_options("/v1/chat/completions", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"


# -- 2a. JSON only as JSON --------------------------------------------------------------------

REFUSED_TYPES = [None, "", "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=xyz", "application/jsonx", "text/json", "application/*",
                 "application/json-seq", "application/x-json", "application/json; charset=latin-1",
                 "application/json, text/plain", "*/*", "application/vnd.api+json"]


@pytest.mark.parametrize("content_type", REFUSED_TYPES)
def test_a_body_not_declared_as_json_is_415_and_never_runs(content_type: str | None) -> None:
    engine = FakeEngine()
    client = ConnectedTestClient(build(Settings(engine="fake"), engine=engine))
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = client.simulate_post("/v1/chat/completions", body=json.dumps(CHAT), headers=headers)
    assert_envelope(answer, 415, "unsupported_media_type")
    assert "application/json" in answer.json["error"]["message"]
    assert engine.loads == []  # no model was touched


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON",
                                          "application/json; charset=utf-8",
                                          "APPLICATION/JSON;CHARSET=UTF-8",
                                          'application/json; charset="utf-8"'])
def test_json_is_accepted_with_any_case_and_a_utf8_charset(content_type: str) -> None:
    answer = client_for().simulate_post("/v1/chat/completions", body=json.dumps(CHAT),
                                        headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text


def test_the_media_type_is_decided_before_the_body_is_read() -> None:
    """The body never arrives: the answer still comes, at once, and the body was never asked for
    (Falcon waits for a first body event before any middleware; it is handed an empty one)."""
    app = build(Settings(engine="fake"), engine=FakeEngine())
    status, reads = asgi_call(app, "POST", "/v1/chat/completions",
                              [(b"host", b"127.0.0.1"), (b"content-type", b"text/plain")],
                              body_ends=False)
    assert status == 415 and reads == 0


@pytest.mark.parametrize(("settings", "headers", "status"), [
    ({"api_key": KEY}, [(b"content-type", b"application/json")], 401),
    ({}, [(b"content-type", b"text/plain")], 415),
    ({}, [(b"content-type", b"application/json"), (b"content-length", b"999999999")], 413)])
def test_header_checks_answer_before_the_body_is_asked_for(settings: dict[str, Any],
                                                           headers: list[tuple[bytes, bytes]],
                                                           status: int) -> None:
    """Asking for the body is what makes uvicorn send `100 Continue`: a client that then sent
    nothing held the request before these checks ran."""
    app = build(Settings(engine="fake", **settings), engine=FakeEngine())
    answer, reads = asgi_call(app, "POST", "/v1/chat/completions",
                              [(b"host", b"127.0.0.1"), *headers], body_ends=False, no_body=True)
    assert (answer, reads) == (status, 0)


def test_a_body_that_never_comes_is_408_within_the_body_timeout() -> None:
    app = build(Settings(engine="fake", body_timeout=0.2), engine=FakeEngine())
    answer, reads = asgi_call(app, "POST", "/v1/chat/completions",
                              [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
                              body_ends=False, no_body=True)
    assert (answer, reads) == (408, 1)


@pytest.mark.parametrize("version", ["2.0", "0.9", "3", "1.2"])
def test_an_http_version_asgi_does_not_define_is_400_in_the_envelope(version: str) -> None:
    app = build(Settings(engine="fake"), engine=FakeEngine())
    answer, reads = asgi_call(app, "GET", "/health", [(b"host", b"127.0.0.1")],
                              http_version=version)
    assert (answer, reads) == (400, 0)


def test_the_key_is_checked_before_the_media_type() -> None:
    answer = client_for(api_key=KEY).simulate_post("/v1/chat/completions", body="{}",
                                                   headers={"Content-Type": "text/plain"})
    assert_envelope(answer, 401, "invalid_api_key")


@pytest.mark.parametrize(("method", "path"), [("PUT", "/v1/chat/completions"),
                                              ("PATCH", "/v1/chat/completions"),
                                              ("POST", "/v1/models"), ("PUT", "/v1/models/gemma"),
                                              ("POST", "/health")])
def test_a_method_the_route_does_not_take_is_405_whatever_the_body(method: str, path: str) -> None:
    answer = client_for().simulate_request(method, path, body="x")
    assert_envelope(answer, 405, "method_not_allowed")


def test_media_type_parsing() -> None:
    assert is_json("application/json;foo=bar") and not is_json(None)


# -- 2b. Host: DNS rebinding ------------------------------------------------------------------

LOOPBACK_HOSTS = ["localhost", "localhost:1234", "LOCALHOST:1234", "localhost.", "localhost.:80",
                  "127.0.0.1", "127.0.0.1:1234", "127.1.2.3:8080", "[::1]", "[::1]:1234",
                  "[0:0:0:0:0:0:0:1]:1234"]
FOREIGN_HOSTS = ["evil.example", "evil.example:1234", "localhost.evil.example", "127.0.0.1.evil.example",
                 "evil.localhost", "0.0.0.0:1234", "2130706433", "0x7f000001", "127.1", "[::2]",
                 "localhost:abc", "localhost:1:2", "localhost:65536", "localhost:99999999999",
                 "[localhost]", "[127.0.0.1]", "[::1]evil", "user@localhost", "evil.example#@localhost",
                 "192.168.1.10:1234", "", " "]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_a_loopback_server_answers_loopback_names(host: str) -> None:
    client = client_for()
    for method, path in [("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")]:
        assert send(client, method, path, host=host).status_code == 200, (host, path)


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_a_loopback_server_refuses_other_names_with_421(host: str) -> None:
    client = client_for()
    for method, path in [("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("GET", "/metrics"), ("GET", "/nowhere")]:
        answer = send(client, method, path, host=host)
        assert_envelope(answer, 421, "host_not_allowed")
        assert "--allowed-hosts" in answer.json["error"]["message"]


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_every_loopback_bind_turns_the_host_check_on(bind: str) -> None:
    assert send(client_for(host=bind), "GET", "/health", host="evil.example").status_code == 421


def test_allowed_hosts_add_names_and_star_allows_any() -> None:
    client = client_for(allowed_hosts=("llm.lan", "Box.Example."))
    for host in ("llm.lan", "LLM.LAN:1234", "llm.lan.", "box.example", "localhost:1234"):
        assert send(client, "GET", "/v1/models", host=host).status_code == 200, host
    assert send(client, "GET", "/v1/models", host="evil.example").status_code == 421
    assert send(client, "GET", "/v1/models", host="sub.llm.lan").status_code == 421
    anything = client_for(allowed_hosts=("*",))
    assert send(anything, "GET", "/v1/models", host="evil.example").status_code == 200


def test_a_server_bound_to_a_public_address_checks_hosts_only_when_told() -> None:
    assert send(client_for(host="0.0.0.0"), "GET", "/v1/models", host="evil.example").status_code == 200
    told = client_for(host="0.0.0.0", allowed_hosts=("llm.lan",))
    assert send(told, "GET", "/v1/models", host="llm.lan").status_code == 200
    assert send(told, "GET", "/v1/models", host="evil.example").status_code == 421


def test_a_missing_host_is_400() -> None:
    loopback = build(Settings(engine="fake"), engine=FakeEngine())
    assert asgi_call(loopback, "GET", "/health", [], http_version="1.1")[0] == 400
    assert asgi_call(loopback, "GET", "/health", [], http_version="1.0")[0] == 400  # check on
    public = build(Settings(engine="fake", host="0.0.0.0"), engine=FakeEngine())
    assert asgi_call(public, "GET", "/health", [], http_version="1.1")[0] == 400
    assert asgi_call(public, "GET", "/health", [], http_version="1.0")[0] == 200


def test_host_parsing() -> None:
    assert host_name("LocalHost.:8080") == "localhost" and host_name("[::1]:80") == "[::1]"
    assert host_name("a b") is None and host_name("évil") is None and host_name("x:80:80") is None
    assert allowed_hosts_for("127.0.0.1", ()) == () and allowed_hosts_for("0.0.0.0", ()) is None
    assert allowed_hosts_for("0.0.0.0", ("A.lan.",)) == ("a.lan",)
    assert allowed_hosts_for("127.0.0.1", ("x", "*")) is None
    assert is_canonical("/") and is_canonical("/v1/models/a/b") and not is_canonical("/a//b")
    assert is_canonical("/v1/models/") and not is_canonical("/v1/models//")


# -- a bare ASGI call: no test client adds a Host header ---------------------------------------

def asgi_call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]],
              http_version: str = "1.1", body_ends: bool = True,
              no_body: bool = False) -> tuple[int, int]:
    """Call the ASGI app once; the response status and how many times it read the request body.
    With `body_ends` false, the body's first chunk comes and the rest never does; with `no_body`
    too, not even the first."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": http_version,
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 1234)}
    reads, statuses = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads > (0 if no_body else 1) and not body_ends:
            await asyncio.Event().wait()  # a client that never sends the rest
        return {"type": "http.request", "body": b'{"model": ', "more_body": not body_ends}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return statuses[0], reads


def test_one_trailing_slash_is_the_same_route_and_still_needs_the_key() -> None:
    client = client_for(api_key=KEY)
    assert_envelope(send(client, "GET", "/v1/models/"), 401, "invalid_api_key")
    assert_envelope(send(client, "POST", "/v1/chat/completions/"), 401, "invalid_api_key")
    assert send(client, "GET", "/v1/models/", headers=AUTH).status_code == 200
    assert send(client, "POST", "/v1/chat/completions/", headers=AUTH).status_code == 200


MESSAGES = {"model": "gemma", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_no_spelling_of_an_anthropic_route_is_served_without_the_key(path: str) -> None:
    """The same default-deny check as every route (Anthropic's clients send `x-api-key`); these
    paths answer in Anthropic's envelope, the non-canonical ones in OpenAI's."""
    client = client_for(api_key=KEY)
    for key_header in (AUTH, {"x-api-key": KEY}):  # the route is really there, either way
        assert send(client, "POST", path, key_header, json=MESSAGES).status_code == 200
    for spelled in [path, *spellings(path)]:
        for headers in (None, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"},
                        {"Authorization": KEY}):
            answer = send(client, "POST", spelled, headers, json=MESSAGES)
            assert answer.status_code in (401, 404), (spelled, headers, answer.status_code)
            assert "error" in answer.json and answer.json["error"]["message"]


RESPONSES = {"model": "gemma", "max_output_tokens": 4, "input": "hi"}


def test_no_spelling_of_a_responses_route_is_served_without_the_key() -> None:
    """OpenAI's Responses routes, create, retrieve and delete: the same default-deny check."""
    client = client_for(api_key=KEY)
    created = send(client, "POST", "/v1/responses", AUTH, json=RESPONSES)
    assert created.status_code == 200
    one = f"/v1/responses/{created.json['id']}"
    assert send(client, "GET", one, AUTH).status_code == 200
    for method, path in (("POST", "/v1/responses"), ("GET", one), ("DELETE", one)):
        for spelled in [path, *spellings(path)]:
            for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                answer = send(client, method, spelled, headers, json=RESPONSES)
                assert answer.status_code in (401, 404), (spelled, headers, answer.status_code)
                assert answer.json["error"]["message"]
    assert send(client, "DELETE", one, AUTH).status_code == 200
