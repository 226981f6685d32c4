"""Training data, training runs, export and LoRA (tiny models on CPU: a few seconds each)."""
import json
import os

import pytest
import sentencepiece as spm
import torch

from spanserve_train import arith_data as ad
from spanserve_train import data as D
from spanserve_train import lora, train
from spanserve_train.hf_export import load_hf_dir, save_hf_dir
from spanserve_train.model import LlamaConfig, LlamaForCausalLM
from spanserve_train.span_rule import encode_prompt
from spanserve_train.summ_annotate import annotate

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

TOKENIZER = os.path.join(REPO, "tests", "data", "tokenizer", "tokenizer.model")
SAMPLE = os.path.join(REPO, "tests", "data", "summ_sample.jsonl")


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=TOKENIZER)


@pytest.fixture(scope="module")
def vocab(sp):
    return D.make_span_vocab(sp, 16)


@pytest.fixture(scope="module")
def arith_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith")
    spec = ad.ArithSpec(min_ops=1, max_ops=2, max_digits=1, max_depth=2, max_value=100)
    splits = ad.make_splits(spec, {"train": 400, "val": 32, "test": 0}, seed=3)
    for name in ("train", "val"):
        ad.write_jsonl(str(out / f"{name}.jsonl"), splits[name])
    return str(out / "train.jsonl"), str(out / "val.jsonl")


def expected_mask(ids, prompt_len, sp):
    """The rule for well-formed headers, written out from the token ids alone."""
    A, E = sp.piece_to_id("<a>"), sp.piece_to_id("</a>")
    T = len(ids)
    starts = [p for p in range(T) if ids[p] == A]
    ends = starts[1:] + [T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for s, (start, end) in enumerate(zip(starts, ends)):
        if start < prompt_len:
            continue
        h = ids.index(E, start)
        refs = [int(r) for r in sp.decode(ids[start + 1:h]).split(",") if r]
        for q in range(h, end):
            mask[q] = False
            mask[q, :starts[0]] = True
            for r in refs:
                mask[q, starts[r]:ends[r]] = True
            mask[q, start:q + 1] = True
    return mask


def test_tokenized_examples_are_what_the_server_sees(sp, vocab):
    record = ad.make_record(ad.parse("((3+4)*(5-2))+6"))
    ex = D.encode_record(record, sp, vocab, "whole")
    assert ex.ids[:ex.prompt_len] == encode_prompt(sp, vocab.anchor_id, [record["prompt"]])
    assert ex.ids[:2] == [sp.bos_id(), vocab.anchor_id]
    assert ex.ids[ex.prompt_len:] == sp.encode(record["output"]) + [sp.eos_id()]

    with open(SAMPLE, encoding="utf-8") as f:
        raw = json.loads(f.readline())
    summ = annotate(raw["article"], raw["summary"])
    ex = D.encode_record(summ, sp, vocab, "sentences")
    assert ex.ids[:ex.prompt_len] == encode_prompt(sp, vocab.anchor_id, summ["segments"])
    assert ex.ids[:ex.prompt_len].count(vocab.anchor_id) == len(summ["segments"])


def test_mask_of_a_tokenized_example_equals_the_span_rule(sp, vocab):
    arith = ad.make_record(ad.parse("((3+4)*(5-2))+6"))
    with open(SAMPLE, encoding="utf-8") as f:
        summ = [annotate(r["article"], r["summary"]) for r in map(json.loads, f)]
    examples = [D.encode_record(arith, sp, vocab, "whole")]
    examples += [D.encode_record(r, sp, vocab, "sentences") for r in summ[:3]]
    batch = D.collate(examples, vocab, pad_id=sp.eos_id())
    T = batch["input_ids"].shape[1]
    for b, ex in enumerate(examples):
        n = len(ex)
        want = expected_mask(ex.ids, ex.prompt_len, sp)
        assert torch.equal(batch["attention_mask"][b, :n, :n], want)
        assert not want.all(), "span restriction must show in the mask"
        # padding: no loss, attends only itself, attended by no real position
        assert torch.equal(batch["attention_mask"][b, n:, :], torch.eye(T, dtype=torch.bool)[n:])
        assert not batch["attention_mask"][b, :n, n:].any()
        labels = batch["labels"][b]
        assert labels[:ex.prompt_len - 1].eq(D.IGNORE).all() and labels[n - 1:].eq(D.IGNORE).all()
        assert labels[ex.prompt_len - 1:n - 1].tolist() == ex.ids[ex.prompt_len:]
        assert batch["input_ids"][b, :n].tolist() == ex.ids
    # arithmetic: the third step's content reads the sink, step 2 and itself, not the prompt
    ex = examples[0]
    anchors = [p for p, t in enumerate(ex.ids) if t == vocab.anchor_id]
    row = batch["attention_mask"][0, anchors[3] + 3]  # `<a>2</a>` then content
    assert row[0] and not row[anchors[0]:anchors[2]].any() and row[anchors[2]:anchors[3]].all()


def test_batches_resume_where_they_stopped():
    examples = [D.Example([i, i], 1) for i in range(10)]
    first = D.batches(examples, 3, seed=1)
    all_batches = [[ex.ids[0] for ex in next(first)] for _ in range(8)]
    resumed = D.batches(examples, 3, seed=1, start_step=5)
    assert [[ex.ids[0] for ex in next(resumed)] for _ in range(3)] == all_batches[5:]
    assert sorted(sum(all_batches[:3], [])) == sorted(set(sum(all_batches[:3], [])))
    assert all_batches[:3] != all_batches[3:6]  # each epoch shuffles anew


def test_collating_workers_keep_the_batch_order(arith_files, sp, vocab):
    examples = [D.Example([i, i + 1, i + 2], 1) for i in range(40)]
    single = D.collated_batches(examples, 4, 3, 7, vocab, sp.eos_id(), workers=0)
    pooled = D.collated_batches(examples, 4, 3, 7, vocab, sp.eos_id(), workers=3)
    for _ in range(12):  # more than one epoch of 10 batches
        a, b = next(single), next(pooled)
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["attention_mask"], b["attention_mask"])


