"""The chat page (README "Chat page") in a real headless Chromium, driven by Playwright's Python
client, against real server processes: the fake engine (streaming, Stop and the server's
cancellation counter, images, tool-call cards, model-written HTML shown as text, the API key,
errors) and the built-in SmolLM2 (a real answer, the prefix cache in the usage line, the README's
screenshot).

The browser is the system's Chromium (Debian's `chromium`; `./run.sh test` installs it when it
can); Playwright's own browser download is never used. Without one, these tests fail and say what
to install.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import start_server, stop_server

try:  # without it, collection fails saying what to install: never a skip
    from playwright.sync_api import Browser, Page, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError as missing:
    raise ImportError("The browser tests need Playwright's Python client: pip install -e '.[test]' "
                      "(or pip install playwright); its browser download is not needed "
                      "(`playwright install` is never run).") from missing

GEMMA = "mlx-community/gemma-3-4b-it-4bit"
SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
KEY = "browser-s3cret"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
HOSTILE = ('Look: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script> '
           "and [a link](javascript:window.__pwned=3) and [docs](https://example.com/x).\n\n"
           '```python\ndef f():\n    return  "<b>1</b>"\n```\n')
ANSWERED = "document.querySelectorAll('.message.assistant .stats .completion-tokens').length >= {}"
WATCH_CSP = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
             "(e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")


def until(page: Page, condition: str) -> None:
    """Wait until the JavaScript `condition` holds in `page`. As a function: Playwright evaluates a
    bare expression with eval(), which the page's Content-Security-Policy forbids."""
    try:
        page.wait_for_function(f"() => ({condition})")
    except PlaywrightTimeout:
        pytest.fail(f"never true: {condition}\npage: {page.inner_text('body')[-1500:]}")


def chromium() -> str:
    given = os.environ.get("MLX_SERVER_CHROMIUM")
    found = given or next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if not found or not Path(found).exists():
        pytest.fail("No Chromium for the browser tests (tests/e2e/test_browser.py): install "
                    "Debian's `chromium` package (`sudo apt-get install chromium`; ./run.sh test "
                    "does it when it runs as root or with password-less sudo), or point "
                    "MLX_SERVER_CHROMIUM at a Chromium or Chrome binary.", pytrace=False)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium()
    # Playwright's Node driver (and the browser it starts) get this environment; the OpenBLAS
    # that pytest preloads for MLX (tests/conftest.py) makes Node's pthread_create fail
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LD_PRELOAD", raising=False)
        playwright_running = sync_playwright()
        playwright = playwright_running.__enter__()
    try:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()
    finally:
        playwright_running.__exit__(None, None, None)


class Chat:
    """One browser tab on the chat page, with what it sent to /v1/chat/completions."""

    def __init__(self, browser: Browser, base: str, *, width: int = 1000, height: int = 700,
                 key: str | None = None) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": width, "height": height})
        if key is not None:
            self.context.add_init_script(f"localStorage.setItem('mlx-server.api-key', {json.dumps(key)})")
        self.context.add_init_script(WATCH_CSP)
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self.sent_headers: list[dict[str, str]] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", self._record)

    def _record(self, request: Any) -> None:
        if request.url.endswith("/v1/chat/completions"):
            self.sent.append(request.post_data_json)
            self.sent_headers.append(request.headers)

    def open(self, model: str | None = GEMMA) -> None:
        response = self.page.goto(self.base + "/")
        assert response is not None and response.status == 200
        if model is not None:
            until(self.page, "document.querySelector('#model').options.length > 0")
            self.page.select_option("#model", model)

    def ask(self, text: str) -> None:
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")

    def answered(self, count: int) -> None:
        until(self.page, ANSWERED.format(count))

    def answer(self, index: int = -1) -> str:
        return str(self.page.locator(".message.assistant .markdown").nth(index).inner_text())

    def settings(self, **fields: str) -> None:
        if self.page.locator("#settings").is_hidden():
            self.page.click("#toggle-settings")
        for field, value in fields.items():
            self.page.fill("#" + field.replace("_", "-"), value)
            self.page.press("#" + field.replace("_", "-"), "Tab")  # a change event: saved

    def close(self) -> None:
        csp = self.page.evaluate("window.__csp")
        self.context.close()
        assert self.errors == [], self.errors  # no uncaught error in the page's script
        assert csp == [], csp  # the page itself never trips its Content-Security-Policy


