import sys, json, torch, collections
sys.path.insert(0, "/work/main/training")
import sentencepiece as spm
import torch.nn.functional as F
from spanserve_train import data as D
from spanserve_train.hf_export import load_hf_dir
model, cfg = load_hf_dir(sys.argv[1], torch.float32); model.eval()
sp = spm.SentencePieceProcessor(model_file=sys.argv[1] + "/tokenizer.model")
vocab = D.make_span_vocab(sp, 32)
recs = D.load_jsonl(sys.argv[2])[:int(sys.argv[3])]
torch.set_num_threads(2)
for dense in (False, True):
    cls = collections.defaultdict(lambda: [0.0, 0, 0])
    for r in recs:
        ex = D.encode_record(r, sp, vocab, "sentences")
        b = D.collate([ex], vocab, sp.eos_id(), [dense])
        with torch.no_grad():
            logits = model(b["input_ids"], D.batch_mask(b), b["positions"])
        lab = b["labels"][0]; lp = F.cross_entropy(logits[0], lab, ignore_index=-100, reduction="none")
        pred = logits[0].argmax(-1)
        inhdr = False
        for t in range(len(lab)):
            if lab[t] < 0: continue
            piece = sp.id_to_piece(int(lab[t]))
            if piece == "<a>": inhdr = True; c = "hdr_open"
            elif piece == "</a>": inhdr = False; c = "hdr_close"
            elif inhdr: c = "hdr"
            elif piece.strip("▁").isdigit(): c = "digit"
            else: c = "text"
            cls[c][0] += float(lp[t]); cls[c][1] += 1; cls[c][2] += int(pred[t] == lab[t])
    print("dense" if dense else "self", {k: (round(v[0]/v[1], 3), v[1], round(v[2]/v[1], 3)) for k, v in cls.items()})
