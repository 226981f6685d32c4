"""bench/summ_quality.py: prompts from summary records and a serve_bench run's outputs scored."""
import importlib.util
import json
import os

import pytest

from spanserve_train import summ_data as sd
from spanserve_train.arith_data import load_preset
from spanserve_train.span_rule import segment_prompt_text

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "summ_quality.py")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("summ_quality", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def records():
    spec = sd.spec_from_preset(load_preset("summ-small"))
    return sd.generate(spec, 6, "summ-quality-test", set())


def run(mode, texts, tok_s, value=64):
    summary = {"output_throughput": tok_s, "ttft_ms": {"p50": 10.0, "p99": 20.0},
               "itl_ms": {"p50": 1.0, "p99": 2.0},
               "attention": {"attended_fraction": 0.3 if mode == "self_selected" else 1.0,
                             "saved_fraction": 0.7 if mode == "self_selected" else 0.0}}
    requests = [{"ok": t is not None, "sent": True, "text": t or ""} for t in texts]
    return {"mode": mode, "load": {"kind": "concurrency", "value": value}, "summary": summary,
            "requests": requests}


def test_prompts_cut_back_into_the_records_sentences(tool, records, tmp_path):
    path = str(tmp_path / "prompts.jsonl")
    tool.write_prompts(records, path, 200)
    with open(path, encoding="utf-8") as f:
        prompts = [json.loads(line) for line in f]
    assert len(prompts) == len(records)
    for p, r in zip(prompts, records):
        assert p["max_tokens"] == 200
        assert segment_prompt_text(p["prompt"], "sentences") == r["segments"]


def test_reference_outputs_score_perfectly_and_broken_ones_do_not(tool, records):
    # Requests cycle the records: 9 requests over 6 records.
    perfect = [records[i % len(records)]["output"] for i in range(9)]
    q = tool.score_run(run("dense", perfect, 100.0), records)
    assert q["fact_accuracy"] == 1.0 and q["header_recall"] == 1.0
    assert q["rouge_l"] == pytest.approx(1.0)
    assert q["failed"] == 0
    # Every number bumped by one: facts wrong; the headers' numbers (segment ids) move too.
    broken = ["".join(str(int(c) + 1 % 10) if c.isdigit() and c != "9" else c for c in t)
              for t in perfect]
    q2 = tool.score_run(run("dense", broken, 100.0), records)
    assert q2["fact_accuracy"] < 0.5
    # A failed request is counted apart, not scored.
    q3 = tool.score_run(run("dense", perfect[:8] + [None], 100.0), records)
    assert q3["failed"] == 1 and q3["records"] == 8


def test_speedups_pair_the_modes_at_each_load(tool, records):
    texts = [r["output"] for r in records]
    runs = [run("self_selected", texts, 150.0), run("dense", texts, 100.0),
            run("self_selected", texts, 300.0, value=256), run("dense", texts, 200.0, value=256)]
    rows = [tool.row(r, tool.score_run(r, records)) for r in runs]
    ratios = {s["load"]["value"]: s["throughput_ratio"] for s in tool.speedups(rows)}
    assert ratios == {64: pytest.approx(1.5), 256: pytest.approx(1.5)}
    assert "self_selected" in tool.table(rows)


def test_a_run_without_saved_requests_is_refused(tool, records):
    bare = run("dense", [], 1.0)
    del bare["requests"]
    with pytest.raises(ValueError, match="--save-requests"):
        tool.score_run(bare, records)


def test_the_fact_breakdown_is_printed_per_run_and_type(tool, records):
    perfect = [r["output"] for r in records]
    dropped = [t.rsplit("<a>", 1)[0] for t in perfect]  # each summary's last sentence missing
    rows = [tool.row(r, tool.score_run(r, records))
            for r in (run("self_selected", perfect, 1.0), run("dense", dropped, 1.0))]
    lines = tool.fact_breakdown_lines(rows).splitlines()
    kinds = {f["type"] for r in records for f in r["facts"]}
    assert len(lines) == 2 * len(kinds)
    assert all("facts right 100.0%" in l and "missing" not in l
               for l in lines if l.startswith("self_selected"))
    assert any("missing_sentence" in l for l in lines if l.startswith("dense"))
