"""The OpenAI-compatible HTTP API of the real server over loopback, with Python's own http.client:
SSE framing, usage, finish reasons, seeds, stop sequences, max_tokens, the span extensions, the
model routes, /health (serving and draining), cancellation when the client goes away, greedy text
equal to gRPC's, and a bad-input table whose every row gets OpenAI's error shape."""
import gzip
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time

import pytest

from server_harness import REPO, ServerProcess, free_port, pb, request, wait_for

PROMPT = "((3+4)*(5-2))+6="
MB = 1 << 20


# ---- A small HTTP client ----

def http_port(server) -> int:
    return int(server.event("listening")["http_port"])


def call(port, method, path, body=None, headers=None, timeout=60):
    """(status, headers, raw body) of one request on a fresh connection. `body`: a dict or list
    (sent as JSON), str or bytes (sent as they are) or None."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = {"Content-Type": "application/json"} if body is not None else {}
        sent.update(headers or {})
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def post(port, path, body, **kwargs):
    """(status, parsed JSON body) of a POST."""
    status, _, raw = call(port, "POST", path, body, **kwargs)
    return status, json.loads(raw)


def complete(port, **fields):
    fields.setdefault("prompt", PROMPT)
    return post(port, "/v1/completions", fields)


def sse_events(raw: bytes) -> list:
    """The JSON payloads of a server-sent event stream, after checking its framing: every event
    one `data: ` line, events separated by a blank line, the last `data: [DONE]`."""
    text = raw.decode()
    assert text.endswith("\n\n"), text[-200:]
    events = text[:-2].split("\n\n")
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, repr(event)
    payloads = [event[len("data: "):] for event in events]
    assert payloads[-1] == "[DONE]"
    assert "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def stream(port, path, body):
    """(headers, chunks) of a streamed request."""
    status, headers, raw = call(port, "POST", path, {**body, "stream": True})
    assert status == 200, raw
    return headers, sse_events(raw)


def chunk_text(chunk) -> str:
    if not chunk["choices"]:
        return ""
    choice = chunk["choices"][0]
    return choice["text"] if "text" in choice else choice["delta"].get("content") or ""


def assert_error_shape(body, status, message, param=None):
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert message in error["message"], error
    assert error["param"] == param, error
    expected_type = {400: "invalid_request_error", 404: "invalid_request_error",
                     413: "invalid_request_error", 429: "rate_limit_error",
                     500: "server_error", 503: "server_error"}[status]
    assert error["type"] == expected_type, error


def metric(server, name, labels=None):
    return server.metric(name, labels)


def kv_free(server):
    return (server.metric("spanserve_kv_blocks_used") == 0
            and server.metric("spanserve_requests_running") == 0)


# ---- Servers ----

@pytest.fixture(scope="module")
def api(tmp_path_factory, model_dir):
    """One server for the module's plain tests (limits as conftest's `server`)."""
    process = ServerProcess(tmp_path_factory.mktemp("server"), model_dir,
                            {"limits.max_tokens": 512, "scheduler.max_running": 64,
                             "server.http_port": free_port()})
    try:
        yield process.wait_serving()
    finally:
        process.close()


@pytest.fixture
def port(api):
    return http_port(api)


@pytest.fixture(scope="module")
def slow(tmp_path_factory, model_dir):
    """Steps 20 ms longer, one sequence running and one waiting at most: generations last long
    enough to cancel, and the queue fills."""
    process = ServerProcess(tmp_path_factory.mktemp("server"), model_dir,
                            {"debug.step_delay_ms": 20, "scheduler.max_running": 1,
                             "scheduler.max_waiting": 1, "server.http_port": free_port()})
    try:
        yield process.wait_serving()
    finally:
        process.close()


# ---- Completions and chat ----

def grpc_generate(server, **fields):
    return server.stub().Generate(request(**fields), timeout=60)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.2, "seed": 77}],
                         ids=["greedy", "seeded"])
def test_completion_equals_grpc(api, port, sampling):
    expected = grpc_generate(api, max_tokens=16, ignore_eos=True, **sampling)
    status, body = complete(port, max_tokens=16, ignore_eos=True, **sampling)
    assert status == 200, body
    assert body["choices"][0]["text"] == expected.text
    assert body["usage"] == {"prompt_tokens": expected.usage.prompt_tokens,
                             "completion_tokens": expected.usage.generated_tokens,
                             "total_tokens": expected.usage.prompt_tokens
                             + expected.usage.generated_tokens}
    _, chunks = stream(port, "/v1/completions",
                       {"prompt": PROMPT, "max_tokens": 16, "ignore_eos": True, **sampling})
    assert "".join(chunk_text(c) for c in chunks) == expected.text


def test_chat_equals_grpc_on_the_rendered_prompt(api, port):
    messages = [{"role": "system", "content": "Compute."},
                {"role": "user", "content": PROMPT},
                {"role": "assistant", "content": "21"},
                {"role": "user", "content": [{"type": "text", "text": "(1+2)="},
                                             {"type": "text", "text": "again"}]}]
    # The plain role-prefixed format (docs/http_api.md): the model's spanserve.json names none.
    rendered = f"System: Compute.\nUser: {PROMPT}\nAssistant: 21\nUser: (1+2)=\nagain\nAssistant:"
    expected = grpc_generate(api, prompt=rendered, max_tokens=12, ignore_eos=True)
    status, body = post(port, "/v1/chat/completions",
                        {"messages": messages, "max_tokens": 12, "ignore_eos": True})
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": expected.text}
    assert body["usage"]["prompt_tokens"] == expected.usage.prompt_tokens
    _, chunks = stream(port, "/v1/chat/completions",
                       {"messages": messages, "max_completion_tokens": 12, "ignore_eos": True})
    assert "".join(chunk_text(c) for c in chunks) == expected.text


def test_completion_response_shape(port):
    status, body = complete(port, max_tokens=5, ignore_eos=True)
    assert status == 200
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int) and abs(body["created"] - time.time()) < 60
    choice, = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "length"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_sse_framing(port, path, include_usage):
    body = {"max_tokens": 10, "ignore_eos": True}
    if path == "/v1/completions":
        body["prompt"] = PROMPT
    else:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    headers, chunks = stream(port, path, body)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers.get("transfer-encoding") == "chunked"
    chat = path.endswith("chat/completions")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat
                                             else "text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    if chat:  # the first chunk names the role
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    if include_usage:
        usage_chunk = chunks.pop()
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == 10
        assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 10
    assert all("usage" not in c for c in chunks)
    finish = chunks[-1]
    assert finish["choices"][0]["finish_reason"] == "length"
    assert chunk_text(finish) == ""
    assert "attention" in finish["spanserve"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert "".join(chunk_text(c) for c in chunks)


@pytest.mark.parametrize("max_tokens", [1, 7, 30])
def test_max_tokens_and_usage(api, port, max_tokens):
    status, body = complete(port, max_tokens=max_tokens, ignore_eos=True)
    assert status == 200
    prompt_tokens = grpc_generate(api, max_tokens=1).usage.prompt_tokens
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                             "total_tokens": prompt_tokens + max_tokens}
    assert body["choices"][0]["finish_reason"] == "length"


def test_stop_sequence_ends_the_text_with_finish_reason_stop(api, port):
    _, full = complete(port, max_tokens=60, ignore_eos=True, temperature=1.0, seed=3)
    text = full["choices"][0]["text"]
    assert len(text) > 6
    stop = text[3:5]
    for stop_field in (stop, [stop, "never-there"]):
        status, body = complete(port, max_tokens=60, ignore_eos=True, temperature=1.0, seed=3,
                                stop=stop_field)
        assert status == 200, body
        stopped = body["choices"][0]["text"]
        assert body["choices"][0]["finish_reason"] == "stop"
        assert text.startswith(stopped) and stop not in stopped
        assert body["usage"]["completion_tokens"] < 60
    expected = grpc_generate(api, max_tokens=60, ignore_eos=True, temperature=1.0, seed=3,
                             stop=[stop])
    assert stopped == expected.text
    _, chunks = stream(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 60,
                                                 "ignore_eos": True, "temperature": 1.0,
                                                 "seed": 3, "stop": stop})
    assert "".join(chunk_text(c) for c in chunks) == stopped
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_seed_is_echoed_and_reproduces(port):
    def sample(**fields):
        status, body = complete(port, max_tokens=24, ignore_eos=True, temperature=1.5, **fields)
        assert status == 200, body
        return body["choices"][0]["text"], body["spanserve"]["seed"]

    first, seed = sample(seed=1234)
    assert seed == 1234
    assert sample(seed=1234) == (first, 1234)
    assert len({sample(seed=s)[0] for s in range(4)}) > 1
    # Unset: a seed is drawn and reported; sending it back gives the same text.
    drawn_text, drawn = sample()
    assert drawn != sample()[1]
    assert sample(seed=drawn) == (drawn_text, drawn)
    big = 2**64 - 1
    assert sample(seed=big)[1] == big


def test_span_modes_and_return_spans(api, port):
    expected = grpc_generate(api, max_tokens=30, ignore_eos=True, return_spans=True)
    status, body = complete(port, max_tokens=30, ignore_eos=True, return_spans=True,
                            span_mode="self_selected")
    assert status == 200, body
    spans = body["spanserve"]
    assert spans["span_mode"] == "self_selected"
    attention = spans["attention"]
    assert attention["kv_blocks_read"] == expected.attention.kv_blocks_read
    assert attention["kv_blocks_dense"] == expected.attention.kv_blocks_dense > 0
    assert attention["saved_fraction"] == pytest.approx(expected.attention.saved_fraction)
    assert attention["saved_fraction"] == pytest.approx(
        1 - attention["kv_blocks_read"] / attention["kv_blocks_dense"])
    assert [(s["id"], s["referenced_ids"], s["text"], s["in_prompt"], s["dense_fallback"])
            for s in spans["segments"]] == [
        (s.id, list(s.referenced_ids), s.text, s.in_prompt, s.dense_fallback)
        for s in expected.segments]
    assert spans["segments"][0]["id"] == 0 and spans["segments"][0]["in_prompt"]
    assert spans["segments"][0]["text"].startswith(PROMPT)

    status, dense = complete(port, max_tokens=30, ignore_eos=True, span_mode="dense")
    assert dense["spanserve"]["span_mode"] == "dense"
    assert "segments" not in dense["spanserve"]
    assert dense["spanserve"]["attention"]["kv_blocks_read"] == \
        dense["spanserve"]["attention"]["kv_blocks_dense"]
    assert dense["spanserve"]["attention"]["saved_fraction"] == 0

    _, chunks = stream(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 30,
                                                 "ignore_eos": True, "return_spans": True})
    assert chunks[-1]["spanserve"]["segments"] == spans["segments"]
    assert chunks[-1]["spanserve"]["attention"] == attention


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(port, tmp_path):
    """README's curl commands, and a body large enough that curl waits for 100 Continue."""
    base = f"http://127.0.0.1:{port}"

    def curl(*args):
        result = subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    body = json.loads(curl(f"{base}/v1/completions", "-H", "Content-Type: application/json",
                           "-d", json.dumps(prompt(max_tokens=8, temperature=0))).stdout)
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] <= 8
    chunks = sse_events(curl("-N", f"{base}/v1/chat/completions", "-H",
                             "Content-Type: application/json", "-d",
                             json.dumps(chat(PROMPT, max_tokens=8, stream=True,
                                             stream_options={"include_usage": True}))).stdout)
    assert chunks[-1]["usage"]["total_tokens"] > 0
    big = tmp_path / "big.json"
    big.write_text(json.dumps(prompt(padding="x" * (2 * MB))))
    answer = curl("-v", f"{base}/v1/completions", "-H", "Content-Type: application/json",
                  "--data-binary", f"@{big}")
    assert b"< HTTP/1.1 100 Continue" in answer.stderr
    assert_error_shape(json.loads(answer.stdout), 400, "padding: unknown field", "padding")