@pytest.fixture
def chat_with(browser: Browser) -> Iterator[Callable[..., Chat]]:
    opened: list[Chat] = []

    def make(base: str, **options: Any) -> Chat:
        opened.append(Chat(browser, base, **options))
        return opened[-1]

    yield make
    for chat in opened:
        chat.close()


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    """The fake engine without scripted replies: it answers `You said: <message>`, word by word."""
    process, base = start_server(["--engine", "fake", "--model", "gemma", "--fake-delay", "0.02"])
    try:
        yield base
    finally:
        stop_server(process)


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    """A fake-engine server of its own that emits these raw model outputs, in order."""
    started: list[Any] = []

    def start(replies: list[str]) -> str:
        path = tmp_path / f"replies-{len(started)}.json"
        path.write_text(json.dumps(replies))
        process, base = start_server(["--engine", "fake", "--model", "gemma", "--fake-replies", str(path)])
        started.append(process)
        return base

    yield start
    for process in started:
        stop_server(process)


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    """Behind --api-key, one request at a time and one waiting: a third is 503 server_busy."""
    process, base = start_server(["--engine", "fake", "--model", "gemma", "--api-key", KEY,
                                  "--max-batch", "1", "--max-queue", "1", "--fake-delay", "0.02"])
    try:
        yield base
    finally:
        stop_server(process)


