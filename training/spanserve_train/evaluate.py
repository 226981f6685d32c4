"""Evaluates a span model through a running spanserve server, over gRPC.

Each record of a test split is sent twice with greedy decoding, in SELF_SELECTED and in DENSE
mode, and the outputs are checked (arithmetic: the answer and every rewrite step, with
arith_data.check_output). The table reports, per split and mode:
- exact match: the final answer equals the expression's value;
- all steps: every step a correct rewrite, every header valid, the answer right;
- attended fraction: the tokens the generated steps attended over the tokens dense attention
  attends (the response's attention.attended_tokens / context_tokens), averaged over requests;
- KV blocks read: the same at block level (what the kernel reads);
- malformed headers: output segments that fell back to dense, over all output segments.

    python3 -m spanserve_train.evaluate --address localhost:50051 \
        --split l1=runs/data/arith-l1/test.jsonl --split l2=runs/data/arith-l2/test.jsonl \
        --out ../bench/results/arith-small-eval.md

The gRPC stubs come from the build (<build>/python; $SPANSERVE_BUILD_DIR, default build/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .arith_data import check_output

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _import_stubs():
    build = os.environ.get("SPANSERVE_BUILD_DIR", os.path.join(REPO, "build"))
    sys.path.insert(0, os.path.join(build, "python"))
    import grpc  # noqa: F401
    from spanserve.v1 import spanserve_pb2, spanserve_pb2_grpc
    return spanserve_pb2, spanserve_pb2_grpc


@dataclass
class ModeResult:
    n: int = 0
    exact: int = 0
    all_steps: int = 0
    attended_fraction: float = 0.0
    kv_fraction: float = 0.0
    output_segments: int = 0
    malformed: int = 0
    errors: list = field(default_factory=list)

    def add(self, record: dict, response) -> None:
        report = check_output(record["prompt"], response.text)
        self.n += 1
        self.exact += bool(report.answer_correct)
        self.all_steps += bool(report.ok)
        a = response.attention
        self.attended_fraction += a.attended_tokens / max(1, a.context_tokens)
        self.kv_fraction += a.kv_blocks_read / max(1, a.kv_blocks_dense)
        out_segments = [s for s in response.segments if not s.in_prompt]
        self.output_segments += len(out_segments)
        self.malformed += sum(s.dense_fallback for s in out_segments)
        if not report.ok and len(self.errors) < 5:
            self.errors.append({"prompt": record["prompt"], "output": response.text,
                                "errors": report.errors[:3]})

    def row(self) -> dict:
        n = max(1, self.n)
        return {"requests": self.n, "exact_match": self.exact / n,
                "all_steps_correct": self.all_steps / n,
                "attended_fraction": self.attended_fraction / n,
                "kv_blocks_read_fraction": self.kv_fraction / n,
                "malformed_headers": self.malformed / max(1, self.output_segments)}


def evaluate(address: str, records: list[dict], mode: str, max_tokens: int,
             concurrency: int) -> ModeResult:
    pb, pb_grpc = _import_stubs()
    import grpc
    span_mode = pb.SPAN_MODE_DENSE if mode == "dense" else pb.SPAN_MODE_SELF_SELECTED
    result = ModeResult()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SpanServeStub(channel)

        def one(record):
            request = pb.GenerateRequest(prompt=record["prompt"], max_tokens=max_tokens,
                                         temperature=0.0, span_mode=span_mode,
                                         return_spans=True, include_span_markup=True)
            return stub.Generate(request, timeout=600)

        with ThreadPoolExecutor(concurrency) as pool:
            for record, response in zip(records, pool.map(one, records)):
                result.add(record, response)
    return result


def table(rows: list[dict]) -> str:
    lines = ["| split | mode | requests | exact match | all steps correct | attended fraction "
             "| KV blocks read | malformed headers |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['mode']} | {r['requests']} | {100 * r['exact_match']:.1f}% "
                     f"| {100 * r['all_steps_correct']:.1f}% | {r['attended_fraction']:.3f} "
                     f"| {r['kv_blocks_read_fraction']:.3f} | {100 * r['malformed_headers']:.2f}% |")
    return "\n".join(lines)


def model_info(address: str) -> dict:
    pb, pb_grpc = _import_stubs()
    import grpc
    from google.protobuf.json_format import MessageToDict
    with grpc.insecure_channel(address) as channel:
        info = pb_grpc.SpanServeStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    return MessageToDict(info)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default="localhost:50051")
    p.add_argument("--split", action="append", required=True,
                   help="NAME=PATH of a test JSONL (repeat for several)")
    p.add_argument("--limit", type=int, default=0, help="first N records of each split (0: all)")
    p.add_argument("--max-tokens", type=int, default=448,
                   help="per request; prompt plus this must fit the model's context (512 shipped)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--modes", default="self_selected,dense")
    p.add_argument("--out", help="write the table (Markdown) and the rows (JSON beside it)")
    args = p.parse_args(argv)

    rows, samples = [], {}
    for spec in args.split:
        name, _, path = spec.partition("=")
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        if args.limit:
            records = records[:args.limit]
        for mode in args.modes.split(","):
            result = evaluate(args.address, records, mode, args.max_tokens, args.concurrency)
            rows.append({"split": name, "mode": mode, **result.row()})
            samples[f"{name}/{mode}"] = result.errors
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.out:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        info = model_info(args.address)
        command = "python3 -m spanserve_train.evaluate " + " ".join(sys.argv[1:])
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"# Evaluation of {info.get('path', '?')} through the server\n\n"
                    f"commit {commit}; backend {info.get('backend', '?')} on "
                    f"{platform.node() or 'this host'} ({platform.processor() or platform.machine()}); "
                    f"greedy, max_tokens {args.max_tokens}\n\n    cd training && {command}\n\n"
                    f"{text}\n")
        with open(os.path.splitext(args.out)[0] + ".json", "w", encoding="utf-8") as f:
            json.dump({"commit": commit, "command": command, "model": info, "rows": rows,
                       "failures": samples}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
