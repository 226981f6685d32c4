"""Greedy decoding of many prompts at once under the span rule, and the arithmetic scores per
bucket (operators x operand digits) that training reports (train.py --eval-per-bucket).

No KV cache: each step runs the whole of every unfinished sequence again, masked by its layout
(data.span_layout), which grows by one position a token. On a GPU that is cheap for the few
hundred tokens of an arithmetic answer; what the server does is in evaluate.py.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from . import data as D
from .arith_data import bucket_of, check_output
from .span_rule import DENSE, SELF_SELECTED, SpanTracker


def _grow(layout: D.Layout, tracker: SpanTracker) -> None:
    """Extends layout to the tracker's last position (a position's span never changes later)."""
    q = len(layout.segment)
    layout.segment.append(len(tracker.segments) - 1)
    layout.dense.append(tracker.is_dense(q))


@torch.no_grad()
def generate_batch(model, vocab, prompts: Sequence[List[int]], eos_id: int, max_new: int,
                   device: torch.device, autocast_dtype=None, mode: str = SELF_SELECTED
                   ) -> List[List[int]]:
    """Greedy outputs (EOS left out) of every prompt, as generate() would give one by one."""
    limit = model.config.max_position_embeddings
    trackers = [SpanTracker(vocab, list(p), mode) for p in prompts]
    layouts = [D.span_layout(t) for t in trackers]
    seqs = [list(p) for p in prompts]
    outputs: List[List[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    for _ in range(max_new):
        active = [i for i in active if len(seqs[i]) < limit]
        if not active:
            break
        B, T = len(active), max(len(seqs[i]) for i in active)
        S = max(1, max(len(trackers[i].segments) for i in active))
        ids = torch.zeros(B, T, dtype=torch.long)
        segment = torch.full((B, T), -1, dtype=torch.long)
        dense = torch.zeros(B, T, dtype=torch.bool)
        refs = torch.zeros(B, S, S, dtype=torch.bool)
        lengths = torch.tensor([len(seqs[i]) for i in active])
        for b, i in enumerate(active):
            n = len(seqs[i])
            ids[b, :n] = torch.tensor(seqs[i])
            segment[b, :n] = torch.tensor(layouts[i].segment)
            dense[b, :n] = torch.tensor(layouts[i].dense)
            for s, seg in enumerate(trackers[i].segments):
                for r in (seg.refs if seg.restricted else ()):
                    refs[b, s, r] = True
        mask = D.layout_mask(segment.to(device), dense.to(device), refs.to(device),
                             lengths.to(device))
        with torch.autocast(device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            logits = model(ids.to(device), mask)
        last = logits[torch.arange(B, device=device), lengths.to(device) - 1]
        tokens = last.float().argmax(-1).tolist()
        still = []
        for i, token in zip(active, tokens):
            if token == eos_id:
                continue
            seqs[i].append(token)
            outputs[i].append(token)
            trackers[i].append(token)
            _grow(layouts[i], trackers[i])
            still.append(i)
        active = still
    return outputs


def bucket_records(records: Sequence[dict], per_bucket: int) -> Dict[str, List[dict]]:
    """Up to per_bucket records of each bucket, in the records' order; "5-7/d2" keys."""
    out: Dict[str, List[dict]] = {}
    for r in records:
        ops, digits = bucket_of(r["expr"])
        group = out.setdefault(f"{ops}/d{digits}", [])
        if len(group) < per_bucket:
            group.append(r)
    return dict(sorted(out.items(), key=lambda kv: (int(kv[0].split("-")[0].split("/")[0]),
                                                     kv[0])))


def evaluate_buckets(model, sp, vocab, records: Sequence[dict], per_bucket: int,
                     device: torch.device, autocast_dtype=None, batch_size: int = 512) -> dict:
    """{"5-7/d2": {"self_selected": {"n", "exact", "all_steps", "malformed"}, "dense": ...}}.
    Batches cut across buckets, longest prompts together: the Python work of a step is per
    batch, so few large batches are what keeps a GPU busy."""
    from .span_rule import encode_prompt
    groups = bucket_records(records, per_bucket)
    jobs = [(name, r) for name, group in groups.items() for r in group]
    jobs.sort(key=lambda j: -len(j[1]["output"]))
    prompts = [encode_prompt(sp, vocab.anchor_id, [r["prompt"]]) for _, r in jobs]
    result: dict = {name: {} for name in groups}
    for mode in (SELF_SELECTED, DENSE):
        counts = {name: [0, 0, 0, 0] for name in groups}  # exact, all steps, malformed, segments
        for lo in range(0, len(jobs), batch_size):
            outs = generate_batch(model, vocab, prompts[lo:lo + batch_size], sp.eos_id(),
                                  model.config.max_position_embeddings, device, autocast_dtype,
                                  mode)
            for (name, record), prompt, out in zip(jobs[lo:lo + batch_size],
                                                   prompts[lo:lo + batch_size], outs):
                report = check_output(record["prompt"], sp.decode(out))
                tracker = SpanTracker(vocab, prompt, mode)
                for t in out:
                    tracker.append(t)
                c = counts[name]
                c[0] += report.answer_correct
                c[1] += report.ok
                c[2] += tracker.malformed_count
                c[3] += sum(not s.in_prompt for s in tracker.segments)
        for name, (exact, all_steps, malformed, segments) in counts.items():
            n = len(groups[name])
            result[name][mode] = {"n": n, "exact": exact / max(1, n),
                                  "all_steps": all_steps / max(1, n),
                                  "malformed": malformed / max(1, segments)}
    return result


def bucket_table(result: dict) -> str:
    lines = ["bucket     n   SS exact  SS steps  SS malf   DENSE exact  DENSE malf"]
    for name, modes in result.items():
        ss, de = modes[SELF_SELECTED], modes[DENSE]
        lines.append(f"{name:8} {ss['n']:4}   {100 * ss['exact']:6.1f}%  "
                     f"{100 * ss['all_steps']:6.1f}%  {100 * ss['malformed']:5.2f}%   "
                     f"{100 * de['exact']:6.1f}%     {100 * de['malformed']:5.2f}%")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Scores an exported model directory on JSONL records, per bucket, both modes (GPU side)."""
    import argparse
    import json
    import time

    import sentencepiece as spm

    from . import hf_export

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--model", required=True, help="an exported model directory")
    p.add_argument("--data", action="append", required=True, help="NAME=JSONL (repeatable)")
    p.add_argument("--per-bucket", type=int, default=0, help="records per bucket (0: all)")
    p.add_argument("--out", help="write the results (JSON) here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = hf_export.load_hf_dir(args.model, dtype=torch.float32)
    model.to(device).eval()
    sp = spm.SentencePieceProcessor(model_file=f"{args.model}/tokenizer.model")
    with open(f"{args.model}/spanserve.json", encoding="utf-8") as f:
        vocab = D.make_span_vocab(sp, json.load(f)["max_header_tokens"])
    autocast = torch.bfloat16 if device.type == "cuda" else None
    results = {}
    for spec in args.data:
        name, _, path = spec.partition("=")
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        t = time.time()
        results[name] = evaluate_buckets(model, sp, vocab, records, args.per_bucket or
                                         len(records), device, autocast)
        print(f"== {args.model} on {name} ({time.time() - t:.0f} s)\n"
              + bucket_table(results[name]), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
