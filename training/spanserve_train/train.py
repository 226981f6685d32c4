"""Trains a span model: a LLaMA (model.py) learns a task and its own attention span at once.

Every example is trained under its span mask (data.py: span_rule's mask, the one the server
applies), so the model learns to write span headers with full attention and the content after
them with only the segments it named. Two modes:

- from scratch: a small LLaMA of the given shape and the tokenizer given by --tokenizer
  (training/tools/build_span_tokenizer.py);
- LoRA (--base-model DIR, a Hugging Face LLaMA directory): adapters on every projection, the span
  tokens added to the base tokenizer and their embedding/lm_head rows trained, merged at export.

AdamW, linear warmup then cosine decay, gradient clipping; bf16 autocast on CUDA when supported,
fp32 on CPU. Progress lines, periodic validation loss and greedy exact match under the span
mask, checkpoints that resume (model, optimizer, step, RNG: `--out` again continues), and at the
end a Hugging Face directory with spanserve.json (hf_export.save_hf_dir).

    /usr/bin/python3 -m spanserve_train.train --config configs/train-arith-d1.json
    /usr/bin/python3 -m spanserve_train.train --train-data runs/data/arith-d1/train.jsonl \
        --val-data runs/data/arith-d1/val.jsonl --tokenizer runs/arith-d1/tokenizer.model \
        --out runs/arith-d1 --steps 3000 --hidden 256 --layers 4 --heads 4
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import List, Optional

import sentencepiece as spm
import torch
import torch.nn.functional as F

from . import data as D
from .arith_data import check_output
from .bucket_eval import bucket_table, evaluate_buckets
from .hf_export import load_hf_dir, save_hf_dir
from .lora import add_span_tokens, apply_lora, merge_lora, resize_vocab, train_rows
from .model import LlamaConfig, LlamaForCausalLM
from .span_rule import SpanTracker, attention_mask

CHECKPOINT = "checkpoint.pt"


# ----------------------------------------------------------------------------- arguments

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", help="JSON of defaults for any of these flags (keys with _ or -)")
    a("--train-data", help="training JSONL (arithmetic or summarisation records)")
    a("--val-data", help="validation JSONL")
    a("--out", help="run directory: checkpoint, metrics, exported model")
    a("--export-dir", help="where the Hugging Face model goes (default OUT/model)")
    a("--segmentation", default="auto",
          help="prompt segmentation of the model: whole, sentences, ... (auto: sentences when "
               "records carry segments, else whole)")
    a("--max-header-tokens", type=int, default=16)
    a("--max-len", type=int, default=0, help="drop longer examples (0: the model's context)")
    # from scratch
    a("--tokenizer", help="tokenizer.model with <a> and </a> (from-scratch mode)")
    a("--hidden", type=int, default=256)
    a("--layers", type=int, default=4)
    a("--heads", type=int, default=4)
    a("--kv-heads", type=int, default=0, help="0: as many as heads")
    a("--intermediate", type=int, default=0, help="0: about 8/3 hidden, a multiple of 32")
    a("--max-positions", type=int, default=512)
    a("--rope-theta", type=float, default=10000.0)
    a("--tie-embeddings", action="store_true")
    a("--init-from", help="from-scratch mode: start from this exported model's weights (its "
                          "config must match the shape flags) with a fresh optimizer: training "
                          "continued on another machine from the model alone")
    # LoRA
    a("--base-model", help="Hugging Face LLaMA directory: LoRA fine-tuning mode")
    a("--lora-rank", type=int, default=16)
    a("--lora-alpha", type=float, default=32.0)
    a("--lora-dropout", type=float, default=0.0)
    # optimisation
    a("--steps", type=int, default=1000)
    a("--batch-size", type=int, default=32)
    a("--lr", type=float, default=1e-3)
    a("--min-lr", type=float, default=1e-4)
    a("--warmup", type=int, default=100)
    a("--weight-decay", type=float, default=0.1)
    a("--grad-clip", type=float, default=1.0)
    a("--seed", type=int, default=0)
    # running
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
      help="autocast on CUDA (auto: bf16 when supported); CPU always runs fp32")
    a("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a("--log-every", type=int, default=10)
    a("--eval-every", type=int, default=200)
    a("--val-batches", type=int, default=8)
    a("--eval-examples", type=int, default=16, help="greedy exact match on this many")
    a("--ckpt-every", type=int, default=200)
    a("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    a("--run-steps", type=int, default=0,
      help="stop after this many steps of this invocation (checkpoint, no export): a long "
           "run in slices; run again to continue")
    a("--export-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    a("--dense-fraction", type=float, default=0.0,
      help="train this fraction of the examples (drawn per step) under the DENSE mode's causal "
           "mask, the rest under their spans: one model then serves both request modes, and "
           "DENSE is a real baseline for SELF_SELECTED")
    a("--attention", default="rows", choices=["rows", "mask"],
      help="rows: a causal fused kernel for all rows and a masked one for the output's "
           "restricted rows (data.span_rows); mask: one masked kernel over the full [T, T] "
           "mask (the same values, slower at long prompts)")
    a("--pad-to", type=int, default=0,
      help="pad each training batch's length to a multiple of this (aligned rows for the "
           "fused attention kernels; padding has no loss and no real row attends it; 0: 64 on "
           "CUDA, none on the CPU, where padding is only more work)")
    a("--profile-steps", type=int, default=0,
      help="profile this many training steps after 10 warm ones (torch.profiler) and print "
           "the kernels' table to the log")
    a("--workers", type=int, default=0,
      help="processes that collate batches (span masks are built in Python; 0: in-process)")
    a("--eval-per-bucket", type=int, default=0,
      help="arithmetic: at each evaluation, also greedy-decode up to this many validation "
           "records of each bucket (operators x operand digits) in both modes, batched, and "
           "report exact match, all steps correct and malformed headers per bucket")
    a("--export-only", action="store_true",
      help="export the model of OUT's checkpoint (e.g. a run stopped by --run-minutes) and stop")
    a("--run-minutes", type=float, default=0,
      help="stop this invocation after this many minutes of training (checkpoint, no export), "
           "as --run-steps; the schedule of --time-limit-min goes on where it stopped")
    a("--time-limit-min", type=float, default=0,
      help="train for at most this many minutes (for a machine lent for a fixed time): the "
           "cosine schedule runs on whichever of steps and time is further along, so the "
           "learning rate still anneals, then checkpoint and export (0: no limit). The minutes "
           "of earlier invocations count (the checkpoint keeps them); --fresh-schedule does "
           "not count them: a resumed run then starts a new cycle of that length")
    a("--fresh-schedule", action="store_true",
      help="resume the weights and optimizer but start the schedule anew (warmup, then the "
           "cosine over --time-limit-min or the steps left): a warm restart")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        with open(known.config, encoding="utf-8") as f:
            defaults = {k.replace("-", "_"): v for k, v in json.load(f).items()
                        if not k.startswith("_")}
        flags = {a.dest for a in parser._actions}
        unknown = set(defaults) - flags
        if unknown:
            parser.error(f"{known.config}: unknown keys {sorted(unknown)}")
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for need in ("train_data", "val_data", "out"):
        if not getattr(args, need):
            parser.error(f"--{need.replace('_', '-')} is required")
    if not args.base_model and not args.tokenizer:
        parser.error("from scratch needs --tokenizer (or give --base-model for LoRA)")
    return args


# ----------------------------------------------------------------------------- model

def scratch_model(args) -> tuple:
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    inter = args.intermediate or 32 * math.ceil(args.hidden * 8 / 3 / 32)
    config = LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=args.hidden,
                         intermediate_size=inter, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads or args.heads,
                         max_position_embeddings=args.max_positions, rope_theta=args.rope_theta,
                         tie_word_embeddings=args.tie_embeddings,
                         bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id())
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    if args.init_from:
        start, start_config = load_hf_dir(args.init_from, torch.float32)
        if start_config.to_hf_dict() != config.to_hf_dict():
            raise ValueError(f"--init-from {args.init_from}: its config.json does not match the "
                             f"shape flags")
        model.load_state_dict(start.state_dict())
        print(f"weights from {args.init_from}")
    return model, config, sp, args.tokenizer


def lora_model(args) -> tuple:
    """The base model with the span tokens added and adapters on; the base stays frozen."""
    tokenizer_path = os.path.join(args.out, "tokenizer.model")
    _, _, pieces = add_span_tokens(os.path.join(args.base_model, "tokenizer.model"),
                                   tokenizer_path)
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    model, config = load_hf_dir(args.base_model, dtype=torch.float32)
    old_rows = model.model.embed_tokens.weight.shape[0]
    resize_vocab(model.model.embed_tokens, model.lm_head, pieces)
    config.vocab_size = model.model.embed_tokens.weight.shape[0]
    torch.manual_seed(args.seed)
    apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)
    span_ids = sorted({sp.piece_to_id("<a>"), sp.piece_to_id("</a>")} |
                      set(range(old_rows, config.vocab_size)))
    for table in {id(t): t for t in (model.model.embed_tokens.weight, model.lm_head.weight)
                  }.values():
        train_rows(table, span_ids)
    return model, config, sp, tokenizer_path


def make_optimizer(model, args) -> torch.optim.Optimizer:
    """Weight decay on matrices only; none on norms and on the embedding/lm_head tables of LoRA
    (decay would move their frozen rows)."""
    decay, no_decay = [], []
    tables = {id(model.model.embed_tokens.weight), id(model.lm_head.weight)}
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        lora_table = args.base_model and id(p) in tables
        (decay if p.dim() >= 2 and not lora_table else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))


def lr_at(step: int, args, time_fraction: float = 0.0, steps: Optional[int] = None) -> float:
    """The learning rate at `step` of a schedule of `steps` (default --steps)."""
    steps = args.steps if steps is None else steps
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = max((step - args.warmup) / max(1, steps - args.warmup), time_fraction)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1, progress)))


# ----------------------------------------------------------------------------- running

def output_logits(model, batch, device, autocast_dtype, attention: str = "rows") -> tuple:
    """(logits [N, V], labels [N]) at the output's tokens, in order; logits for those only."""
    labels = batch["labels"].to(device)
    at = labels != D.IGNORE
    mask = D.batch_rows(batch, device) if attention == "rows" else D.batch_mask(batch, device)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(batch["input_ids"].to(device), mask, batch["positions"].to(device),
                       logits_at=at)
    return logits, labels[at]


