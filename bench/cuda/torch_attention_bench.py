#!/usr/bin/env python3
"""The same decode attention through PyTorch, for comparison with cuda_attention_bench.

Dense: torch.nn.functional.scaled_dot_product_attention over contiguous K/V (one query token a
row, GQA through enable_gqa). Sparse: FlexAttention (compiled) with a block mask built from the
same kind of span rows as the C++ benchmark (a sink, referenced ranges with unaligned edges and
the row's own tail, at the same attended fraction). Timed like the C++ benchmark: median of
groups of launches rotating over input sets of at least 1 GB together, so nothing runs from L2.

Shapes run in order of importance (batch 64 and context 8k first) until --budget-s is spent;
the rest are written as skipped. With --ours (the C++ CSV) it joins both and prints, per shape,
whether our kernel is faster than every PyTorch path that ran.

With --interleave (the path of cuda_attention_bench), the dense shapes are timed again with
ours and SDPA alternating: the C++ benchmark runs as a child (--serve) answering one
configuration at a time, and each round times ours at every block size and SDPA, in an order
that rotates between rounds, so that drift of the device between calls (2-3% at the memory
roof) no longer decides which is faster. A shape counts as faster when ours' median over the
rounds is below SDPA's at every block size.

Run: python3 torch_attention_bench.py --out torch.csv --ours attention.csv --compare compare.csv
     python3 torch_attention_bench.py --interleave build/bench/cuda/cuda_attention_bench \
         --interleave-out interleaved.csv [--rounds 5] [--cases llama3_8b:16:2048 ...]
"""
import argparse
import csv
import math
import random
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [("llama7b", 32, 32, 128), ("llama3_8b", 32, 8, 128)]
BATCHES = [1, 16, 64]
CONTEXTS = [2048, 8192, 32768]
FRACTIONS = [1.0, 0.5, 0.25, 0.125]
BLOCKS = [16, 64, 128]  # cuda_attention_bench's KV block sizes


