#!/usr/bin/env python3
"""Time to first token with a shared prefix, prefix caching on and off, side by side.

Starts two spanserve servers (--device cpu or cuda) with the same model, one with
kv_cache.prefix_caching on (the default) and one with it off, and sends each, in turn and one at
a time, requests whose prompts share a prefix of --prefix-tokens tokens and end in a suffix of
their own. The first request per server warms the cache (and the process); the next --requests
are timed: TTFT is the time from the stream's call to its first message. Not a test: it
prints figures and writes JSON.

    /usr/bin/python3 bench/prefix_bench.py --model DIR --out bench/results/prefix/DATE/results.json

The model needs a context above the prefix plus the suffix plus --max-tokens: the shipped
models/arith-small has 1024, so the results use a random model made by
training/tools/make_random_model.py with --context 2048 (README of the results says which).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from server_harness import ServerProcess, pb  # noqa: E402


def prefix_text(model: Path, tokens: int) -> str:
    """Sentences of the model's tokenizer adding up to about `tokens` tokens."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
    words, i = [], 0
    while len(sp.encode(" ".join(words))) < tokens:
        words.append(f"item {i} of the shared system prompt says the cat sat on mat {i % 9}.")
        i += 1
    return " ".join(words)


def ttft(server: ServerProcess, prompt: str, max_tokens: int) -> tuple[float, int]:
    req = pb.GenerateRequest(prompt=prompt, max_tokens=max_tokens, ignore_eos=True,
                             span_mode=pb.SPAN_MODE_DENSE)
    start = time.perf_counter()
    first = None
    usage = 0
    for message in server.stub().GenerateStream(req, timeout=300):
        if first is None:
            first = time.perf_counter() - start
        if message.HasField("usage"):
            usage = message.usage.prompt_tokens
    return first, usage


def summary(values):
    values = sorted(values)
    return {"mean": statistics.mean(values), "p50": statistics.median(values),
            "min": values[0], "max": values[-1]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--memory-mb", type=int, default=256, help="KV cache per server")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    prefix = prefix_text(args.model, args.prefix_tokens)
    work = Path(tempfile.mkdtemp(prefix="prefix_bench_"))
    settings = {"kv_cache.memory_mb": args.memory_mb, "limits.max_tokens": 64,
                "device": args.device}
    servers = {}
    for name, caching in (("on", True), ("off", False)):
        (work / name).mkdir()
        servers[name] = ServerProcess(work / name, args.model,
                                      {**settings, "kv_cache.prefix_caching": caching})
    try:
        for server in servers.values():
            server.wait_serving(timeout=120)
        times = {name: [] for name in servers}
        prompt_tokens = 0
        for i in range(args.requests + 1):
            prompt = f"{prefix} question {i}: what is on mat {i}?"
            for name, server in servers.items():  # alternate: both see the same machine load
                seconds, prompt_tokens = ttft(server, prompt, args.max_tokens)
                if i > 0:
                    times[name].append(seconds)
                print(f"request {i} caching {name}: TTFT {seconds * 1e3:.1f} ms", file=sys.stderr)
        metrics = {name: {m: s.metric(f"spanserve_prefix_cache_{m}_total")
                          for m in ("queries", "hits")} for name, s in servers.items()}
    finally:
        for server in servers.values():
            server.close()
    result = {"device": args.device, "prefix_tokens_asked": args.prefix_tokens,
              "prompt_tokens": prompt_tokens,
              "requests": args.requests, "max_tokens": args.max_tokens,
              "ttft_seconds": {name: summary(v) for name, v in times.items()},
              "speedup_p50": statistics.median(times["off"]) / statistics.median(times["on"]),
              "prefix_cache_metrics": metrics}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
