"""serve.py's API through the official `openai` client against a live server on 127.0.0.1: the text of
sample.py and chat.py for the same prompt, concurrent clients each getting their own text, usage counts,
every error status, clients that go away, a bounded load, and SIGTERM."""

import concurrent.futures
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("starlette", reason="serving needs starlette (pip install -e '.[serve]')")
uvicorn = pytest.importorskip("uvicorn", reason="serving needs uvicorn (pip install -e '.[serve]')")
openai = pytest.importorskip("openai", reason="the API is tested with the official openai client")

from conftest import assert_clean_error, run, start  # noqa: E402
from gptkit import conversation, loading  # noqa: E402
from gptkit.openai_api import Service, is_loopback, listen, make_app  # noqa: E402
from gptkit.serving import Engine  # noqa: E402

KEY = "test-key"
pytestmark = pytest.mark.slow  # every test serves on a port, and some start the scripts as processes

PROMPTS = ["Once upon a time", "The cat", "In the beginning was", "Hello", "A list of things:", "Why is the sky",
           "1 2 3", "She said"]


class Slow(torch.nn.Module):
    """A model whose every forward takes at least `seconds` longer: requests that overlap for sure."""

    def __init__(self, model, seconds):
        super().__init__()
        self.model, self.seconds, self.config, self.transformer = model, seconds, model.config, model.transformer

    def forward(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.model(*args, **kwargs)


@contextmanager
def live_server(folder, slow=0.0, max_batch=8, max_queue=32, max_tokens=64):
    """The app serve.py runs, served by uvicorn on a free port of 127.0.0.1 in a thread of this process."""
    model, tok, _ = loading.load_for_inference(str(folder), "", device="cpu")
    engine = Engine(Slow(model, slow) if slow else model, tok, max_batch=max_batch, max_queue=max_queue)
    service = Service(engine, tok, "tiny", conversation.transcript_for(tok)[0], api_key=KEY, max_tokens=max_tokens)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(make_app(service), log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield SimpleNamespace(url=url, service=service, engine=engine, tok=tok,
                              client=openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60))
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def server(tiny_gpt2):
    with live_server(tiny_gpt2) as s:
        yield s


def http(url, data=None, headers=None):
    """(status, JSON body) of a plain request, without any client library's checks."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def complete(client, prompt, stream=False, **kw):
    """(text, finish_reason, usage) of a completion, streamed or not."""
    kw = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0, **kw}
    if not stream:
        r = client.completions.create(**kw)
        return r.choices[0].text, r.choices[0].finish_reason, r.usage
    text, finish, usage = "", None, None
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    return text, finish, usage


def chat(client, content, stream=False, **kw):
    kw = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 24, "temperature": 0,
          **kw}
    if not stream:
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    return text, finish, usage


@pytest.mark.parametrize("stream", [False, True])
def test_greedy_completion_is_sample_py_text_with_its_usage(server, tiny_gpt2, stream):
    prompt = PROMPTS[0]
    p = run("sample.py", f"--init_from={tiny_gpt2}", f"--start={prompt}", "--temperature=0", "--max_new_tokens=24",
            "--device=cpu")
    expected = p.stdout[len(prompt):p.stdout.rindex("\n---------------")]
    text, finish, usage = complete(server.client, prompt, stream)
    assert text == expected
    ids = server.tok.encode(prompt)
    assert usage.prompt_tokens == len(ids) and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if finish == "length":
        assert usage.completion_tokens == 24
    else:  # the end-of-text token, counted as generated
        assert finish == "stop" and usage.completion_tokens <= 24


@pytest.mark.parametrize("stream", [False, True])
def test_greedy_chat_reply_is_chat_py_reply(server, tiny_gpt2, stream):
    p = run("chat.py", f"--init_from={tiny_gpt2}", "--prompt=Hello there", "--temperature=0", "--max_new_tokens=24",
            "--device=cpu")
    text, finish, usage = chat(server.client, "Hello there", stream)
    assert "Assistant: " + text + "\n" == p.stdout
    rendered = conversation.CHAT.render([], "Hello there")  # chat.py's transcript of one line
    assert usage.prompt_tokens == len(server.tok.encode(rendered))


def test_eight_concurrent_clients_each_get_their_single_client_text(tiny_gpt2):
    with live_server(tiny_gpt2, slow=0.005) as s:
        alone = [complete(s.client, p)[0] for p in PROMPTS]
        most, done = [0], threading.Event()

        def watch():  # how many requests the engine decoded together at most
            while not done.is_set():
                most[0] = max(most[0], s.engine.counts()[0])
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda i: complete(s.client, PROMPTS[i], stream=i % 2 == 1)[0], range(8)))
        done.set()
        watcher.join()
    assert together == alone
    assert most[0] >= 4  # they really were decoded together


def error_of(call):
    with pytest.raises(openai.APIStatusError) as e:
        call()
    return e.value


def test_every_error_has_its_status_and_a_sentence(server, tiny_gpt2):
    c = server.client
    e = error_of(lambda: complete(c, "x", temperature=5))
    assert e.status_code == 400 and "temperature" in e.message
    e = error_of(lambda: c.chat.completions.create(model="tiny", messages=[]))
    assert e.status_code == 400 and "messages" in e.message
    e = error_of(lambda: complete(c, "word " * 200))  # 200 tokens, past the 128 of the context
    assert e.status_code == 400 and "128" in e.message and e.code == "context_length_exceeded"
    e = error_of(lambda: complete(c, "x", n=2))
    assert e.status_code == 400 and "n must be 1" in e.message
    status, body = http(server.url + "/v1/completions", b"{not json", {"Authorization": f"Bearer {KEY}"})
    assert status == 400 and "JSON" in body["error"]["message"]

    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    e = error_of(lambda: complete(wrong, "x"))
    assert e.status_code == 401 and "API key" in e.message
    status, body = http(server.url + "/v1/models")  # no key at all
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert c.models.list().data[0].id == "tiny"

    e = error_of(lambda: c.completions.create(model="gpt-4", prompt="x", max_tokens=2))
    assert e.status_code == 404 and "'tiny'" in e.message

    with live_server(tiny_gpt2, slow=0.05, max_batch=1, max_queue=0, max_tokens=100) as small:
        stream = small.client.completions.create(model="tiny", prompt="x", max_tokens=100, stream=True)
        next(iter(stream))  # the only row is taken
        e = error_of(lambda: complete(small.client, "y"))
        assert e.status_code == 429 and "busy" in e.message and int(e.response.headers["retry-after"]) > 0
        stream.close()
        small.engine.stop()
        e = error_of(lambda: complete(small.client, "y"))
        assert e.status_code == 503 and "stopping" in e.message
        assert http(small.url + "/health")[0] == 503


def wait_for_idle(s, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        health = http(s.url + "/health")[1]
        if health["decoding"] == 0 and health["waiting"] == 0:
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_goes_away_frees_its_slot_and_leaves_the_others_text_unchanged(tiny_gpt2):
    with live_server(tiny_gpt2, slow=0.01, max_tokens=60) as s:
        expected = complete(s.client, PROMPTS[2], max_tokens=60)[0]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            other = pool.submit(complete, s.client, PROMPTS[2], True, max_tokens=60)
            stream = s.client.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=60, stream=True)
            for _, _ in zip(range(3), stream):
                pass
            stream.close()  # the client hangs up mid-stream
            assert other.result()[0] == expected
        assert wait_for_idle(s)


def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_a_bounded_load_fails_only_past_the_queue_and_leaks_nothing(tiny_gpt2):
    """4 rounds of 32 concurrent clients against 8 rows and 8 places in the queue."""
    with live_server(tiny_gpt2, max_batch=8, max_queue=8, max_tokens=16) as s:
        def one(i):
            try:
                text, finish, usage = complete(s.client, PROMPTS[i % 8], stream=i % 2 == 0, max_tokens=16)
                return finish, text
            except openai.RateLimitError:
                return 429, None

        rounds, memory, expected = [], [], {p: complete(s.client, p, max_tokens=16)[0] for p in PROMPTS}
        deadline = time.time() + 120
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            for _ in range(4):
                if time.time() > deadline:
                    break
                results = list(pool.map(one, range(32)))
                rounds.append(results)
                assert wait_for_idle(s)  # every slot came back
                memory.append(rss_mb())
    for results in rounds:
        served = [(i, text) for i, (finish, text) in enumerate(results) if finish != 429]
        assert len(served) >= 16  # the 8 rows and the 8 places in the queue at least
        assert all(text == expected[PROMPTS[i % 8]] for i, text in served)
    assert len(rounds) >= 2 and memory[-1] - memory[1] < 30, memory  # flat after the first round's warm-up


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.serial
def test_serve_py_stops_on_sigterm_within_seconds_with_status_0(tiny_gpt2):
    port = free_port()
    p = start("serve.py", f"--init_from={tiny_gpt2}", f"--port={port}", "--device=cpu", "--max_tokens=100000")
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if http(url + "/health")[0] == 200:
                break
        except OSError:  # not listening yet
            time.sleep(0.1)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    stream = client.completions.create(model="tiny", prompt="x", max_tokens=100000, stream=True)
    next(iter(stream))
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert time.time() - t0 < 10 and "stopped" in err and "Traceback" not in err
    assert not is_loopback("0.0.0.0") and is_loopback("127.0.0.1") and is_loopback("localhost")


def test_a_port_in_use_is_one_sentence(tiny_gpt2):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        p = run("serve.py", f"--init_from={tiny_gpt2}", f"--port={s.getsockname()[1]}", check=False)
    assert_clean_error(p, status=1, words=["cannot listen on 127.0.0.1:", "--port"])


def browser():
    """A headless Chromium driven by selenium (Debian's chromium and chromium-driver), or a skip saying why."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the chat page is tested with selenium")
    import shutil
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no Chromium and chromedriver to test the chat page in (Debian: apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,700"):
        options.add_argument(flag)
    # the driver named explicitly: selenium would otherwise look for one online
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_the_chat_page_streams_an_answer_and_stops_it_in_a_real_browser(tiny_gpt2):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    driver = browser()
    try:
        with live_server(tiny_gpt2, slow=0.03, max_tokens=100) as s:
            full = chat(s.client, "Hello there", max_tokens=100)[0]
            driver.get(s.url + "/")
            wait = WebDriverWait(driver, 20, poll_frequency=0.02)
            for field, value in (("api_key", KEY), ("temperature", "0"), ("max_tokens", "100")):
                driver.find_element(By.ID, field).clear()
                driver.find_element(By.ID, field).send_keys(value, Keys.TAB)
            wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny")  # it read /v1/models with the key
            driver.find_element(By.ID, "input").send_keys("Hello there", Keys.ENTER)
            reply = lambda: driver.find_elements(By.CSS_SELECTOR, ".assistant")[-1].text  # noqa: E731
            wait.until(lambda d: len(reply()) > 5)  # streamed: part of the answer is shown before the rest
            assert driver.find_element(By.ID, "stop").is_enabled() and len(reply()) < len(full.strip())
            driver.find_element(By.ID, "stop").click()
            wait.until(lambda d: d.find_element(By.ID, "stats").text == "stopped")
            shown = reply()
            assert full.strip().startswith(shown.strip()) and len(shown) < len(full.strip())
            assert driver.find_element(By.ID, "send").is_enabled()
            assert wait_for_idle(s)  # stopping in the page freed the request's slot
            driver.find_element(By.ID, "new").click()
            assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []
            driver.find_element(By.ID, "input").send_keys("Hello there", Keys.ENTER)  # a whole answer now
            wait.until(lambda d: "tokens/s" in d.find_element(By.ID, "stats").text and not
                       d.find_element(By.ID, "stop").is_enabled())
            assert reply() == full.strip()
    finally:
        driver.quit()
