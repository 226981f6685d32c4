"""The summary task through a served model: prompts for serve_bench from summ_data records, and
the outputs a serve_bench run kept (--save-requests --save-text) scored against those records,
per run (span mode and load), beside the run's speed:

    /usr/bin/python3 bench/summ_quality.py prompts test.jsonl prompts.jsonl [--max-tokens 384]
    /usr/bin/python3 bench/summ_quality.py score serve.json test.jsonl [--out quality.json]

Request i of a run was prompted with record i % len(records) (the prompts file keeps the
records' order; serve_bench cycles it). Prints one row per run: fact accuracy, ROUGE-L, header precision
and recall, malformed headers, attended fraction, output tokens/s, TTFT and ITL p50/p99; then
SELF_SELECTED against DENSE at each load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "training"))
from spanserve_train.summ_eval import aggregate, score_output  # noqa: E402


def load_records(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score_run(run: dict, records: list) -> dict:
    """The run's quality over its completed requests (failed ones are counted apart)."""
    requests = run.get("requests")
    if not requests:
        raise ValueError(f"run {run['mode']} has no saved requests: use --save-requests")
    scores = [score_output(records[i % len(records)], r["text"])
              for i, r in enumerate(requests) if r["ok"]]
    quality = aggregate(scores)
    quality["failed"] = sum(1 for r in requests if r["sent"] and not r["ok"])
    return quality


def row(run: dict, quality: dict) -> dict:
    s = run["summary"]
    return {"mode": run["mode"], "load": run["load"], "quality": quality,
            "output_tokens_per_s": s["output_throughput"],
            "ttft_ms": {k: s["ttft_ms"].get(k) for k in ("p50", "p99")},
            "itl_ms": {k: s["itl_ms"].get(k) for k in ("p50", "p99")},
            "attended_fraction": s["attention"]["attended_fraction"],
            "saved_fraction": s["attention"]["saved_fraction"],
            "server_metrics": run.get("server_metrics", {})}


def table(rows: list) -> str:
    lines = ["| mode | load | fact acc (in place) | ROUGE-L | header P/R | malformed | attended "
             "| tok/s | TTFT p50/p99 ms | ITL p50/p99 ms | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["quality"]
        lines.append(
            f"| {r['mode']} | {r['load']['kind']} {r['load']['value']} "
            f"| {100 * q['fact_accuracy']:.2f}% ({100 * q.get('fact_accuracy_in_place', 0):.2f}%) "
            f"| {100 * q['rouge_l']:.2f} "
            f"| {q['header_precision']:.3f}/{q['header_recall']:.3f} "
            f"| {100 * q['malformed_rate']:.2f}% | {r['attended_fraction']:.3f} "
            f"| {r['output_tokens_per_s']:.0f} "
            f"| {r['ttft_ms']['p50']:.1f}/{r['ttft_ms']['p99']:.1f} "
            f"| {r['itl_ms']['p50']:.2f}/{r['itl_ms']['p99']:.2f} | {q['failed']} |")
    return "\n".join(lines)


def speedups(rows: list) -> list:
    """SELF_SELECTED over DENSE per load: throughput ratio and the quality differences."""
    by_load = {}
    for r in rows:
        by_load.setdefault(json.dumps(r["load"], sort_keys=True), {})[r["mode"]] = r
    out = []
    for load, modes in by_load.items():
        if "self_selected" in modes and "dense" in modes:
            s, d = modes["self_selected"], modes["dense"]
            out.append({"load": json.loads(load),
                        "throughput_ratio": s["output_tokens_per_s"] / d["output_tokens_per_s"],
                        "fact_accuracy_diff_pts": 100 * (s["quality"]["fact_accuracy"]
                                                         - d["quality"]["fact_accuracy"]),
                        "rouge_l_diff_pts": 100 * (s["quality"]["rouge_l"]
                                                   - d["quality"]["rouge_l"])})
    return out


def fact_breakdown_lines(rows: list) -> str:
    """Per run, the reference sentences by type: fact accuracy and the share of each error."""
    lines = []
    for r in rows:
        for kind, t in r["quality"].get("facts_by_type", {}).items():
            errors = ", ".join(f"{e} {100 * v:.1f}%" for e, v in t["errors"].items() if v)
            lines.append(f"{r['mode']} {r['load']['kind']} {r['load']['value']} {kind}: "
                         f"{t['sentences']} sentences, facts right {100 * t['fact_accuracy']:.1f}%"
                         f"{'; ' + errors if errors else ''}")
    return "\n".join(lines)


def write_prompts(records: list, path: str, max_tokens: int) -> None:
    """The documents as serve_bench prompts: the sentences joined by spaces, which the server's
    `sentences` segmentation cuts back into the same segments."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"prompt": " ".join(r["segments"]), "max_tokens": max_tokens})
                    + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    prompts = sub.add_parser("prompts", help="serve_bench prompts from records")
    prompts.add_argument("records")
    prompts.add_argument("out")
    prompts.add_argument("--max-tokens", type=int, default=384)
    score = sub.add_parser("score", help="score a serve_bench JSON")
    score.add_argument("serve_json")
    score.add_argument("records")
    score.add_argument("--out")
    args = p.parse_args(argv)
    if args.command == "prompts":
        write_prompts(load_records(args.records), args.out, args.max_tokens)
        return
    with open(args.serve_json, encoding="utf-8") as f:
        result = json.load(f)
    records = load_records(args.records)
    rows = [row(run, score_run(run, records)) for run in result["runs"]]
    report = {"commit": result.get("commit"), "command": result.get("command"),
              "server": result.get("server"), "rows": rows, "speedups": speedups(rows)}
    print(table(rows))
    print(fact_breakdown_lines(rows))
    for s in report["speedups"]:
        print(f"{s['load']['kind']} {s['load']['value']}: SELF_SELECTED/DENSE "
              f"{s['throughput_ratio']:.3f}x, fact accuracy {s['fact_accuracy_diff_pts']:+.2f} "
              f"pts, ROUGE-L {s['rouge_l_diff_pts']:+.2f} pts")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