def test_dense_fraction_gives_some_examples_the_causal_mask(arith_files, sp, vocab):
    examples = [D.encode_record(r, sp, vocab, "whole") for r in D.load_jsonl(arith_files[0])]
    examples = [ex for ex in examples  # those whose spans are not the causal mask already
                if not torch.equal(D.example_mask(ex, vocab), D.example_mask(ex, vocab, "dense"))]
    stream = D.collated_batches(examples, 8, 0, 0, vocab, sp.eos_id(), dense_fraction=0.5)
    dense = sparse = 0
    for _ in range(10):
        batch = next(stream)
        for b in range(8):
            n = int((batch["input_ids"][b] != sp.eos_id()).sum()) + 1  # EOS ends each example
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            if torch.equal(batch["attention_mask"][b, :n, :n], causal):
                dense += 1
            else:
                sparse += 1
    assert 20 < dense < 60 and 20 < sparse < 60, (dense, sparse)
    again = D.collated_batches(examples, 8, 0, 0, vocab, sp.eos_id(), dense_fraction=0.5)
    assert torch.equal(next(again)["attention_mask"],
                       next(D.collated_batches(examples, 8, 0, 0, vocab, sp.eos_id(),
                                               dense_fraction=0.5))["attention_mask"])


def test_time_limit_stops_and_exports(arith_files, tmp_path):
    args = run_args(arith_files, tmp_path, "--tokenizer", TOKENIZER, "--steps", "100000",
                    "--time-limit-min", "0.0001", "--eval-every", "100000")
    result = train.train(args)
    assert result["stopped_early"] and result["step"] < 100000
    assert os.path.exists(os.path.join(result["export_dir"], "model.safetensors"))
    assert torch.load(tmp_path / train.CHECKPOINT)["step"] == result["step"]


def test_batches_pad_little(arith_files, sp, vocab):
    examples = [D.encode_record(r, sp, vocab, "whole") for r in D.load_jsonl(arith_files[0])]
    lengths = [len(ex) for ex in examples]
    order = D.batch_order(lengths, 8, seed=0, epoch=0)
    assert sorted(sum(order, [])) == list(range(len(examples)))  # 400 = 50 batches of 8
    padded = sum(8 * max(lengths[i] for i in b) for b in order)
    assert padded < 1.05 * sum(lengths)
    unsorted = D.batch_order(lengths, 8, seed=0, epoch=0, bucket_batches=1)
    assert sum(8 * max(lengths[i] for i in b) for b in unsorted) > 1.1 * sum(lengths)