def loss_of(model, batch, device, autocast_dtype, attention: str = "rows") -> torch.Tensor:
    """Mean cross-entropy over the output's tokens."""
    logits, labels = output_logits(model, batch, device, autocast_dtype, attention)
    return F.cross_entropy(logits.float(), labels)


TOKEN_CLASSES = ("header", "digit", "text")


def token_classes(labels: torch.Tensor, vocab, digit_ids: torch.Tensor) -> torch.Tensor:
    """The class of each label of [B, T] (D.IGNORE where no loss) as an index into TOKEN_CLASSES,
    -1 for the header delimiters: inside <a>..</a> (the source ids the model names),
    a digit of the text (numbers, which must be copied or derived), any other token (EOS too)."""
    opened = (labels == vocab.anchor_id).cumsum(1)
    closed = (labels == vocab.header_end_id).cumsum(1)
    delimiter = (labels == vocab.anchor_id) | (labels == vocab.header_end_id)
    classes = torch.full_like(labels, TOKEN_CLASSES.index("text"))
    classes[torch.isin(labels, digit_ids.to(labels.device))] = TOKEN_CLASSES.index("digit")
    classes[opened > closed] = TOKEN_CLASSES.index("header")
    classes[delimiter | (labels == D.IGNORE)] = -1
    return classes