def test_shipped_model_computes_through_http(start_server):
    """models/arith-small over HTTP: the right answer, segment by segment, the same as gRPC, and
    a real saving of attention."""
    server = start_server({"model.path": str(REPO / "models" / "arith-small"),
                           "server.http_port": free_port()})
    port = http_port(server)
    status, body = complete(port, max_tokens=64, temperature=0, return_spans=True)
    assert status == 200, body
    segments = [s["text"] for s in body["spanserve"]["segments"]]
    assert segments == [PROMPT, "(7*(5-2))+6", "(7*3)+6", "21+6", "27"]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "arith-small"
    expected = server.stub().Generate(request(max_tokens=64, temperature=0), timeout=60)
    assert body["choices"][0]["text"] == expected.text
    assert body["spanserve"]["attention"]["saved_fraction"] > 0


# ---- Models, health, routes ----

def test_models(api, port):
    name = api.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=10).name
    status, _, raw = call(port, "GET", "/v1/models")
    body = json.loads(raw)
    assert status == 200
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        (name, "model", "spanserve")]
    status, _, raw = call(port, "GET", f"/v1/models/{name}")
    assert status == 200 and json.loads(raw) == body["data"][0]
    status, _, raw = call(port, "GET", "/v1/models/gpt-4o")
    assert status == 404
    assert_error_shape(json.loads(raw), 404, f"model: 'gpt-4o' is not served here; this server "
                       f"serves '{name}'", param="model")
    assert json.loads(raw)["error"]["code"] == "model_not_found"
    status, body = complete(port, model=name, max_tokens=2)
    assert status == 200 and body["model"] == name