def test_lr_schedule():
    args = train.build_parser().parse_args(["--lr", "1e-3", "--min-lr", "1e-4", "--warmup", "10",
                                            "--steps", "110"])
    assert train.lr_at(0, args) == pytest.approx(1e-4)
    assert train.lr_at(9, args) == pytest.approx(1e-3)
    assert train.lr_at(60, args) == pytest.approx(5.5e-4)
    assert train.lr_at(110, args) == pytest.approx(1e-4)
    assert train.lr_at(20, args, time_fraction=0.5) == pytest.approx(5.5e-4)  # time further on
    assert train.lr_at(60, args, time_fraction=0.1) == pytest.approx(5.5e-4)  # steps further on


def run_args(files, out, *extra):
    return train.parse_args([
        "--train-data", files[0], "--val-data", files[1], "--out", str(out),
        "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
        "--max-positions", "128", "--batch-size", "16", "--lr", "3e-3", "--min-lr", "3e-4",
        "--warmup", "5", "--log-every", "5", "--eval-every", "30", "--val-batches", "1",
        "--eval-examples", "2", "--ckpt-every", "1000", "--seed", "0", *extra])


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def model_logits(model, sp, vocab, record):
    ex = D.encode_record(record, sp, vocab, "whole")
    batch = D.collate([ex], vocab, sp.eos_id())
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["positions"])


def test_training_lowers_the_loss_and_the_export_loads_back(arith_files, tmp_path, sp, vocab):
    args = run_args(arith_files, tmp_path, "--tokenizer", TOKENIZER, "--steps", "30")
    result = train.train(args)
    losses = [m["loss"] for m in read_metrics(tmp_path) if "loss" in m]
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0], losses
    assert result["val_loss"] < losses[0]
    assert 0 <= result["exact_match"] <= 1 and "answer_accuracy" in result

    export_dir = result["export_dir"]
    with open(os.path.join(export_dir, "spanserve.json"), encoding="utf-8") as f:
        span = json.load(f)
    assert span["prompt_segmentation"] == "whole" and span["max_header_tokens"] == 16
    exported, config = load_hf_dir(export_dir)
    assert config.vocab_size == sp.get_piece_size() and config.num_key_value_heads == 2
    trained, *_ = train.build_model(args)
    train.load_checkpoint(os.path.join(tmp_path, train.CHECKPOINT), trained, None, args)
    record = D.load_jsonl(arith_files[1])[0]
    assert torch.equal(model_logits(exported, sp, vocab, record),
                       model_logits(trained, sp, vocab, record))


