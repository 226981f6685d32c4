"""The official `openai` npm package (tests/js, pinned in its package-lock.json) against the real
server's HTTP API over loopback: completions, chat, both streamed (the chunks joined equal the
whole answer), usage in the last chunk, the model list, and refusals as the SDK's own error
classes. tests/js/openai_client.mjs makes the calls; this test checks what it printed."""
import json
import re
import shutil
import subprocess

import pytest

from server_harness import REPO, ServerProcess, free_port, pb

JS_DIR = REPO / "tests" / "js"
PROMPT = "((3+4)*(5-2))+6="
# npm's words for a registry it cannot reach.
NO_NETWORK = re.compile(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|"
                        r"network|proxy", re.I)


def install_openai_sdk():
    """npm ci into tests/js/node_modules unless it is there; skips when npm cannot reach the
    registry, fails on any other install error."""
    if (JS_DIR / "node_modules" / "openai" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed (scripts/install_deps.sh)")
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if NO_NETWORK.search(output):
            pytest.skip(f"npm cannot reach its registry to install openai: {output[-500:]}")
        pytest.fail(f"npm ci failed:\n{output}")


@pytest.fixture(scope="module")
def sdk_run(tmp_path_factory, model_dir):
    """The script's JSON output against a fresh server."""
    install_openai_sdk()
    process = ServerProcess(tmp_path_factory.mktemp("server"), model_dir,
                            {"server.http_port": free_port()})
    try:
        process.wait_serving()
        port = int(process.event("listening")["http_port"])
        result = subprocess.run(["node", str(JS_DIR / "openai_client.mjs"),
                                 f"http://127.0.0.1:{port}/v1", PROMPT],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        yield json.loads(result.stdout), process
    finally:
        process.close()


def test_models(sdk_run):
    out, server = sdk_run
    name = server.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=10).name
    assert [m["id"] for m in out["models"]] == [name]
    assert out["model"]["id"] == name and out["model"]["object"] == "model"


def test_completion(sdk_run):
    out, _ = sdk_run
    completion = out["completion"]
    assert completion["object"] == "text_completion"
    assert completion["id"].startswith("cmpl-")
    choice, = completion["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["text"]
    assert completion["usage"]["completion_tokens"] == 12
    assert completion["usage"]["total_tokens"] == (completion["usage"]["prompt_tokens"] + 12)


def test_completion_stream_joins_to_the_same_text(sdk_run):
    out, _ = sdk_run
    stream = out["completion_stream"]
    assert len(stream["chunks"]) >= 2  # text, then the finish (a fast server may batch all text)
    assert stream["text"] == out["completion"]["choices"][0]["text"]
    assert stream["chunks"][-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "text_completion" for c in stream["chunks"])
    assert len({c["id"] for c in stream["chunks"]}) == 1


def test_chat(sdk_run):
    out, _ = sdk_run
    chat = out["chat"]
    assert chat["object"] == "chat.completion" and chat["id"].startswith("chatcmpl-")
    message = chat["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]
    assert chat["usage"]["completion_tokens"] == 12
    assert chat["choices"][0]["finish_reason"] == "length"


def test_chat_stream_with_usage(sdk_run):
    out, _ = sdk_run
    stream = out["chat_stream"]
    chunks = stream["chunks"]
    assert stream["text"] == out["chat"]["choices"][0]["message"]["content"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # The usage chunk comes last, with no choices; the one before it has the finish reason.
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == out["chat"]["usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_chat_stream_helper_assembles_the_answer(sdk_run):
    out, _ = sdk_run
    final = out["chat_stream_helper"]
    assert final["choices"][0]["message"]["content"] == out["chat"]["choices"][0]["message"][
        "content"]
    assert final["choices"][0]["finish_reason"] == "length"


def test_bad_temperature_is_a_bad_request_error(sdk_run):
    out, _ = sdk_run
    error = out["bad_temperature"]
    assert error is not None, "a negative temperature was accepted"
    assert error["class"] == "BadRequestError" and error["is_bad_request"]
    assert error["status"] == 400
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == "temperature"
    assert error["error"]["message"].startswith("temperature: ")
    assert error["error"]["message"] in error["message"]


def test_bad_type_in_a_stream_request_is_a_bad_request_error(sdk_run):
    out, _ = sdk_run
    error = out["bad_stream_temperature"]
    assert error is not None and error["is_bad_request"] and error["status"] == 400
    assert error["error"]["param"] == "temperature"
    assert "expected a number" in error["error"]["message"]


def test_wrong_model_is_not_found(sdk_run):
    out, _ = sdk_run
    for case in ("wrong_model", "unknown_model"):
        error = out[case]
        assert error is not None and error["is_not_found"] and error["status"] == 404, case
        assert error["error"]["code"] == "model_not_found", case
        assert "'gpt-4o' is not served here" in error["error"]["message"], case
