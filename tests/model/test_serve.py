"""`nexvk serve` as a client sees it: the server runs as a subprocess on a free loopback port
with the tiny model, and the `openai` package talks to it. Its replies must equal what the
model generates alone (Model.generate), whatever else runs beside them."""
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

N_PARALLEL = 2
CTX = 1024


@pytest.fixture(scope="module")
def tiny_path(fuzz, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny.gguf"
    fuzz.write_gguf(path, *fuzz.tiny_parts())
    return path


@pytest.fixture(scope="module")
def server(tiny_path):
    """The base URL of a running `nexvk serve` (stopped after the module's tests); its output
    goes to a file (a pipe nobody reads could fill up and stall it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "nexvk", "serve", "-m", str(tiny_path), "--port", str(port),
           "-np", str(N_PARALLEL), "-c", str(CTX), "--backend", "numpy", "-ctk", "turbo3",
           "-ctv", "turbo3", "-a", "tiny"]
    log = tiny_path.with_suffix(".log")
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"nexvk serve did not start:\n{log.read_text()}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("nexvk serve did not stop on SIGTERM")
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def alone(tiny_path):
    """alone(prompt or messages, n) -> the greedy reply of the model alone (same cache
    format): Model.generate for a text, the chat template's ids run token by token for
    messages."""
    import numpy as np
    from nexvk.model.model import Model
    m = Model.load(tiny_path, ctx=CTX, k_type="turbo3", v_type="turbo3")

    def run(prompt, n):
        if isinstance(prompt, str):
            return m.generate(prompt, n=n, temperature=0.0)
        m.reset()
        logits, out = m.forward(m.tokenizer.encode_chat(prompt), 0, last_only=True)[0], []
        while len(out) < n and int(np.argmax(logits)) not in m.tokenizer.stop_ids:
            out.append(int(np.argmax(logits)))
            logits = m.forward(out[-1:], m.pos)[0]
        return m.tokenizer.decode(out)
    return run


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    h = httpx.get(server + "/health").json()
    assert h["status"] == "ok" and h["slots"] == N_PARALLEL


def test_completion_equals_the_model_alone(client, alone):
    r = client.completions.create(model="tiny", prompt="The sun is", max_tokens=12,
                                  temperature=0)
    want = alone("The sun is", 12)
    assert r.choices[0].text == want
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 12 else "stop")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens <= 12


def test_chat_stream_adds_up_to_the_reply(client, alone):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert text == alone(msgs, 10)
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == text and len([p for p in pieces if p]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_more_requests_than_sequences_each_get_their_own_reply(client, alone):
    """Six requests on two sequences: they queue, run two at a time in batched steps, and
    each reply is the one its prompt gets alone."""
    prompts = ["a b c", "Once upon", "1 2 3 4 5 6 7", "x", "The cat sat", "hello world"]
    got = [None] * len(prompts)

    def ask(i):
        got[i] = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=8 + i,
                                           temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [alone(p, 8 + i) for i, p in enumerate(prompts)]


def test_seeded_sampling_repeats(client):
    kw = dict(model="tiny", prompt="Once upon", max_tokens=10, temperature=1.5, top_p=0.9)
    a, b = (client.completions.create(seed=7, **kw).choices[0].text for _ in range(2))
    assert a == b
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in range(8, 12)}
    assert len(others | {a}) > 1  # the seed is used


def test_stop_string_ends_the_reply_before_it(client, alone):
    full = alone("Once upon", 16)
    stop = full[5:8]
    assert len(stop) == 3 and stop in full
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=16,
                                  temperature=0, stop=[stop, "\x00never"])
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    s = client.completions.create(model="tiny", prompt="Once upon", max_tokens=16,
                                  temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in s) == full[:full.index(stop)]


@pytest.mark.parametrize("body,needle", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user"}]}, "content"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, "not supported by nexvk: n"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": 5}, "stop"),
])
def test_malformed_chat_requests_get_400(server, body, needle):
    r = httpx.post(server + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_bad_bodies_and_prompts_get_400_and_the_server_lives_on(server, client):
    r = httpx.post(server + "/v1/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/completions", json={"prompt": [1, 2, 10 ** 9]})
    assert r.status_code == 400 and "token ids" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="word " * 2000, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and "-c" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="", max_tokens=4)
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).choices[0].text


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_frees_its_sequence(server, stream):
    """A client that leaves (a stream after two chunks, or a plain request after a second):
    the server stops that generation, which would run on to the end of the 1024-token
    context, and its sequence is free again."""
    def health():
        return httpx.get(server + "/health").json()

    before = health()["cancelled"]
    body = {"prompt": "Once upon", "max_tokens": CTX, "temperature": 0, "stream": stream}
    if stream:
        with httpx.stream("POST", server + "/v1/completions", json=body, timeout=60) as r:
            got = 0
            for line in r.iter_lines():  # leaving this loop closes the connection
                got += line.startswith("data:") and bool(json.loads(line[5:])["choices"][0]["text"])
                if got == 2:
                    break
            assert got == 2
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server + "/v1/completions", json=body, timeout=1)
    deadline = time.monotonic() + 30
    while health()["busy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health()["busy"] == 0 and health()["cancelled"] == before + 1