def test_resume_continues_exactly(arith_files, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = ["--tokenizer", TOKENIZER, "--steps", "12", "--eval-every", "1000"]
    train.train(run_args(arith_files, whole, *common))
    train.train(run_args(arith_files, parts, *common, "--run-steps", "5"))
    assert not os.path.exists(parts / "model"), "an interrupted run must not export"
    assert torch.load(parts / train.CHECKPOINT)["step"] == 5
    train.train(run_args(arith_files, parts, *common))
    a = torch.load(whole / train.CHECKPOINT)
    b = torch.load(parts / train.CHECKPOINT)
    assert a["step"] == b["step"] == 12
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name


def test_init_from_starts_at_the_exported_weights(arith_files, tmp_path, sp, vocab):
    first = train.train(run_args(arith_files, tmp_path / "a", "--tokenizer", TOKENIZER,
                                 "--steps", "10", "--eval-every", "1000"))
    args = run_args(arith_files, tmp_path / "b", "--tokenizer", TOKENIZER, "--steps", "1",
                    "--init-from", first["export_dir"])
    model, *_ = train.build_model(args)
    exported, _ = load_hf_dir(first["export_dir"], torch.float32)
    fresh, *_ = train.build_model(run_args(arith_files, tmp_path / "c", "--tokenizer", TOKENIZER))
    record = D.load_jsonl(arith_files[1])[0]
    assert torch.equal(model_logits(model, sp, vocab, record),
                       model_logits(exported, sp, vocab, record))
    assert not torch.equal(model_logits(fresh, sp, vocab, record),
                           model_logits(exported, sp, vocab, record))
    # Another shape than the export's is refused by name.
    with pytest.raises(ValueError, match="--init-from"):
        train.build_model(run_args(arith_files, tmp_path / "d", "--tokenizer", TOKENIZER,
                                   "--layers", "3", "--init-from", first["export_dir"]))


# ----------------------------------------------------------------------------- LoRA

@pytest.fixture(scope="module")
def base_model_dir(arith_files, tmp_path_factory):
    """A tiny 'pretrained' LLaMA whose tokenizer has no span tokens."""
    out = tmp_path_factory.mktemp("base")
    texts = [r["prompt"] for r in D.load_jsonl(arith_files[0])] + ["hello world"] * 5
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(out / "sp"),
                                   vocab_size=40, split_digits=True, hard_vocab_limit=False,
                                   minloglevel=2)
    base_sp = spm.SentencePieceProcessor(model_file=str(out / "sp.model"))
    assert base_sp.piece_to_id("<a>") == base_sp.unk_id()
    config = LlamaConfig(vocab_size=base_sp.get_piece_size(), hidden_size=64,
                         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(7)
    model = LlamaForCausalLM(config)
    save_hf_dir(model, config, str(out / "model"), tokenizer_path=str(out / "sp.model"))
    return str(out / "model")


def test_lora_merge_gives_the_adapted_logits():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    names = set(model.state_dict())
    assert lora.apply_lora(model, rank=4, alpha=8) == 7 * 2
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    for module in model.modules():
        if isinstance(module, lora.LoRALinear):
            torch.nn.init.normal_(module.lora_B, std=0.1)  # as after training
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        adapted = model(ids)
        assert lora.merge_lora(model) == 14
        merged = model(ids)
    assert set(model.state_dict()) == names
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert torch.allclose(adapted, merged, atol=1e-5)
    assert not torch.allclose(adapted, LlamaForCausalLM(config)(ids), atol=1e-2)


def test_add_span_tokens_is_idempotent(base_model_dir, tmp_path):
    src = os.path.join(base_model_dir, "tokenizer.model")
    n = spm.SentencePieceProcessor(model_file=src).get_piece_size()
    assert lora.add_span_tokens(src, str(tmp_path / "a.model")) == (n, n + 1, n + 2)
    assert lora.add_span_tokens(str(tmp_path / "a.model"), str(tmp_path / "b.model")) == \
        (n, n + 1, n + 2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "b.model"))
    ids = sp.encode("<a>12</a>3+4")
    assert n in ids and n + 1 in ids
    assert sp.decode(ids) == "<a>12</a>3+4"