def test_answers_are_counted_by_route_and_status(api, port):
    def count(rpc, code):
        return api.metric("spanserve_requests_total", {"rpc": rpc, "code": code})

    before = {key: count(*key) for key in [("http_chat_completions", "200"),
                                           ("http_chat_completions", "400"),
                                           ("http_models", "200"), ("http_models", "404")]}
    assert post(port, CHAT, chat(max_tokens=2))[0] == 200
    stream(port, CHAT, chat(max_tokens=2))
    assert post(port, CHAT, chat(n=3))[0] == 400
    assert call(port, "GET", "/v1/models")[0] == 200
    assert call(port, "GET", "/v1/models/other")[0] == 404
    assert {key: count(*key) - value for key, value in before.items()} == {
        ("http_chat_completions", "200"): 2, ("http_chat_completions", "400"): 1,
        ("http_models", "200"): 1, ("http_models", "404"): 1}


def test_health_serving(port):
    status, _, raw = call(port, "GET", "/health")
    assert status == 200 and json.loads(raw) == {"status": "serving"}


@pytest.mark.parametrize("method,path", [("GET", "/v1/nothing"), ("POST", "/v1/models"),
                                         ("GET", "/v1/completions"), ("POST", "/"),
                                         ("DELETE", "/v1/chat/completions")])
