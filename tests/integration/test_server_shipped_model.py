"""The shipped model (models/arith-small) through a real server on the CPU backend: held-out
records of the shipped range (the first of each bucket of the arith-range test split,
regenerated from the preset's seed), greedy, in SELF_SELECTED and DENSE modes, checked step by
step by the dataset's checker; and a 12-operator answer to the end with the server's defaults.
The full table is bench/results/arith-small-eval.md (training/spanserve_train/evaluate.py).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from server_harness import CLI_BIN, REPO, SERVER_BIN, ServerProcess, free_port, pb

sys.path.insert(0, str(REPO / "training"))
from spanserve_train import arith_data as ad  # noqa: E402
from spanserve_train import evaluate as ev  # noqa: E402

MODEL = REPO / "models" / "arith-small"
PRESET, SEED = "arith-range", 303  # the shipped data: training/tools/gpu_train.sh
PER_BUCKET = 2  # of each bucket: operators (1-2, 3-4, 5-7, 8-10, 11-12) x operand digits
MAX_TOKENS = 600  # the longest answer of the range is under 450 tokens; prompt + 600 < 1024


def shipped_test_split(n: int = 400) -> list[dict]:
    """The first n records of the shipped test split (make_splits draws it first, alone)."""
    spec = ad.spec_from_preset(ad.load_preset(PRESET))
    return ad.generate(spec, n, f"arith-{SEED}-test", set())


def held_out() -> list[dict]:
    groups = ev.group_by_bucket(shipped_test_split(), PER_BUCKET)
    assert len(groups) == 10 and all(len(g) == PER_BUCKET for g in groups.values())
    return [r for g in groups.values() for r in g]


class NoConfigServer(ServerProcess):
    """`spanserve --model DIR` as a user starts it: no --config, only the ports picked free."""

    def __init__(self, workdir, model):
        self.workdir, self.log_path, self.config_path = workdir, workdir / "server.log", None
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(SERVER_BIN), "--model", str(model), "--device", "cpu",
                                      "--bind-address", "127.0.0.1", "--port", "0",
                                      "--metrics-port", "0", "--http-port", str(free_port())],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.grpc_port = self.metrics_port = None
        self._channel = None


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("server"), MODEL)
    try:
        yield process.wait_serving()
    finally:
        process.close()


def test_records_are_the_test_split_of_the_shipped_range():
    spanserve = json.loads((MODEL / "spanserve.json").read_text())
    assert spanserve["prompt_segmentation"] == "whole"
    records = held_out()
    assert {len(r["steps"]) for r in records} >= {1, 12}  # the whole range, both ends
    assert {ad.bucket_of(r["expr"])[1] for r in records} == {1, 2}


@pytest.mark.parametrize("mode", ["self_selected", "dense"])
def test_shipped_model_solves_held_out_records(shipped_server, mode):
    records = held_out()
    for long in (False, True):  # chains of 8 or more steps apart: their attended fraction
        group = [r for r in records if (len(r["steps"]) >= 8) == long]
        result = ev.evaluate(shipped_server.address, group, mode, max_tokens=MAX_TOKENS,
                             concurrency=10)
        row = result.row()
        assert row["requests"] == len(group) > 0
        assert row["all_steps_correct"] >= 0.95, result.errors  # every step a correct rewrite
        assert row["malformed_headers"] < 0.01
        if mode == "dense":
            assert row["attended_fraction"] == 1.0
        elif long:
            assert row["attended_fraction"] <= 0.5  # each step reads the one before


def test_twelve_operators_finish_with_the_servers_defaults(tmp_path):
    """No --config, no max_tokens: the answer gets the room the context leaves and ends with
    EOS. The record is the test split's first of 12 operators with 2-digit operands (solved in
    bench/results/arith-small-eval.md)."""
    record = next(r for r in shipped_test_split() if len(r["steps"]) == 12
                  and ad.bucket_of(r["expr"])[1] == 2)
    process = NoConfigServer(tmp_path, MODEL)
    try:
        process.wait_serving()
        request = pb.GenerateRequest(prompt=record["prompt"], temperature=0.0,
                                     span_mode=pb.SPAN_MODE_SELF_SELECTED, return_spans=True,
                                     include_span_markup=True)
        assert not request.HasField("max_tokens")
        response = process.stub().Generate(request, timeout=300)
    finally:
        process.close()
    report = ad.check_output(record["prompt"], response.text)
    assert response.finish_reason == pb.FINISH_REASON_EOS, response.text
    assert report.ok and report.answer == str(record["answer"]), report.errors


def test_cli_prints_one_step_a_line(shipped_server):
    result = subprocess.run([str(CLI_BIN), "--address", shipped_server.address,
                             "((3+4)*(5-2))+6="], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "(7*(5-2))+6\n(7*3)+6\n21+6\n27"
    assert "finish: eos" in result.stderr.decode()