def test_lora_training_trains_and_merges(arith_files, base_model_dir, tmp_path):
    args = run_args(arith_files, tmp_path, "--base-model", base_model_dir, "--steps", "30",
                    "--lora-rank", "4", "--lora-alpha", "8", "--lr", "1e-2")
    result = train.train(args)
    losses = [m["loss"] for m in read_metrics(tmp_path) if "loss" in m]
    assert losses[-1] < 0.8 * losses[0], losses

    base, _ = load_hf_dir(base_model_dir)
    merged, config = load_hf_dir(result["export_dir"])
    sp = spm.SentencePieceProcessor(model_file=os.path.join(result["export_dir"],
                                                            "tokenizer.model"))
    n = base.config.vocab_size
    assert config.vocab_size == n + 2 and config.tie_word_embeddings
    assert (sp.piece_to_id("<a>"), sp.piece_to_id("</a>")) == (n, n + 1)
    embed = merged.model.embed_tokens.weight
    assert torch.equal(embed[:n], base.model.embed_tokens.weight), "base rows must stay frozen"
    mean = base.model.embed_tokens.weight.mean(0)
    assert not torch.allclose(embed[n], mean) and not torch.allclose(embed[n + 1], mean)
    q = merged.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q, base.model.layers[0].self_attn.q_proj.weight)

    adapted, *_ = train.build_model(args)
    train.load_checkpoint(os.path.join(tmp_path, train.CHECKPOINT), adapted, None, args)
    vocab = D.make_span_vocab(sp, 16)
    record = D.load_jsonl(arith_files[1])[0]
    assert torch.allclose(model_logits(adapted, sp, vocab, record),
                          model_logits(merged, sp, vocab, record), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_with_bf16_autocast(arith_files, base_model_dir, tmp_path):
    modes = {"scratch": ["--tokenizer", TOKENIZER],
             "lora": ["--base-model", base_model_dir, "--lr", "1e-2"]}
    for name, extra in modes.items():
        args = run_args(arith_files, tmp_path / name, *extra, "--steps", "30", "--device", "cuda")
        assert train.pick_device(args)[1] == torch.bfloat16
        # cuDNN's attention rebuilt a graph on the host for every new batch length (the H100's
        # training steps were 2-3x their GPU time): training uses flash and memory-efficient.
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        result = train.train(args)
        losses = [m["loss"] for m in read_metrics(tmp_path / name) if "loss" in m]
        assert losses[-1] < 0.8 * losses[0], (name, losses)
        load_hf_dir(result["export_dir"])


def test_summ_long_config_is_a_shape_the_cuda_kernels_serve():
    """The summary model is trained to be served on the GPU: its head_dim and GQA group must be
    ones kernels/decode_attention.cu's AttentionSupports takes (head_dim 64 or 128, 1, 2, 4 or
    8 query heads per KV head). The first config trained 6 heads over 2 KV heads, a group of
    3, and was refused at model load after the training had run."""
    with open(os.path.join(REPO, "training", "configs", "train-summ-long.json")) as f:
        c = json.load(f)
    kernels = open(os.path.join(REPO, "kernels", "decode_attention.cu")).read()
    assert "(head_dim == 64 || head_dim == 128)" in kernels  # the rule this test copies
    assert "group_size == 1 || group_size == 2 || group_size == 4 || group_size == 8" in kernels
    assert c["hidden"] // c["heads"] in (64, 128)
    assert c["heads"] % c["kv_heads"] == 0 and c["heads"] // c["kv_heads"] in (1, 2, 4, 8)


def test_token_classes_split_headers_digits_and_text(sp, vocab):
    # One output with two headers; the classes come from the token ids alone.
    output = "<a>2,13</a>Ada built 54 sheds.<a>7</a>Bo won."
    ids = sp.encode(output) + [sp.eos_id()]
    labels = torch.tensor([[D.IGNORE, D.IGNORE] + ids])
    classes = train.token_classes(labels, vocab, train.digit_piece_ids(sp))[0].tolist()
    names = [train.TOKEN_CLASSES[c] if c >= 0 else None for c in classes]
    assert names[:2] == [None, None]  # no loss, no class
    inside = False
    for piece_id, name in zip(ids, names[2:]):
        piece = sp.id_to_piece(piece_id)
        if piece_id in (vocab.anchor_id, vocab.header_end_id):
            inside = piece_id == vocab.anchor_id
            assert name is None, piece
        elif inside:
            assert name == "header", piece
        elif piece.lstrip("\u2581").isdigit():
            assert name == "digit", piece
        else:
            assert name == "text", piece
    assert names.count("header") >= 4 and names.count("digit") == 2


def test_evaluation_reports_token_accuracy_by_class(arith_files, tmp_path):
    args = run_args(arith_files, tmp_path, "--tokenizer", TOKENIZER, "--steps", "3",
                    "--eval-examples", "0")
    accuracy = train.train(args)["token_accuracy"]
    assert set(accuracy) == {"header", "digit", "text"}  # arithmetic answers have all three
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())


@pytest.mark.parametrize("attention", ["mask", "rows"])
def test_padding_a_batch_to_an_alignment_keeps_its_loss(arith_files, sp, vocab, attention):
    records = D.load_jsonl(arith_files[1])[:6]
    examples = [D.encode_record(r, sp, vocab, "whole") for r in records]
    packed = D.Packed.of(examples[:6], vocab)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=32,
                                         intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=512))
    model.init_weights(std=0.2)
    losses = []
    for pad_to in (1, 64):
        batch = D.collate_packed(packed, range(6), sp.eos_id(), [False, True], with_mask=False,
                                 pad_to=pad_to)
        assert batch["input_ids"].shape[1] % pad_to == 0
        losses.append(float(train.loss_of(model, batch, torch.device("cpu"), None, attention)))
    longest = max(len(ex) for ex in examples[:6])
    assert longest % 64 != 0  # so that the padding is real
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
