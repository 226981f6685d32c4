"""A small instance of the document-to-summary span task (issue 17) through a real server: the
summ-small preset's documents (training/spanserve_train/summ_data.py), a span tokenizer built from
them, a toy model trained here for a few steps and exported by the trainer, served on the CPU.
What it checks is the path, not the quality (a 0.4M model after 30 steps writes noise): the
server segments a document into exactly the generator's sentences, as the model was trained on;
both span modes run a held-out document to its token budget; every segment's header names only
earlier segments; and the generated text scores through summ_eval without error.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from server_harness import PYTHON, REPO, ServerProcess, pb

sys.path.insert(0, str(REPO / "training"))
from spanserve_train import summ_eval  # noqa: E402

TRAINING = REPO / "training"


def run(*args, timeout=240):
    proc = subprocess.run([PYTHON, *args], cwd=TRAINING, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def summary_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("summ")
    data = work / "data"
    run("-m", "spanserve_train.summ_data", "--preset", "summ-small", "--out", str(data),
        "--seed", "11", "--n-train", "300", "--n-val", "8", "--n-test", "8")
    run("tools/build_span_tokenizer.py", str(data / "train.jsonl"), str(work / "tokenizer.model"),
        "--vocab-size", "4000")
    run("-m", "spanserve_train.train", "--config", "configs/train-summ-long.json",
        "--train-data", str(data / "train.jsonl"), "--val-data", str(data / "val.jsonl"),
        "--tokenizer", str(work / "tokenizer.model"), "--out", str(work / "run"),
        "--hidden", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1",
        "--intermediate", "128", "--max-positions", "1024", "--max-len", "1024",
        "--batch-size", "8", "--steps", "30", "--log-every", "10", "--device", "cpu",
        "--workers", "1", "--threads", "1", "--export-dtype", "float32")
    records = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    return work / "run" / "model", records


@pytest.fixture(scope="module")
def server(summary_model, tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("server"), summary_model[0])
    try:
        yield process.wait_serving()
    finally:
        process.close()


def generate(server, record, mode, max_tokens=48):
    return server.stub().Generate(
        pb.GenerateRequest(prompt=" ".join(record["segments"]), max_tokens=max_tokens,
                           span_mode=mode, return_spans=True, include_span_markup=True,
                           temperature=0),
        timeout=120)


def test_the_server_segments_a_document_into_the_generators_sentences(server, summary_model):
    for record in summary_model[1]:
        response = generate(server, record, pb.SPAN_MODE_SELF_SELECTED, max_tokens=1)
        prompt = [s.text.strip() for s in response.segments if s.in_prompt]
        # A segment runs to the next anchor: a token generated before the model's first `<a>`
        # extends the last sentence (SPAN_PROTOCOL.md, Segments).
        assert len(prompt) == len(record["segments"])
        assert prompt[:-1] == record["segments"][:-1]
        assert prompt[-1].startswith(record["segments"][-1])


@pytest.mark.parametrize("mode", [pb.SPAN_MODE_SELF_SELECTED, pb.SPAN_MODE_DENSE])
def test_both_modes_run_a_document_and_the_output_scores(server, summary_model, mode):
    record = summary_model[1][0]
    response = generate(server, record, mode)
    assert response.usage.generated_tokens == 48 or response.finish_reason == pb.FINISH_REASON_EOS
    for segment in response.segments:
        assert all(0 <= ref < segment.id for ref in segment.referenced_ids), segment
    score = summ_eval.score_output(record, response.text)
    assert 0.0 <= score.rouge_l <= 1.0 and 0.0 <= score.malformed_rate <= 1.0