def test_unknown_route_is_404(port, method, path):
    status, _, raw = call(port, method, path, {} if method == "POST" else None)
    assert status == 404
    body = json.loads(raw)
    assert_error_shape(body, 404, f"no route {method} {path}")
    assert body["error"]["code"] == "not_found"


# ---- Bad input ----

def chat(content="hi", **fields):
    return {"messages": [{"role": "user", "content": content}], **fields}


def prompt(**fields):
    return {"prompt": PROMPT, **fields}


# (row, path, body, status, param, the message (a part of it))
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
ROWS = [
    ("not JSON", COMPLETIONS, "{not json", 400, None, "body: not valid JSON"),
    ("empty body", COMPLETIONS, "", 400, None, "body: not valid JSON"),
    ("truncated JSON", CHAT, '{"messages": [', 400, None, "body: not valid JSON"),
    ("invalid UTF-8", COMPLETIONS, b'{"prompt": "\xff\xfe"}', 400, None, "body: not valid JSON"),
    ("JSON array", COMPLETIONS, [1, 2], 400, None, "body: expected a JSON object, got an array"),
    ("JSON string", CHAT, '"hi"', 400, None, 'body: expected a JSON object, got the string "hi"'),
    ("JSON null", COMPLETIONS, "null", 400, None, "body: expected a JSON object, got null"),
    ("unknown field", COMPLETIONS, prompt(foo=1), 400, "foo", "foo: unknown field"),
    ("chat field in completions", COMPLETIONS, prompt(messages=[]), 400, "messages",
     "messages: unknown field"),
    ("no prompt", COMPLETIONS, {"max_tokens": 4}, 400, "prompt", "prompt: required"),
    ("no messages", CHAT, {"max_tokens": 4}, 400, "messages", "messages: required"),
    ("temperature a string", COMPLETIONS, prompt(temperature="hot"), 400, "temperature",
     'temperature: expected a number, got the string "hot"'),
    ("max_tokens a fraction", COMPLETIONS, prompt(max_tokens=1.5), 400, "max_tokens",
     "max_tokens: expected an integer, got 1.5"),
    ("max_tokens a string", CHAT, chat(max_tokens="8"), 400, "max_tokens",
     'max_tokens: expected an integer, got the string "8"'),
    ("stop a number", COMPLETIONS, prompt(stop=3), 400, "stop",
     "stop: expected a string or an array of strings, got 3"),
    ("stop item a number", COMPLETIONS, prompt(stop=["a", 3]), 400, "stop[1]",
     "stop[1]: expected a string, got 3"),
    ("stream a string", COMPLETIONS, prompt(stream="yes"), 400, "stream",
     'stream: expected true or false, got the string "yes"'),
    ("stream_options without stream", COMPLETIONS,
     prompt(stream_options={"include_usage": True}), 400, "stream_options",
     "stream_options: only allowed with stream: true"),
    ("prompt a number", COMPLETIONS, {"prompt": 5}, 400, "prompt",
     "prompt: expected a string, got 5"),
    ("prompt token ids", COMPLETIONS, {"prompt": [1, 2, 3]}, 400, "prompt",
     "prompt: token-id prompts are not supported"),
    ("two prompts", COMPLETIONS, {"prompt": ["a", "b"]}, 400, "prompt",
     "prompt: one prompt per request is supported, got 2"),
    ("messages not a list", CHAT, {"messages": "hi"}, 400, "messages",
     'messages: expected an array, got the string "hi"'),
    ("messages empty", CHAT, {"messages": []}, 400, "messages", "messages: must not be empty"),
    ("message not an object", CHAT, {"messages": ["hi"]}, 400, "messages[0]",
     'messages[0]: expected an object, got the string "hi"'),
    ("message without role", CHAT, {"messages": [{"content": "hi"}]}, 400, "messages[0].role",
     "messages[0].role: required"),
    ("message with an unknown role", CHAT, {"messages": [{"role": "robot", "content": "hi"}]},
     400, "messages[0].role", "messages[0].role: must be system, developer, user or assistant"),
    ("message without content", CHAT, {"messages": [{"role": "user"}]}, 400,
     "messages[0].content", "messages[0].content: required"),
    ("image content part", CHAT,
     chat([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]), 400,
     "messages[0].content[0].type", "only text parts are supported"),
    ("tool message", CHAT, {"messages": [{"role": "tool", "content": "x"}]}, 400,
     "messages[0].role", "tool messages are not supported"),
    ("tools", CHAT, chat(tools=[{"type": "function"}]), 400, "tools",
     "tools: tool calls are not supported"),
    ("negative temperature", COMPLETIONS, prompt(temperature=-1), 400, "temperature",
     "temperature: must be a finite number >= 0"),
    ("overflowing temperature", CHAT, chat(temperature=1e300), 400, "temperature",
     "temperature: must be a finite number >= 0"),
    ("top_p of 0", COMPLETIONS, prompt(top_p=0), 400, "top_p", "top_p: must be in (0, 1]"),
    ("top_p over 1", CHAT, chat(top_p=1.5), 400, "top_p", "top_p: must be in (0, 1]"),
    ("negative top_k", COMPLETIONS, prompt(top_k=-1), 400, "top_k", "top_k: must be >= 0"),
    ("max_tokens of 0", COMPLETIONS, prompt(max_tokens=0), 400, "max_tokens",
     "max_tokens: must be between 1 and 512, not 0"),
    ("max_tokens over the limit", COMPLETIONS, prompt(max_tokens=513), 400, "max_tokens",
     "max_tokens: must be between 1 and 512, not 513"),
    ("max_tokens past int32", COMPLETIONS, prompt(max_tokens=2**40), 400, "max_tokens",
     "max_tokens: must be between 1 and 512"),
    ("max_completion_tokens of 0", CHAT, chat(max_completion_tokens=0), 400,
     "max_completion_tokens", "max_completion_tokens: must be between 1 and 512, not 0"),
    ("empty prompt", COMPLETIONS, {"prompt": ""}, 400, "prompt", "prompt: must not be empty"),
    ("prompt longer than the context", COMPLETIONS, {"prompt": "1+2 " * 2000}, 400, "prompt",
     "longer than the model's context of 1024"),
    ("chat longer than the context", CHAT, chat("1+2 " * 2000), 400, "messages",
     "longer than the model's context of 1024"),
    ("prompt plus max_tokens past the context", COMPLETIONS,
     {"prompt": "1+2 " * 200, "max_tokens": 512}, 400, "max_tokens",
     "exceed the model's context of 1024"),
    ("negative seed", COMPLETIONS, prompt(seed=-1), 400, "seed",
     "seed: must be between 0 and 18446744073709551615"),
    ("unknown span_mode", COMPLETIONS, prompt(span_mode="sparse"), 400, "span_mode",
     'span_mode: must be "self_selected" or "dense", got the string "sparse"'),
    ("too many stop sequences", COMPLETIONS, prompt(stop=[f"s{i}" for i in range(9)]), 400,
     "stop", "stop: at most 8 sequences"),
    ("empty stop sequence", COMPLETIONS, prompt(stop=[""]), 400, "stop[0]",
     "stop[0]: must not be empty"),
    ("n of 2", COMPLETIONS, prompt(n=2), 400, "n", "n: only n=1 is supported"),
    ("n of 2 in chat", CHAT, chat(n=2), 400, "n", "n: only n=1 is supported"),
    ("logprobs", COMPLETIONS, prompt(logprobs=1), 400, "logprobs",
     "logprobs: not supported by this server"),
    ("chat logprobs", CHAT, chat(logprobs=True), 400, "logprobs",
     "logprobs: not supported by this server"),
    ("chat top_logprobs", CHAT, chat(top_logprobs=2), 400, "top_logprobs",
     "top_logprobs: not supported by this server"),
    ("presence_penalty", COMPLETIONS, prompt(presence_penalty=0.5), 400, "presence_penalty",
     "presence_penalty: not supported (only 0)"),
    ("wrong model", COMPLETIONS, prompt(model="gpt-4o"), 404, "model",
     "model: 'gpt-4o' is not served here"),
    ("wrong model in chat", CHAT, chat(model="gpt-4o"), 404, "model",
     "model: 'gpt-4o' is not served here"),
]