def span_ranges(rng, context, fraction):
    """attention_bench.cc's SpanRanges: sink, ~300-token referenced ranges, own tail."""
    if fraction >= 1.0:
        return [(0, context)]
    target = max(16, round(fraction * context))
    sink = 4
    tail = min(target // 2, 400 + rng.randrange(200))
    middle = target - tail - sink
    ranges = [(0, sink)]
    lo, hi = sink + 1, context - tail - 1
    pieces = max(1, (middle + 299) // 300)
    stretch = (hi - lo) / pieces
    placed = 0
    for i in range(pieces):
        length = (middle - placed) // (pieces - i)
        s0, s1 = lo + int(i * stretch), lo + int((i + 1) * stretch)
        room = s1 - s0 - length - 1
        if length <= 0 or room < 0:
            continue
        start = s0 + rng.randrange(room + 1)
        ranges.append((start, start + length))
        placed += length
    ranges.append((context - tail, context))
    return ranges


def median_us(launch, sets):
    for i in range(3):
        launch(i % sets)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def group(n):
        start.record()
        for j in range(n):
            launch(j % sets)
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) * 1e3 / n

    one = group(1)
    n = int(min(max(3000 / max(one, 1.0), 5), 2000))
    return statistics.median(group(n) for _ in range(7))


def dense_inputs(batch, heads, kv_heads, hd, context):
    """q and input sets of K and V, rotated over by the timings: at least 1 GB together (at most
    8 sets), so nothing runs from L2."""
    sets = max(1, min(8, math.ceil(1e9 / (4 * batch * context * kv_heads * hd))))
    q = torch.randn(batch, heads, 1, hd, device="cuda", dtype=torch.bfloat16)
    ks = [torch.randn(batch, kv_heads, context, hd, device="cuda", dtype=torch.bfloat16)
          for _ in range(sets)]
    return q, ks, [torch.randn_like(k) for k in ks]


def sdpa_us(q, ks, vs):
    return median_us(lambda i: F.scaled_dot_product_attention(q, ks[i], vs[i], enable_gqa=True),
                     len(ks))


def order_of_work():
    """(shape, batch, context) in order of importance: the target shape first."""
    keys = [(s, b, c) for s in SHAPES for b in BATCHES for c in CONTEXTS]
    return sorted(keys, key=lambda k: (not (k[1] == 64 and k[2] == 8192), k[2], k[1]))


def run_torch(args):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    torch._dynamo.config.cache_size_limit = 256
    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    began = time.time()
    for (name, heads, kv_heads, hd), batch, context in order_of_work():
        base = dict(shape=name, heads=heads, kv_heads=kv_heads, head_dim=hd, batch=batch,
                    context=context)
        if time.time() - began > args.budget_s:
            rows += [dict(base, fraction=f, sdpa_us="", flex_us="", note="time budget")
                     for f in FRACTIONS]
            continue
        try:
            q, ks, vs = dense_inputs(batch, heads, kv_heads, hd, context)
            sets = len(ks)
        except torch.OutOfMemoryError:
            rows += [dict(base, fraction=f, sdpa_us="", flex_us="", note="out of memory")
                     for f in FRACTIONS]
            torch.cuda.empty_cache()
            continue
        note = ""
        try:
            sdpa = sdpa_us(q, ks, vs)
        except Exception as e:  # a backend refusing the shape
            sdpa, note = "", f"sdpa: {type(e).__name__}"
        rng = random.Random(batch * 131 + context)
        for fraction in FRACTIONS:
            flex_us, flex_note = "", ""
            try:
                masks = []
                for _ in range(sets):
                    allowed = torch.zeros(batch, context, dtype=torch.bool, device="cuda")
                    for b in range(batch):
                        for begin, end in span_ranges(rng, context, fraction):
                            allowed[b, begin:end] = True

                    def mask_mod(b, h, q_idx, kv_idx, allowed=allowed):
                        return allowed[b, kv_idx]

                    masks.append(create_block_mask(mask_mod, batch, None, 1, context,
                                                   device="cuda", BLOCK_SIZE=128))
                flex_us = median_us(lambda i: flex(q, ks[i], vs[i], block_mask=masks[i],
                                                   enable_gqa=True), sets)
            except Exception as e:
                flex_note = f"flex: {type(e).__name__}: {str(e)[:80]}"
            rows.append(dict(base, fraction=fraction, sdpa_us=sdpa, flex_us=flex_us,
                             note="; ".join(x for x in (note, flex_note) if x)))
            print(f"{name:9s} batch {batch:2d} ctx {context:5d} f {fraction:.3f}: "
                  f"sdpa {sdpa if sdpa == '' else f'{sdpa:9.1f}'} us, "
                  f"flex {flex_us if flex_us == '' else f'{flex_us:9.1f}'} us {flex_note}",
                  flush=True)
        del q, ks, vs
        torch.cuda.empty_cache()
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def compare(ours_path, torch_rows, out_path):
    ours = {}
    with open(ours_path) as f:
        for r in csv.DictReader(f):
            if r.get("backend_choice", "1") != "1":  # an A/B variant the backend does not run
                continue
            key = (r["shape"], int(r["batch"]), int(r["context"]), float(r["fraction"]))
            ours.setdefault(key, {})[int(r["block_size"])] = float(r["time_us"])
    rows, failures = [], 0
    print(f"\n{'shape':10s} {'batch':>5s} {'ctx':>6s} {'frac':>6s} "
          f"{'ours B16':>9s} {'B64':>9s} {'B128':>9s} {'sdpa':>9s} {'flex':>9s}  faster")
    for t in torch_rows:
        key = (t["shape"], int(t["batch"]), int(t["context"]), float(t["fraction"]))
        if key not in ours:
            continue
        mine = ours[key]
        theirs = [float(x) for x in (t["sdpa_us"], t["flex_us"]) if x != ""]
        faster = all(us < min(theirs) for us in mine.values()) if theirs else None
        failures += faster is False
        rows.append(dict(shape=key[0], batch=key[1], context=key[2], fraction=key[3],
                         **{f"ours_b{b}_us": us for b, us in sorted(mine.items())},
                         sdpa_us=t["sdpa_us"], flex_us=t["flex_us"],
                         faster_than_torch="" if faster is None else faster, note=t["note"]))
        cells = [f"{mine.get(b, float('nan')):9.1f}" for b in (16, 64, 128)]
        fmt = lambda x: f"{float(x):9.1f}" if x != "" else f"{'-':>9s}"
        print(f"{key[0]:10s} {key[1]:5d} {key[2]:6d} {key[3]:6.3f} {' '.join(cells)} "
              f"{fmt(t['sdpa_us'])} {fmt(t['flex_us'])}  "
              f"{'-' if faster is None else ('yes' if faster else 'NO')}")
    if rows:
        write_csv(out_path, rows)
    print(f"shapes where a PyTorch path ran and ours was not faster at every block size: {failures}")


class OursServer:
    """cuda_attention_bench --serve as a child: one configuration in, its time out."""

    def __init__(self, path, extra_args=()):
        self.proc = subprocess.Popen([path, "--serve", *extra_args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def time_us(self, shape, batch, context, block, fraction=1.0, splits=0):
        self.proc.stdin.write(f"{shape} {batch} {context} {block} {fraction} {splits}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if not line or line[0] == "error":
            raise RuntimeError(f"cuda_attention_bench --serve: {' '.join(line) or 'exited'}")
        return float(line[0])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def interleave(args):
    """Dense shapes, ours (every block size) and SDPA alternating, args.rounds rounds."""
    shapes = {name: (heads, kv_heads, hd) for name, heads, kv_heads, hd in SHAPES}
    if args.cases:
        cases = [(c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in args.cases]
    else:
        cases = [(s[0], b, c) for s, b, c in order_of_work()]
    ours = OursServer(args.interleave, args.ours_args.split())
    # A second configuration of ours in the same rotation (e.g. --early-launch 0), for a ratio
    # measured side by side.
    base = OursServer(args.interleave, args.base_args.split()) if args.base_args else None
    rows = []
    print(f"\n{'shape':10s} {'batch':>5s} {'ctx':>6s} {'ours B16':>9s} {'B64':>9s} {'B128':>9s} "
          f"{'sdpa':>9s}  faster  rounds won (every block)")
    for name, batch, context in cases:
        heads, kv_heads, hd = shapes[name]
        q, ks, vs = dense_inputs(batch, heads, kv_heads, hd, context)
        timers = [(f"b{b}", lambda b=b: ours.time_us(name, batch, context, b)) for b in BLOCKS]
        if base:
            timers += [(f"base_b{b}", lambda b=b: base.time_us(name, batch, context, b))
                       for b in BLOCKS]
        timers.append(("sdpa", lambda: sdpa_us(q, ks, vs)))
        times = {key: [] for key, _ in timers}
        for r in range(args.rounds):
            for key, timer in timers[r % len(timers):] + timers[:r % len(timers)]:
                times[key].append(timer())
        del q, ks, vs
        torch.cuda.empty_cache()
        med = {key: statistics.median(v) for key, v in times.items()}
        won = sum(all(times[f"b{b}"][r] < times["sdpa"][r] for b in BLOCKS)
                  for r in range(args.rounds))
        faster = all(med[f"b{b}"] < med["sdpa"] for b in BLOCKS)
        rows.append(dict(shape=name, batch=batch, context=context, rounds=args.rounds,
                         **{f"ours_b{b}_us": round(med[f"b{b}"], 2) for b in BLOCKS},
                         **{f"base_b{b}_us": round(med[f"base_b{b}"], 2)
                            for b in BLOCKS if base},
                         sdpa_us=round(med["sdpa"], 2),
                         **{f"{k}_all_us": " ".join(f"{x:.2f}" for x in v) for k, v in times.items()},
                         faster_than_sdpa=faster, rounds_won=won))
        print(f"{name:10s} {batch:5d} {context:6d} "
              + " ".join(f"{med[f'b{b}']:9.1f}" for b in BLOCKS)
              + f" {med['sdpa']:9.1f}  {'yes' if faster else 'NO ':3s}     {won}/{args.rounds}"
              + ("  base " + " ".join(f"{med[f'base_b{b}']:9.1f}" for b in BLOCKS) if base else ""),
              flush=True)
        write_csv(args.interleave_out, rows)  # after each shape: a cut-off run keeps what it has
    ours.close()
    if base:
        base.close()
    print(f"dense shapes where ours' median was not below SDPA's at every block size: "
          f"{sum(not r['faster_than_sdpa'] for r in rows)} of {len(rows)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="torch_attention.csv")
    parser.add_argument("--ours", help="cuda_attention_bench's CSV, to compare with")
    parser.add_argument("--compare", default="attention_compare.csv")
    parser.add_argument("--budget-s", type=float, default=300)
    parser.add_argument("--interleave", metavar="CUDA_ATTENTION_BENCH",
                        help="time the dense shapes with ours and SDPA alternating")
    parser.add_argument("--interleave-out", default="attention_interleaved.csv")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="*", help="shape:batch:context (default: every dense)")
    parser.add_argument("--ours-args", default="",
                        help="options for cuda_attention_bench --serve, e.g. --pool-order address")
    parser.add_argument("--base-args", default="",
                        help="a second cuda_attention_bench --serve with these options, timed in "
                             "the same rotation (columns base_b*), e.g. --early-launch 0")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    if args.interleave:
        interleave(args)
        return
    rows = run_torch(args)
    write_csv(args.out, rows)
    if args.ours:
        compare(args.ours, rows, args.compare)


if __name__ == "__main__":
    main()
