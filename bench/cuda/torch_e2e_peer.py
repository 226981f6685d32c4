"""The PyTorch peer of cuda_e2e_bench DENSE (issue 18): what a user who writes a LLaMA-7B decode
loop in PyTorch gets. The same shape (hidden 4096, 32 layers, 32 heads of 128, intermediate
11008, vocab 32000), dummy bf16 weights, a static KV cache of the run's context, SDPA over it
with a mask of the filled positions (as gpt-fast and Hugging Face's static cache do), greedy
argmax on the GPU, and the whole decode step replayed from one CUDA graph; optionally compiled
with torch.compile first (Inductor fuses the norms, RoPE and SiLU). Every sequence of the batch
decodes from position 0 to --context, as cuda_e2e_bench --min-context C --max-context C does.

  python3 bench/cuda/torch_e2e_peer.py --batch 64 --context 1536 [--compile] --json peer.json
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

HIDDEN, LAYERS, HEADS, HEAD_DIM, INTER, VOCAB, EPS = 4096, 32, 32, 128, 11008, 32000, 1e-5


def rms_norm(x, w):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS) * w).to(x.dtype)


def rotate(x, cos, sin):  # x [b, h, 1, d]; rotate-half RoPE
    x1, x2 = x[..., : HEAD_DIM // 2], x[..., HEAD_DIM // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Peer:
    def __init__(self, batch, context, device):
        g = torch.Generator(device=device).manual_seed(1)

        def weight(*shape):
            return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * 0.02
                    ).to(torch.bfloat16)
        self.embed = weight(VOCAB, HIDDEN)
        self.layers = [dict(attn_norm=torch.ones(HIDDEN, device=device),
                            wqkv=weight(3 * HIDDEN, HIDDEN), wo=weight(HIDDEN, HIDDEN),
                            ffn_norm=torch.ones(HIDDEN, device=device),
                            w_gate_up=weight(2 * INTER, HIDDEN), w_down=weight(HIDDEN, INTER))
                       for _ in range(LAYERS)]
        self.final_norm = torch.ones(HIDDEN, device=device)
        self.lm_head = weight(VOCAB, HIDDEN)
        shape = (LAYERS, batch, HEADS, context, HEAD_DIM)
        self.k_cache = torch.zeros(shape, device=device, dtype=torch.bfloat16)
        self.v_cache = torch.zeros(shape, device=device, dtype=torch.bfloat16)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, device=device).float() / HEAD_DIM))
        angles = torch.arange(context, device=device).float()[:, None] * inv_freq[None, :]
        self.cos, self.sin = angles.cos(), angles.sin()  # [ctx, head_dim / 2]
        self.positions_all = torch.arange(context, device=device)

    def step(self, tokens, pos):
        """tokens [b] int64, pos [1] int64 (every row at the same position): next tokens [b]."""
        b = tokens.shape[0]
        x = self.embed[tokens][:, None, :]  # [b, 1, H]
        cos = self.cos[pos][:, None, :].to(torch.bfloat16)
        sin = self.sin[pos][:, None, :].to(torch.bfloat16)
        mask = (self.positions_all <= pos)[None, None, None, :]  # [1, 1, 1, ctx]
        for i, w in enumerate(self.layers):
            h = rms_norm(x, w["attn_norm"])
            q, k, v = (h @ w["wqkv"].t()).view(b, 1, 3, HEADS, HEAD_DIM).unbind(2)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, 1, d]
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            self.k_cache[i].index_copy_(2, pos, k)
            self.v_cache[i].index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask)
            x = x + o.transpose(1, 2).reshape(b, 1, HIDDEN) @ w["wo"].t()
            gate, up = (rms_norm(x, w["ffn_norm"]) @ w["w_gate_up"].t()).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ w["w_down"].t()
        logits = rms_norm(x, self.final_norm)[:, 0, :] @ self.lm_head.t()
        return logits.float().argmax(-1)


def run(batch, context, compile_model, warm_steps=8):
    device = torch.device("cuda")
    peer = Peer(batch, context, device)
    step = torch.compile(peer.step, mode="default") if compile_model else peer.step
    tokens = torch.zeros(batch, dtype=torch.long, device=device)
    pos = torch.zeros(1, dtype=torch.long, device=device)
    started = time.time()
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                out = step(tokens, pos)  # warm-up (and compilation)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step(tokens, pos)
        setup_s = time.time() - started
        # Decode positions 0 .. context-1; the first warm_steps are not timed.
        step_ms, begin, end = [], torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        wall = time.time()
        for p in range(context):
            pos.fill_(p)
            if p == warm_steps:
                torch.cuda.synchronize()
                wall = time.time()
            if p % 64 == 0:
                begin.record()
            graph.replay()
            tokens.copy_(out)
            if p % 64 == 0:
                end.record()
                end.synchronize()
                step_ms.append(begin.elapsed_time(end))
        torch.cuda.synchronize()
        wall = time.time() - wall
    timed = context - warm_steps
    weight_bytes = 2.0 * (LAYERS * HIDDEN * (3 * HIDDEN + HIDDEN + 3 * INTER) + 2 * VOCAB * HIDDEN)
    return {"batch": batch, "context": context, "compiled": compile_model, "setup_s": setup_s,
            "tokens_per_second": batch * timed / wall, "mean_step_ms": 1e3 * wall / timed,
            "sampled_step_ms": step_ms, "weight_bytes": weight_bytes,
            "torch": torch.__version__, "device": torch.cuda.get_device_name()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=1536)
    parser.add_argument("--compile", action="store_true", help="torch.compile the step first")
    parser.add_argument("--json", default="torch_peer.json")
    args = parser.parse_args()
    results = []
    for batch in args.batch:
        r = run(batch, args.context, args.compile)
        results.append(r)
        print(f"torch peer batch {batch} context {args.context} compiled={args.compile}: "
              f"{r['tokens_per_second']:.0f} tok/s, {r['mean_step_ms']:.3f} ms a step "
              f"(setup {r['setup_s']:.1f} s)", flush=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