def bad_request_cases():
    """Each row as sent, and again with stream: true where the body is an object that does not
    set stream itself."""
    for row in ROWS:
        yield pytest.param(*row, False, id=f"{row[0]}-unary")
        body = row[2]
        if isinstance(body, dict) and not {"stream", "stream_options"} & set(body):
            yield pytest.param(row[0], row[1], {**body, "stream": True}, *row[3:], True,
                               id=f"{row[0]}-stream")


@pytest.mark.parametrize("row,path,body,status,param,message,streamed", bad_request_cases())
def test_bad_request(api, port, row, path, body, status, param, message, streamed):
    got, headers, raw = call(port, "POST", path, body)
    assert got == status, raw
    assert headers["content-type"] == "application/json"
    error = json.loads(raw)
    assert_error_shape(error, status, message, param)
    if status == 404:
        assert error["error"]["code"] == "model_not_found"


def test_after_the_bad_requests_the_server_still_serves(api, port):
    status, body = complete(port, max_tokens=3, ignore_eos=True)
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    assert api.metric("spanserve_requests_total",
                      {"rpc": "http_completions", "code": "400"}) >= 1


def test_body_over_8_mb_is_413(port):
    body = json.dumps({"prompt": "x" * (8 * MB)})
    status, _, raw = call(port, "POST", COMPLETIONS, body)
    assert status == 413
    assert_error_shape(json.loads(raw), 413, f"the request body is larger than {8 * MB} bytes")
    assert json.loads(raw)["error"]["code"] == "request_too_large"