def digit_piece_ids(sp) -> torch.Tensor:
    return torch.tensor([i for i in range(sp.get_piece_size())
                         if sp.id_to_piece(i).lstrip("\u2581").isdigit()], dtype=torch.long)


@torch.no_grad()
def generate(model, vocab, prompt_ids: List[int], eos_id: int, max_new: int,
             device: torch.device, autocast_dtype=None) -> List[int]:
    """Greedy decoding under the span mask (the whole sequence again at every step: no KV cache,
    fine for the short sequences of evaluation)."""
    tracker = SpanTracker(vocab, prompt_ids)
    ids = list(prompt_ids)
    for _ in range(max_new):
        if len(ids) >= model.config.max_position_embeddings:
            break
        mask = attention_mask(tracker)
        with torch.autocast(device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            logits = model(torch.tensor([ids], device=device), mask[None].to(device))
        token = int(logits[0, -1].argmax())
        if token == eos_id:
            break
        ids.append(token)
        tracker.append(token)
    return ids[len(prompt_ids):]


@torch.no_grad()
def evaluate(model, val, records, sp, vocab, args, device, autocast_dtype) -> dict:
    model.eval()
    losses = []
    right = torch.zeros(len(TOKEN_CLASSES))
    seen = torch.zeros(len(TOKEN_CLASSES))
    digits = digit_piece_ids(sp)
    for i in range(0, min(len(val), args.val_batches * args.batch_size), args.batch_size):
        batch = D.collate(val[i:i + args.batch_size], vocab, sp.eos_id())
        logits, labels = output_logits(model, batch, device, autocast_dtype, args.attention)
        losses.append(float(F.cross_entropy(logits.float(), labels)))
        # Teacher-forced accuracy by class: which part of the answer the model has learnt.
        classes = token_classes(batch["labels"], vocab, digits)
        classes = classes[batch["labels"] != D.IGNORE].to(device)
        hit = logits.argmax(-1) == labels
        for c in range(len(TOKEN_CLASSES)):
            right[c] += float(hit[classes == c].sum())
            seen[c] += float((classes == c).sum())
    exact = answers = 0
    shown = None
    n = min(args.eval_examples, len(val))
    for ex, record in zip(val[:n], records[:n]):
        want = len(ex) - ex.prompt_len
        out = generate(model, vocab, ex.ids[:ex.prompt_len], sp.eos_id(), want + 16, device,
                       autocast_dtype)
        text = sp.decode(out)
        exact += text == record["output"]
        if "prompt" in record and "answer" in record:  # arithmetic: the checker's verdict
            answers += check_output(record["prompt"], text).answer_correct
        shown = shown or text
    result = {"val_loss": sum(losses) / max(1, len(losses))}
    result["token_accuracy"] = {name: round(float(right[c] / seen[c]), 4)
                                for c, name in enumerate(TOKEN_CLASSES) if seen[c] > 0}
    if n:  # no greedy examples asked for: no score (a 0.0 would read as a failure)
        result["exact_match"] = exact / n
        if records and "answer" in records[0]:
            result["answer_accuracy"] = answers / n
        result["sample"] = shown
    if args.eval_per_bucket and records and "expr" in records[0]:
        t = time.time()
        result["buckets"] = evaluate_buckets(model, sp, vocab, records, args.eval_per_bucket,
                                             device, autocast_dtype)
        print(f"greedy by bucket ({time.time() - t:.0f} s):\n"
              + bucket_table(result["buckets"]), flush=True)
    model.train()
    return result


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, model, optimizer, step: int, args, schedule: dict = None
                    ) -> None:
    """Full state from scratch; for LoRA only what training changes (the base is on disk).
    `schedule`: where the time-limited schedule stands ({"start_step", "seconds"})."""
    params = {n for n, p in model.named_parameters() if p.requires_grad}
    state = {n: t for n, t in model.state_dict().items() if not args.base_model or n in params}
    tmp = path + ".tmp"
    torch.save({"step": step, "model": state, "optimizer": optimizer.state_dict(),
                "rng": rng_state(), "args": vars(args), "schedule": schedule or {}}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, model, optimizer, args) -> int:
    """Loads a checkpoint into model (and optimizer and RNG when an optimizer is given)."""
    return load_checkpoint_full(path, model, optimizer, args)[0]


