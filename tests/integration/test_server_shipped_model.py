"""The shipped model (models/arith-small) through a real server on the CPU backend: held-out
records of both shipped levels (the first of each level's test split, regenerated from the
preset's seed), greedy, in SELF_SELECTED and DENSE modes, checked step by step by the dataset's
checker. The full table is bench/results/arith-small-eval.md (training/spanserve_train/evaluate.py).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from server_harness import CLI_BIN, REPO, ServerProcess

sys.path.insert(0, str(REPO / "training"))
from spanserve_train import arith_data as ad  # noqa: E402
from spanserve_train import evaluate as ev  # noqa: E402

MODEL = REPO / "models" / "arith-small"
LEVELS = {"l1": ("arith-l1", 101), "l2": ("arith-l2", 202)}  # preset, seed of the shipped data
PER_LEVEL = 24


def held_out(level: str) -> list[dict]:
    preset, seed = LEVELS[level]
    spec = ad.spec_from_preset(ad.load_preset(preset))
    return ad.generate(spec, PER_LEVEL, f"arith-{seed}-test", set())  # make_splits' test seed


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("server"), MODEL)
    try:
        yield process.wait_serving()
    finally:
        process.close()


def test_records_are_the_test_split_of_the_shipped_levels():
    spanserve = json.loads((MODEL / "spanserve.json").read_text())
    assert spanserve["prompt_segmentation"] == "whole"
    l2 = held_out("l2")
    assert all(len(r["steps"]) >= 8 for r in l2)  # the harder level: chains of 8 or more steps


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("mode", ["self_selected", "dense"])
def test_shipped_model_solves_held_out_records(shipped_server, level, mode):
    result = ev.evaluate(shipped_server.address, held_out(level), mode, max_tokens=448,
                         concurrency=8)
    row = result.row()
    assert row["requests"] == PER_LEVEL
    assert row["all_steps_correct"] >= 0.95, result.errors  # every step a correct rewrite
    assert row["malformed_headers"] < 0.01
    if mode == "dense":
        assert row["attended_fraction"] == 1.0
    elif level == "l2":
        assert row["attended_fraction"] <= 0.5  # long chains: each step reads the one before


def test_cli_prints_one_step_a_line(shipped_server):
    result = subprocess.run([str(CLI_BIN), "--address", shipped_server.address,
                             "((3+4)*(5-2))+6="], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "(7*(5-2))+6\n(7*3)+6\n21+6\n27"
    assert "finish: eos" in result.stderr.decode()
