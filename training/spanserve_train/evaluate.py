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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .arith_data import bucket_of, check_output

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


def _request(pb, record: dict, mode: str, max_tokens: int):
    span_mode = pb.SPAN_MODE_DENSE if mode == "dense" else pb.SPAN_MODE_SELF_SELECTED
    request = pb.GenerateRequest(prompt=record["prompt"], temperature=0.0, span_mode=span_mode,
                                 return_spans=True, include_span_markup=True)
    if max_tokens:  # else the server's default: the room the prompt leaves in the context
        request.max_tokens = max_tokens
    return request


def run_jobs(address: str, jobs: list, max_tokens: int, concurrency: int) -> list:
    """Responses to (record, mode) jobs, greedy, `concurrency` requests in flight."""
    pb, pb_grpc = _import_stubs()
    import grpc
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SpanServeStub(channel)

        def one(job):
            return stub.Generate(_request(pb, job[0], job[1], max_tokens), timeout=1800)

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, jobs))


def evaluate(address: str, records: list[dict], mode: str, max_tokens: int,
             concurrency: int) -> ModeResult:
    result = ModeResult()
    jobs = [(r, mode) for r in records]
    for record, response in zip(records, run_jobs(address, jobs, max_tokens, concurrency)):
        result.add(record, response)
    return result


def evaluate_buckets(address: str, groups: dict, modes: list, max_tokens: int,
                     concurrency: int) -> dict:
    """{(bucket, mode): ModeResult} over every record of every group, both modes at once (the
    longest requests overlap the rest instead of ending each group alone)."""
    jobs = [(r, mode, key) for key, records in groups.items() for mode in modes for r in records]
    jobs.sort(key=lambda j: -len(j[0]["output"]))  # longest first: no long tail at the end
    results = {(key, mode): ModeResult() for key in groups for mode in modes}
    responses = run_jobs(address, [(r, mode) for r, mode, _ in jobs], max_tokens, concurrency)
    for (record, mode, key), response in zip(jobs, responses):
        results[(key, mode)].add(record, response)
    return results


def group_by_bucket(records: list[dict], per_bucket: int) -> dict:
    """{(operators, digits): the first per_bucket records of that bucket (0: all)}, sorted."""
    groups: dict = {}
    for r in records:
        group = groups.setdefault(bucket_of(r["expr"]), [])
        if not per_bucket or len(group) < per_bucket:
            group.append(r)
    return dict(sorted(groups.items(), key=lambda kv: (int(kv[0][0].split("-")[0]), kv[0][1])))


COLUMNS = ("| {} | mode | requests | exact match | all steps correct | attended fraction "
           "| KV blocks read | malformed headers |")


def table(rows: list[dict]) -> str:
    by_bucket = "operators" in rows[0] if rows else False
    first = "operators | digits" if by_bucket else "split"
    lines = [COLUMNS.format(first),
             "| --- | " + ("--- | " if by_bucket else "") + "--- | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for r in rows:
        name = f"{r['operators']} | {r['digits']}" if by_bucket else r["split"]
        lines.append(f"| {name} | {r['mode']} | {r['requests']} | {100 * r['exact_match']:.1f}% "
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
    p.add_argument("--by-bucket", action="store_true",
                   help="one row per bucket of operators (1-2, 3-4, 5-7, 8-10, 11-12) x operand "
                        "digits and mode, over all the splits' records")
    p.add_argument("--per-bucket", type=int, default=0,
                   help="with --by-bucket: the first N records of each bucket (0: all)")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="per request (0: unset, the server's default: what the context leaves)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--modes", default="self_selected,dense")
    p.add_argument("--out", help="write the table (Markdown) and the rows (JSON beside it)")
    args = p.parse_args(argv)

    modes = args.modes.split(",")
    rows, samples, splits = [], {}, {}
    t0 = time.time()
    for spec in args.split:
        name, _, path = spec.partition("=")
        with open(path, encoding="utf-8") as f:
            splits[name] = [json.loads(line) for line in f if line.strip()]
        if args.limit:
            splits[name] = splits[name][:args.limit]
    if args.by_bucket:
        groups = group_by_bucket([r for rs in splits.values() for r in rs], args.per_bucket)
        results = evaluate_buckets(args.address, groups, modes, args.max_tokens,
                                   args.concurrency)
        for (ops, digits), mode in results:
            rows.append({"operators": ops, "digits": digits, "mode": mode,
                         **results[((ops, digits), mode)].row()})
            samples[f"{ops}/d{digits}/{mode}"] = results[((ops, digits), mode)].errors
        long_chains = ModeResult()  # SELF_SELECTED over chains of 8 or more steps
        for ((ops, _), mode), result in results.items():
            if mode == "self_selected" and int(ops.split("-")[0]) >= 8:
                long_chains.attended_fraction += result.attended_fraction
                long_chains.n += result.n
    else:
        for name, records in splits.items():
            for mode in modes:
                result = evaluate(args.address, records, mode, args.max_tokens,
                                  args.concurrency)
                rows.append({"split": name, "mode": mode, **result.row()})
                samples[f"{name}/{mode}"] = result.errors
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    seconds = time.time() - t0
    text = table(rows)
    if args.by_bucket and long_chains.n:
        text += (f"\n\nSELF_SELECTED attended fraction over the {long_chains.n} chains of 8 or "
                 f"more steps: {long_chains.attended_fraction / long_chains.n:.3f}")
    print(text)
    print(f"{sum(r['requests'] for r in rows)} requests in {seconds:.0f} s")
    if args.out:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        info = model_info(args.address)
        command = "python3 -m spanserve_train.evaluate " + " ".join(sys.argv[1:])
        max_tokens = args.max_tokens or "unset (the server's default)"
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"# Evaluation of {info.get('path', '?')} through the server\n\n"
                    f"commit {commit}; backend {info.get('backend', '?')} on "
                    f"{platform.node() or 'this host'} ({platform.processor() or platform.machine()}); "
                    f"greedy, max_tokens {max_tokens}; {seconds:.0f} s\n\n"
                    f"    cd training && {command}\n\n{text}\n")
        with open(os.path.splitext(args.out)[0] + ".json", "w", encoding="utf-8") as f:
            json.dump({"commit": commit, "command": command, "seconds": seconds, "model": info,
                       "rows": rows, "failures": samples}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