def png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def cancellations(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mlx_server_cancellations_total{"))


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# -- the fake engine ---------------------------------------------------------------------------

def test_send_streams_the_answer_with_its_usage_and_keeps_the_chat(
        chat_with: Callable[..., Chat], echo_server: str) -> None:
    chat = chat_with(echo_server)
    chat.open(model=None)
    page = chat.page
    until(page, "document.querySelector('#model').options.length > 0")
    [loaded] = [m["id"] for m in httpx.get(f"{echo_server}/v1/models").json()["data"] if m["loaded"]]
    marked = page.locator("#model option", has_text="loaded")
    assert marked.count() == 1 and marked.get_attribute("value") == loaded
    assert page.input_value("#model") == loaded  # the loaded one, chosen

    page.fill("#input", "first line")
    page.press("#input", "Shift+Enter")  # a new line, not a send
    page.type("#input", "second line")
    assert page.input_value("#input") == "first line\nsecond line" and chat.sent == []
    words = " ".join(f"w{i}" for i in range(100))  # ~2 s of tokens
    page.fill("#input", words)
    page.press("#input", "Enter")
    # streamed: the first words are on the page while the Stop button still shows
    partial = page.wait_for_function(
        "() => !document.querySelector('#stop').hidden"
        " && document.querySelector('.message.assistant .markdown')?.textContent", polling=20).json_value()
    chat.answered(1)
    assert chat.answer() == f"You said: {words}"
    assert chat.answer().startswith(partial) and len(partial) < len(chat.answer()) / 2
    assert page.locator("#stop").is_hidden() and page.locator("#send").is_visible()
    assert chat.sent[0]["stream"] is True and chat.sent[0]["model"] == loaded
    stats = page.locator(".message.assistant .stats")
    assert re.fullmatch(r"TTFT \d+\.\d\d s", stats.locator(".ttft").inner_text())
    assert re.fullmatch(r"\d+\.\d tok/s", stats.locator(".tps").inner_text().strip())
    assert stats.locator(".completion-tokens b").inner_text() == str(2 + 100)
    assert int(stats.locator(".prompt-tokens b").inner_text()) > 100
    assert stats.locator(".cached-tokens b").inner_text().isdigit()

    page.reload()  # kept in localStorage
    chat.answered(1)
    assert chat.answer() == f"You said: {words}"
    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    assert page.locator("#conversations li").count() == 2
    page.locator("#conversations li .open").nth(1).click()
    assert chat.answer() == f"You said: {words}"


def test_stop_aborts_the_request_and_the_server_cancels_the_generation(
        chat_with: Callable[..., Chat], echo_server: str) -> None:
    chat = chat_with(echo_server)
    chat.open()
    page = chat.page
    long = " ".join(["word"] * 300)  # ~6 s of tokens
    for count, stop in enumerate((lambda: page.click("#stop"), lambda: page.keyboard.press("Escape")), 1):
        before = cancellations(echo_server)
        chat.ask(long)
        until(page, f"[...document.querySelectorAll('.message.assistant .markdown')]"
                               f".slice({count - 1}).some((m) => m.textContent.length > 20)")
        stop()
        page.locator(".message.assistant").last.locator(".stats .stopped").wait_for()
        assert page.locator("#send").is_visible() and page.locator("#stop").is_hidden()
        assert 0 < len(chat.answer()) < len(f"You said: {long}")
        assert eventually(lambda before=before: cancellations(echo_server) == before + 1), \
            "the server did not count the cancellation"
    chat.ask("still there?")  # the server is free at once
    until(page, "[...document.querySelectorAll('.message.assistant .markdown')]"
                           ".some((m) => m.textContent === 'You said: still there?')")
    # what a stopped answer had said goes back with the conversation
    assert [m["role"] for m in chat.sent[-1]["messages"]] == ["user", "assistant"] * 2 + ["user"]


def test_settings_regenerate_edit_and_choosing_another_model(
        chat_with: Callable[..., Chat], echo_server: str) -> None:
    chat = chat_with(echo_server)
    chat.open()
    page = chat.page
    chat.settings(system_prompt="Be brief.", temperature="0.3", max_tokens="4")
    chat.ask("one two three four five six")
    chat.answered(1)
    assert chat.answer() == "You said: one two"  # four tokens
    body = chat.sent[0]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["temperature"] == 0.3 and body["max_tokens"] == 4

    chat.settings(max_tokens="")
    page.click(".message.assistant .regenerate")
    until(page, "document.querySelector('.message.assistant .markdown')?.textContent"
                           " === 'You said: one two three four five six'")
    assert page.locator(".message.assistant").count() == 1 and "max_tokens" not in chat.sent[1]

    page.click(".message.user .edit")
    assert page.input_value("#input") == "one two three four five six"
    assert page.locator(".message").count() == 0
    page.fill("#input", "seven")
    page.press("#input", "Enter")
    chat.answered(1)
    assert chat.answer() == "You said: seven" and page.locator(".message.user").count() == 1

    page.select_option("#model", SMOLLM)  # swapped on the next message
    chat.ask("eight")
    chat.answered(2)
    assert chat.sent[-1]["model"] == SMOLLM
    assert SMOLLM in page.locator(".message.assistant .role").last.inner_text()
    until(page, "document.querySelector('#model').selectedOptions[0].textContent"
                           ".includes('loaded')")


def test_images_by_picker_drop_and_paste_are_sent_and_shown(
        chat_with: Callable[..., Chat], echo_server: str, tmp_path: Path) -> None:
    chat = chat_with(echo_server)
    chat.open(GEMMA)
    page = chat.page
    picked = tmp_path / "picked.png"
    picked.write_bytes(png("red"))
    page.set_input_files("#file", str(picked))
    page.evaluate("""([dropped, pasted]) => {
        const file = (b64, name) => new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))],
                                             name, {type: 'image/png'});
        const holding = (f) => { const data = new DataTransfer(); data.items.add(f); return data; };
        document.getElementById('main').dispatchEvent(new DragEvent('drop',
            {dataTransfer: holding(file(dropped, 'dropped.png')), bubbles: true, cancelable: true}));
        document.getElementById('input').dispatchEvent(new ClipboardEvent('paste',
            {clipboardData: holding(file(pasted, 'pasted.png')), bubbles: true, cancelable: true}));
    }""", [base64.b64encode(png("green")).decode(), base64.b64encode(png("blue")).decode()])
    until(page, "document.querySelectorAll('#attachments img.thumb').length === 3")
    chat.ask("What is in these?")
    chat.answered(1)
    assert chat.answer() == "You said: What is in these?"
    thumbs = page.locator(".message.user img.thumb")
    assert thumbs.count() == 3 and page.locator("#attachments img").count() == 0
    assert all(thumbs.nth(i).evaluate("(img) => img.complete && img.naturalWidth === 24")
               for i in range(3))
    [user] = chat.sent[0]["messages"]
    urls = [part["image_url"]["url"] for part in user["content"] if part["type"] == "image_url"]
    assert [base64.b64decode(url.split(",", 1)[1]) for url in urls] == [
        png("red"), png("green"), png("blue")]
    assert all(url.startswith("data:image/png;base64,") for url in urls)


def test_model_written_html_is_shown_as_text_and_code_keeps_its_whitespace(
        chat_with: Callable[..., Chat], scripted: Callable[[list[str]], str]) -> None:
    chat = chat_with(scripted([HOSTILE]))
    response = chat.page.goto(chat.base + "/")
    assert response is not None
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    chat.ask("Say something hostile.")
    chat.answered(1)
    page = chat.page
    text = chat.answer()
    assert '<img src=x onerror="window.__pwned=1">' in text
    assert "<script>window.__pwned=2</script>" in text
    assert "[a link](javascript:window.__pwned=3)" in text  # not a link: shown as written
    answer = page.locator(".message.assistant .markdown")
    assert answer.locator("img").count() == 0 and page.locator("#messages script").count() == 0
    assert answer.locator("a").count() == 1
    assert answer.locator("a").get_attribute("href") == "https://example.com/x"
    assert answer.locator("pre code").inner_text() == 'def f():\n    return  "<b>1</b>"'
    assert answer.locator("pre code").get_attribute("data-lang") == "python"
    time.sleep(0.3)
    assert page.evaluate("window.__pwned") is None


def test_a_tool_call_is_a_card_and_the_typed_result_goes_back_as_a_tool_message(
        chat_with: Callable[..., Chat], scripted: Callable[[list[str]], str]) -> None:
    chat = chat_with(scripted(['Checking.\n```tool_code\nget_weather(city="Paris")\n```',
                               "It is sunny in Paris."]))
    chat.open()
    page = chat.page
    chat.settings(tools=json.dumps([WEATHER]))
    chat.ask("Weather in Paris?")
    card = page.locator(".tool-call")
    card.locator(".tool-result-input").wait_for()
    assert card.locator(".tool-name").inner_text() == "get_weather"
    assert json.loads(card.locator(".tool-args").inner_text()) == {"city": "Paris"}
    assert chat.answer() == "Checking."
    assert chat.sent[0]["tools"] == [WEATHER]
    result = '<img src=x onerror="window.__pwned=4"> 18 °C, sunny'
    card.locator(".tool-result-input").fill(result)
    card.locator(".tool-result-send").click()
    until(page, "[...document.querySelectorAll('.message.assistant .markdown')]"
                           ".some((m) => m.textContent === 'It is sunny in Paris.')")
    *_, call, tool = chat.sent[1]["messages"]
    [sent_call] = call["tool_calls"]
    assert sent_call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert tool == {"role": "tool", "tool_call_id": sent_call["id"], "content": result}
    assert card.locator(".tool-result").inner_text() == result  # as text, in its card
    assert page.locator("#messages img").count() == 0 and page.evaluate("window.__pwned") is None


def test_the_api_key_round_trip(chat_with: Callable[..., Chat], keyed_server: str) -> None:
    chat = chat_with(keyed_server)
    chat.open(model=None)  # the page is open; /v1 is not
    page = chat.page
    page.locator("#notice", has_text="invalid_api_key").wait_for()
    assert "Error 401" in page.inner_text("#notice") and "API key" in page.inner_text("#notice")
    assert page.locator("#settings").is_visible() and page.locator("#model option").count() == 0
    page.fill("#api-key", "wrong")
    with page.expect_response("**/v1/models") as refused:
        page.press("#api-key", "Tab")
    assert refused.value.status == 401
    assert page.locator("#notice").is_visible() and page.locator("#model option").count() == 0
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")
    until(page, "document.querySelector('#model').options.length > 0")
    assert page.locator("#notice").is_hidden()
    chat.ask("with the key")
    chat.answered(1)
    assert chat.answer() == "You said: with the key"
    assert chat.sent_headers[0]["authorization"] == f"Bearer {KEY}"
    page.reload()  # the key is remembered
    until(page, "document.querySelector('#model').options.length > 0")
    assert httpx.get(f"{keyed_server}/v1/models").status_code == 401  # still protected


def test_errors_are_shown_in_place(chat_with: Callable[..., Chat], keyed_server: str) -> None:
    chat = chat_with(keyed_server, key=KEY)
    chat.open()
    page = chat.page
    chat.settings(temperature="5")
    chat.ask("too hot")
    error = page.locator(".error-message")
    error.wait_for()
    assert error.inner_text().startswith("Error 400 (invalid_value): Invalid value for 'temperature'")
    assert page.locator(".message.assistant").count() == 0
    chat.settings(temperature="")

    stop = threading.Event()

    def hold() -> None:  # a long stream that holds the server's one slot (or its one queue place)
        body = {"model": "gemma", "stream": True,
                "messages": [{"role": "user", "content": " ".join(["busy"] * 400)}]}
        with httpx.stream("POST", f"{keyed_server}/v1/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"}) as stream:
            for _ in stream.iter_lines():
                if stop.is_set():
                    return

    holders = [threading.Thread(target=hold) for _ in range(2)]
    try:  # one after the other: the second sent while the first still waits would be the 503
        holders[0].start()
        assert eventually(lambda: httpx.get(f"{keyed_server}/health").json()["running"] == 1)
        holders[1].start()
        assert eventually(lambda: (lambda h: h["running"] == 1 and h["queued"] == 1)(
            httpx.get(f"{keyed_server}/health").json()))
        page.click(".error-message .regenerate")  # Retry
        page.locator(".error-message", has_text="503").wait_for()
        assert re.fullmatch(r"Error 503 \(server_busy\): .+ Retry after 5 s\.\s*Retry",
                            error.inner_text().strip(), re.S), error.inner_text()
    finally:
        stop.set()
        for holder in holders:
            holder.join()
    assert eventually(lambda: httpx.get(f"{keyed_server}/health").json()["running"] == 0)
    page.click(".error-message .regenerate")
    chat.answered(1)
    assert chat.answer() == "You said: too hot" and page.locator(".error-message").count() == 0


def test_a_narrow_window_folds_the_chat_list_away(chat_with: Callable[..., Chat],
                                                  echo_server: str) -> None:
    chat = chat_with(echo_server, width=380, height=720)
    chat.open()
    page = chat.page
    box = page.locator("#sidebar").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 0  # off screen
    chat.ask("small screen")
    chat.answered(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 380  # nothing sticks out
    assert page.locator("#send").is_visible() and page.locator(".message.assistant .stats").is_visible()
    page.click("#toggle-sidebar")
    until(page, "document.getElementById('sidebar').getBoundingClientRect().x >= 0")
    page.locator("#new-chat").click()
    assert page.locator(".message").count() == 0


# -- the built-in SmolLM2 ----------------------------------------------------------------------

@pytest.mark.slow
def test_smollm_answers_in_the_page_and_the_prefix_cache_shows(
        chat_with: Callable[..., Chat], tmp_path: Path) -> None:
    """A real model: streamed, Paris, and the second turn's prompt mostly cached. Writes the
    README's screenshot when MLX_SERVER_SCREENSHOT names where (docs/chat-page.png)."""
    process, base = start_server(["--model", "smollm", "--cache-dir", str(tmp_path / "cache")])
    try:
        chat = chat_with(base)
        chat.open(SMOLLM)
        chat.settings(temperature="0", max_tokens="40")
        chat.page.click("#toggle-settings")  # closed again, for the picture
        chat.ask("What is the capital of France?")
        chat.answered(1)
        assert "Paris" in chat.answer()
        chat.ask("And what is the capital of Germany?")
        chat.answered(2)
        assert "Berlin" in chat.answer()
        stats = chat.page.locator(".message.assistant .stats").last
        prompt = int(stats.locator(".prompt-tokens b").inner_text())
        cached = int(stats.locator(".cached-tokens b").inner_text())
        assert 0 < cached < prompt and cached >= prompt // 2, (cached, prompt)  # the first turn
        chat.page.focus("#input")
        chat.page.mouse.move(600, 520)  # off the buttons: no hover outline in the picture
        shot = chat.page.screenshot(path=os.environ.get("MLX_SERVER_SCREENSHOT")
                                    or str(tmp_path / "chat-page.png"))
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        stop_server(process)