def load_checkpoint_full(path: str, model, optimizer, args) -> tuple:
    """(step, schedule) of a checkpoint loaded into model (and optimizer and RNG)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    _, unexpected = model.load_state_dict(ckpt["model"], strict=not args.base_model)
    if unexpected:
        raise ValueError(f"{path}: unexpected tensors {unexpected}")
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
    return ckpt["step"], ckpt.get("schedule", {})


def build_model(args) -> tuple:
    """(model, config, sp, tokenizer_path) of either mode."""
    return (lora_model if args.base_model else scratch_model)(args)


def pick_device(args) -> tuple:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    autocast_dtype = None
    if device.type == "cuda" and args.dtype != "fp32" and torch.cuda.is_bf16_supported():
        autocast_dtype = torch.bfloat16
    if device.type == "cuda" and hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        # cuDNN's SDPA builds a graph for each new shape on the host (10-40 ms a call, measured
        # on the H100), and every batch has a new length: flash and memory-efficient do not.
        torch.backends.cuda.enable_cudnn_sdp(False)
    return device, autocast_dtype


def encode_split(path: str, sp, vocab, segmentation: str, max_len: int, name: str):
    records = D.load_jsonl(path)
    examples, kept = [], []
    malformed = 0
    for record in records:
        ex = D.encode_record(record, sp, vocab, segmentation)
        if len(ex) > max_len:
            continue
        malformed += D.malformed_segments(ex, vocab)
        examples.append(ex)
        kept.append(record)
    print(f"{name}: {len(examples)} examples ({len(records) - len(examples)} longer than "
          f"{max_len} dropped), mean length {sum(map(len, examples)) / max(1, len(examples)):.1f}")
    if malformed:
        print(f"warning: {name} has {malformed} malformed span headers "
              f"(longer than --max-header-tokens {vocab.max_header_tokens}?)", file=sys.stderr)
    return examples, kept


def log(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    device, autocast_dtype = pick_device(args)
    model, config, sp, tokenizer_path = build_model(args)
    model.to(device)
    vocab = D.make_span_vocab(sp, args.max_header_tokens)
    with open(args.train_data, encoding="utf-8") as f:
        first = json.loads(f.readline())
    segmentation = args.segmentation
    if segmentation == "auto":
        segmentation = "sentences" if "segments" in first else "whole"
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    if args.export_only:
        load_checkpoint(ckpt_path, model, None, args)
        return {"export_dir": export(model, config, tokenizer_path, segmentation, args)}
    max_len = min(args.max_len or config.max_position_embeddings, config.max_position_embeddings)
    train_set = encode_train(args, tokenizer_path, segmentation, max_len)
    val_set, val_records = encode_split(args.val_data, sp, vocab, segmentation, max_len, "val")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M "
          f"trained), vocab {config.vocab_size}, device {device}, "
          f"{'bf16 autocast' if autocast_dtype else 'fp32'}, segmentation {segmentation}")

    optimizer = make_optimizer(model, args)
    step, schedule = 0, {}
    if os.path.exists(ckpt_path) and not args.fresh:
        step, schedule = load_checkpoint_full(ckpt_path, model, optimizer, args)
        print(f"resumed from {ckpt_path} at step {step}")
    if args.fresh_schedule or not schedule:
        schedule = {"start_step": step, "seconds": 0.0}  # this invocation starts a cycle
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    if step == 0 and os.path.exists(metrics_path):
        os.remove(metrics_path)  # a fresh run starts a fresh log
    stream = D.collated_batches(train_set, args.batch_size, args.seed, step, vocab, sp.eos_id(),
                                args.workers, args.dense_fraction, with_mask=False,
                                pad_to=args.pad_to or (64 if device.type == "cuda" else 1))
    model.train()
    t0, tokens, loss_sum, loss_n, start = time.time(), 0, 0.0, 0, step
    data_wait, profiler = 0.0, None  # seconds the loop waited for batches
    last_log = t0
    result = {}
    stop = min(args.steps, step + args.run_steps) if args.run_steps else args.steps
    out_of_time = False  # set when --time-limit-min has run out

    def seconds() -> float:  # of this schedule, earlier invocations included
        return schedule["seconds"] + time.time() - t0

    while step < stop:
        time_fraction = seconds() / (60 * args.time_limit_min) if args.time_limit_min else 0.0
        out_of_time = time_fraction >= 1.0  # this step is the schedule's last
        lr = lr_at(step - schedule["start_step"], args, time_fraction,
                   args.steps - schedule["start_step"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        waited = time.time()
        batch = next(stream)
        data_wait += time.time() - waited
        if args.profile_steps and step - start in (10, 10 + args.profile_steps):
            profiler = toggle_profiler(profiler)
        loss = loss_of(model, batch, device, autocast_dtype, args.attention)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        tokens += batch["tokens"]
        loss_sum += loss.item()
        loss_n += 1
        paused = bool(args.run_minutes) and time.time() - t0 >= 60 * args.run_minutes
        if step % args.log_every == 0 or step == args.steps:
            now = time.time()
            elapsed = now - t0
            eta = elapsed / (step - start) * (args.steps - step)
            step_ms = 1000 * (now - last_log) / loss_n
            last_log = now
            print(f"step {step}/{args.steps} loss {loss_sum / loss_n:.4f} lr {lr:.2e} "
                  f"tok/s {tokens / elapsed:.0f} step {step_ms:.1f} ms data wait "
                  f"{100 * data_wait / elapsed:.0f}% eta {fmt_time(eta)}", flush=True)
            log(metrics_path, {"step": step, "loss": loss_sum / loss_n, "lr": lr,
                               "tokens_per_s": tokens / elapsed})
            loss_sum, loss_n = 0.0, 0
        if out_of_time:
            print(f"time limit of {args.time_limit_min} min reached at step {step} of "
                  f"{args.steps}: the schedule has ended; exporting", flush=True)
        if step % args.eval_every == 0 or step == args.steps or out_of_time or paused:
            result = evaluate(model, val_set, val_records, sp, vocab, args, device,
                              autocast_dtype)
            result.update(step=step, train_tokens_per_s=tokens / (time.time() - t0))
            if out_of_time:
                result["stopped_early"] = True
            print("eval " + json.dumps(result), flush=True)
            log(metrics_path, result)
        if step % args.ckpt_every == 0 or step == stop or out_of_time or paused:
            save_checkpoint(ckpt_path, model, optimizer, step, args,
                            {"start_step": schedule["start_step"], "seconds": seconds()})
        if out_of_time:
            break
        if paused:
            print(f"--run-minutes {args.run_minutes} reached at step {step}; run again to "
                  f"continue", flush=True)
            return result
    if step < args.steps and not out_of_time:
        print(f"stopped at step {step} of {args.steps}; run again to continue")
        return result
    result["export_dir"] = export(model, config, tokenizer_path, segmentation, args)
    return result


def toggle_profiler(profiler):
    """Starts a torch.profiler run (None given), or ends one and prints its kernels' table."""
    from torch.profiler import ProfilerActivity, profile
    if profiler is None:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                               if torch.cuda.is_available() else [])
        profiler = profile(activities=activities)
        profiler.__enter__()
        return profiler
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    profiler.__exit__(None, None, None)
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort, row_limit=30), flush=True)
    return None


