"""model.tensor_parallel_size through a real server: the shipped model served with 2 and 4
simulated ranks on the CPU backend (engine/model/tensor_parallel.h: heads and MLP sharded, partial
products summed) gives the same greedy text as the unsharded server, in both span modes; a size
that does not divide the model's heads stops the server with a message naming it."""
from __future__ import annotations

import subprocess

import pytest

from server_harness import REPO, SERVER_BIN, ServerProcess, pb

MODEL = REPO / "models" / "arith-small"  # 4 heads, 4 KV heads
PROMPTS = ["(3+4)*5=", "((12-7)*(9-3))+4=", "(((2+3)*4)-(6-1))*2=", "(8*(7-5))+((9-4)*3)="]


def greedy(server, prompt, mode):
    response = server.stub().Generate(
        pb.GenerateRequest(prompt=prompt, max_tokens=120, span_mode=mode, temperature=0),
        timeout=120)
    return response.text


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    started = {}
    try:
        for ranks in (1, 2, 4):
            started[ranks] = ServerProcess(tmp_path_factory.mktemp(f"tp{ranks}"), MODEL,
                                           {"model.tensor_parallel_size": ranks})
        yield {ranks: s.wait_serving() for ranks, s in started.items()}
    finally:
        for s in started.values():
            s.close()


@pytest.mark.parametrize("mode", [pb.SPAN_MODE_SELF_SELECTED, pb.SPAN_MODE_DENSE])
def test_sharded_servers_give_the_unsharded_text(servers, mode):
    for ranks in (2, 4):
        assert servers[ranks].event("model_loaded")["backend"] == f"cpu-tp{ranks}"
    for prompt in PROMPTS:
        want = greedy(servers[1], prompt, mode)
        assert want  # the shipped model answers
        for ranks in (2, 4):
            assert greedy(servers[ranks], prompt, mode) == want, (ranks, prompt)


def test_a_size_that_does_not_divide_the_heads_stops_the_server(tmp_path):
    proc = subprocess.run([str(SERVER_BIN), "--model", str(MODEL), "--device", "cpu",
                           "--tensor-parallel-size", "3", "--port", "0", "--metrics-port", "0",
                           "--http-port", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "tensor_parallel_size 3" in proc.stdout + proc.stderr