def test_chunked_body_over_8_mb_is_413(port):
    """A chunked body carries no Content-Length to check up front: the limit holds for it too."""
    body = json.dumps({"prompt": "x" * (9 * MB)}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        chunks = (body[i:i + MB] for i in range(0, len(body), MB))
        conn.request("POST", COMPLETIONS, body=chunks, encode_chunked=True,
                     headers={"Content-Type": "application/json",
                              "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        status, raw = response.status, response.read()
    finally:
        conn.close()
    assert status == 413, raw[:300]
    assert_error_shape(json.loads(raw), 413, f"the request body is larger than {8 * MB} bytes")


def test_compressed_body_over_8_mb_is_413(port):
    """A gzip body is checked by its Content-Length before it is inflated: the limit holds for
    what it inflates to."""
    body = gzip.compress(json.dumps({"prompt": "x" * (9 * MB)}).encode())
    assert len(body) < MB
    status, _, raw = call(port, "POST", COMPLETIONS, body, headers={"Content-Encoding": "gzip"})
    assert status == 413, raw[:300]
    assert_error_shape(json.loads(raw), 413, f"the request body is larger than {8 * MB} bytes")
    # Under the limit, a compressed body is read as any other.
    small = gzip.compress(json.dumps({"prompt": PROMPT, "max_tokens": 2}).encode())
    status, _, raw = call(port, "POST", COMPLETIONS, small, headers={"Content-Encoding": "gzip"})
    assert status == 200, raw


def raw_exchange(port, data: bytes, timeout=10) -> bytes:
    """What the server answers to `data` on a raw socket, until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while block := sock.recv(65536):
            answer += block
    return answer


def test_post_without_a_length_has_an_empty_body(port):
    """Neither Content-Length nor Transfer-Encoding: an empty body, answered at once (not after
    waiting for the client to close)."""
    start = time.monotonic()
    answer = raw_exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
    assert time.monotonic() - start < 2
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert_error_shape(json.loads(body), 400, "body: not valid JSON")


@pytest.mark.parametrize("headers,body", [
    (b"Transfer-Encoding: chunked", b"zz\r\n"),
    (b"Content-Encoding: gzip\r\nContent-Length: 10", b"0123456789"),
    (b"Content-Encoding: br\r\nContent-Length: 10", b"0123456789"),
], ids=["bad chunk", "bad gzip", "bad brotli"])
def test_unreadable_body_is_400(port, headers, body):
    answer = raw_exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                          b"Connection: close\r\n" + headers + b"\r\n\r\n" + body)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert_error_shape(json.loads(body), 400, "the request body could not be read")


# Bodies of every odd kind: each gets an answer (400, or 200 where the request is valid), never a
# crash.
ODD_BODIES = [
    b"\x00" * 100,
    bytes(range(256)) * 10,
    b"[" * 200_000 + b"]" * 200_000,
    b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"prompt": "a", "logit_bias": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    b'{"prompt": "a\\u0000b", "max_tokens": 2}',
    b'{"prompt": "\\ud800", "max_tokens": 2}',
    b'{"prompt": "a", "max_tokens": 1e999}',
    b'{"prompt": "a", "temperature": -1e999}',
    b'{"prompt": "a", "max_tokens": 99999999999999999999999}',
    b'{"prompt": "a", "seed": 1e20}',
    b'{"prompt": "a", "prompt": "b", "max_tokens": 2}',
    b'{"messages": [{"role": "user", "content": [' + b'{"type":"text","text":"a"},' * 10_000
    + b'{"type":"text","text":"a"}]}], "max_tokens": 2}',
    b'{"prompt": "a", "stream": true, "stream_options": {"include_usage": 1}}',
    b'{"prompt": "a", "stream": true, "stream_options": {"x": null}}',
    b'{"prompt": "a", "n": 1e3}',
    b'{"prompt": "a", "n": 18446744073709551615}',
    b'{"prompt": "a", "tool_choice": {"a": 1}}',
    "{\"prompt\": \"\u00e9\u4e2d\U0001F600\", \"max_tokens\": 2}".encode(),
]


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_odd_bodies_never_crash(api, port, path):
    for body in ODD_BODIES:
        status, headers, raw = call(port, "POST", path, body)
        assert status in (200, 400, 404), (body[:80], status, raw[:300])
        if status != 200:
            assert_error_shape(json.loads(raw), status, "", json.loads(raw)["error"]["param"])
        api._alive()
    status, _ = complete(port, max_tokens=2)
    assert status == 200


def test_concurrent_bad_and_good_requests(port):
    results, lock = [], threading.Lock()

    def client(i):
        bad = i % 2 == 0
        status, body = complete(port, max_tokens=0 if bad else 6, ignore_eos=True, seed=i)
        with lock:
            results.append((bad, status))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [(False, 200)] * 8 + [(True, 400)] * 8


# ---- Client disconnects, a full queue (the slow server) ----

def send(port, body, close=False):
    """A POST /v1/completions written on a raw socket (which the test closes when it likes);
    returns the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + (b"Connection: close\r\n" if close else b"")
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def open_stream(port, body):
    """A streaming request on a raw socket; returns the socket once the first text arrived."""
    sock = send(port, {**body, "stream": True})
    received = b""
    while received.count(b"data: ") < 3:
        block = sock.recv(65536)
        assert block, received
        received += block
    assert received.startswith(b"HTTP/1.1 200")
    return sock


def test_text_streams_as_it_is_made(slow):
    """At 20 ms a step, 25 tokens take half a second: their text comes in many chunks, the first
    long before the last."""
    port = http_port(slow)
    start = time.monotonic()
    sock = send(port, {"prompt": PROMPT, "max_tokens": 25, "ignore_eos": True, "stream": True},
                close=True)
    arrivals, received = [], b""
    while True:
        block = sock.recv(65536)
        if not block:
            break
        arrivals.append(time.monotonic() - start)
        received += block
    sock.close()
    assert received.count(b"data: ") >= 8, received
    assert arrivals[-1] - arrivals[0] > 0.25, arrivals
    assert received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")  # the last chunk, then the end


def test_closing_a_stream_frees_its_kv_blocks(slow):
    port = http_port(slow)
    wait_for(lambda: kv_free(slow), 10, what="an idle server")
    labels = {"rpc": "http_completions", "code": "499"}
    gone_before = slow.metric("spanserve_requests_total", labels)
    cancelled_before = slow.metric("spanserve_generations_finished_total",
                                   {"reason": "cancelled"})
    # 1000 tokens at 20 ms a step would take 20 s: only a cancel ends it soon.
    sock = open_stream(port, {"prompt": PROMPT, "max_tokens": 1000, "ignore_eos": True})
    assert slow.metric("spanserve_kv_blocks_used") > 0
    assert slow.metric("spanserve_requests_running") == 1
    start = time.monotonic()
    sock.close()
    wait_for(lambda: kv_free(slow), 5, what="the closed stream's KV blocks to be freed")
    assert time.monotonic() - start < 2
    assert slow.metric("spanserve_generations_finished_total",
                       {"reason": "cancelled"}) == cancelled_before + 1
    wait_for(lambda: slow.metric("spanserve_requests_total", labels) == gone_before + 1, 5,
             what="the request to be counted as the client's going away")
    assert slow.metric("spanserve_generated_tokens_total") < 1000


def test_closing_a_unary_request_frees_its_kv_blocks(slow):
    port = http_port(slow)
    wait_for(lambda: kv_free(slow), 10, what="an idle server")
    cancelled_before = slow.metric("spanserve_generations_finished_total",
                                   {"reason": "cancelled"})
    sock = send(port, {"prompt": PROMPT, "max_tokens": 1000, "ignore_eos": True})
    wait_for(lambda: slow.metric("spanserve_requests_running") == 1 and
             slow.metric("spanserve_kv_blocks_used") > 0, 10, what="the generation to run")
    start = time.monotonic()
    sock.close()
    wait_for(lambda: kv_free(slow), 5, what="the closed request's KV blocks to be freed")
    assert time.monotonic() - start < 2
    assert slow.metric("spanserve_generations_finished_total",
                       {"reason": "cancelled"}) == cancelled_before + 1


def test_full_queue_is_429(slow):
    port = http_port(slow)
    wait_for(lambda: kv_free(slow), 10, what="an idle server")
    long = {"prompt": PROMPT, "max_tokens": 1000, "ignore_eos": True}
    running = open_stream(port, long)  # it runs now
    waiting = send(port, long)
    try:
        wait_for(lambda: slow.metric("spanserve_requests_waiting") == 1, 10,
                 what="the second request to wait")
        for stream_it in (False, True):
            status, body = complete(port, max_tokens=4, stream=stream_it)
            assert status == 429, body
            assert_error_shape(body, 429, "queue is full")
            assert body["error"]["code"] == "queue_full"
    finally:
        running.close()
        waiting.close()
    wait_for(lambda: kv_free(slow), 5, what="both to be cancelled")
    status, body = complete(port, max_tokens=2)
    assert status == 200


# ---- Loading, failing, draining ----

def test_loading_answers_503(start_server):
    server = start_server({"debug.load_delay_ms": 3000, "server.http_port": free_port()},
                          wait=False)
    server.wait_listening()
    port = http_port(server)
    status, _, raw = call(port, "GET", "/health")
    assert status == 503 and json.loads(raw) == {"status": "loading"}
    for path, body in ((COMPLETIONS, prompt(max_tokens=4)), (CHAT, chat(max_tokens=4))):
        status, got = post(port, path, body)
        assert status == 503
        assert_error_shape(got, 503, "the model is still loading")
        assert got["error"]["code"] == "unavailable"
    status, _, raw = call(port, "GET", "/v1/models")
    assert status == 503
    assert_error_shape(json.loads(raw), 503, "the model is still loading")
    server.wait_serving()
    status, _, raw = call(port, "GET", "/health")
    assert status == 200 and json.loads(raw) == {"status": "serving"}


def test_failed_generation_is_500_or_an_error_event(start_server):
    """The fault-injection hook fails engine steps 3 and 12: the first request (steps 1-3) fails
    whole, the stream after it (steps 4-12) after its first chunks."""
    server = start_server({"debug.fail_steps": [3, 12], "server.http_port": free_port()})
    port = http_port(server)
    message = "generation failed: injected fault at step 3"
    status, body = complete(port, max_tokens=8, ignore_eos=True)
    assert status == 500
    assert_error_shape(body, 500, message)
    _, events = stream(port, COMPLETIONS, prompt(max_tokens=30, ignore_eos=True))
    assert "".join(chunk_text(e) for e in events[:-1])  # text came before the failure
    assert_error_shape(events[-1], 500, "generation failed: injected fault at step 12")
    assert all("error" not in e for e in events[:-1])
    assert server.metric("spanserve_requests_total",
                         {"rpc": "http_completions", "code": "500"}) == 2
    status, body = complete(port, max_tokens=4, ignore_eos=True)
    assert status == 200 and body["usage"]["completion_tokens"] == 4


def first_event(response) -> bytes:
    """What a streamed response has sent once its first event arrived."""
    data = b""
    while b"\n\n" not in data:
        block = response.read1(65536)
        assert block, data
        data += block
    return data


def start_stream(port, max_tokens):
    """(connection, response, what came up to the first event) of a stream in flight."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", COMPLETIONS, json.dumps({"prompt": PROMPT, "max_tokens": max_tokens,
                                                  "ignore_eos": True, "stream": True}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    return conn, response, first_event(response)


def test_draining_answers_503_and_finishes_the_stream_in_flight(start_server):
    server = start_server({"debug.step_delay_ms": 20, "server.drain_grace_seconds": 30,
                           "server.http_port": free_port()})
    port = http_port(server)
    # 100 tokens at 20 ms a step: the drain waits about 2 s for it.
    conn, response, first = start_stream(port, 100)
    server.signal()
    wait_for(lambda: "event=draining" in server.log(), 10, what="the drain to begin")
    status, _, raw = call(port, "GET", "/health")
    assert status == 503 and json.loads(raw) == {"status": "draining"}
    for path, body in ((COMPLETIONS, prompt(max_tokens=4)), (CHAT, chat(max_tokens=4))):
        status, got = post(port, path, body)
        assert status == 503
        assert_error_shape(got, 503, "the server is shutting down")
    status, _, raw = call(port, "GET", "/v1/models")
    assert status == 503
    rest = first + response.read()
    conn.close()
    chunks = sse_events(rest)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert server.wait_exit(30) == 0


def test_stream_past_the_grace_period_ends_with_an_error_event(start_server):
    server = start_server({"debug.step_delay_ms": 20, "server.drain_grace_seconds": 0.5,
                           "server.http_port": free_port()})
    port = http_port(server)
    conn, response, first = start_stream(port, 1000)
    server.signal()
    raw = first + response.read()
    conn.close()
    events = sse_events(raw)
    assert_error_shape(events[-1], 503, "shut down before the generation finished")
    assert server.wait_exit(30) == 0