def encode_train(args, tokenizer_path: str, segmentation: str, max_len: int) -> D.Packed:
    """The training split, encoded with its span layouts (in --workers processes)."""
    t = time.time()
    packed, kept, dropped, malformed = D.pack_jsonl(args.train_data, tokenizer_path,
                                                    args.max_header_tokens, segmentation,
                                                    max_len, args.workers)
    print(f"train: {kept} examples ({dropped} longer than {max_len} dropped), mean length "
          f"{packed.lengths().mean():.1f}, longest {packed.lengths().max()}, encoded in "
          f"{time.time() - t:.0f} s", flush=True)
    if malformed:
        print(f"warning: train has {malformed} malformed span headers "
              f"(longer than --max-header-tokens {args.max_header_tokens}?)", file=sys.stderr)
    return packed


def export(model, config, tokenizer_path: str, segmentation: str, args) -> str:
    out_dir = args.export_dir or os.path.join(args.out, "model")
    if args.base_model:
        merge_lora(model)
    model.to("cpu")
    save_hf_dir(model, config, out_dir, dtype=args.export_dtype, tokenizer_path=tokenizer_path,
                span_config={"prompt_segmentation": segmentation,
                             "max_header_tokens": args.max_header_tokens})
    print(f"exported {out_dir}")
    return out_dir


def main(argv: Optional[List[str]] = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
