"""Writes the fuzzers' seed corpora, tests/fuzz/corpus/<target>/: small valid and near-valid
inputs for each parser. The corpora are committed; run this again after changing it:

    /usr/bin/python3 tests/fuzz/make_corpus.py [--build build]

--build names a build folder whose python/ holds the protocol's stubs (fuzz_request's seeds).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def safetensors(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def safetensors_seeds() -> list[bytes]:
    f32 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    bf16 = {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}
    good = {"__metadata__": {"format": "pt"}, "w": f32, "b": bf16}
    data = bytes(range(22))
    return [
        safetensors(good, data),
        safetensors({}, b""),
        safetensors({"h": {"dtype": "F16", "shape": [], "data_offsets": [0, 2]}}, b"\0\0"),
        safetensors({"z": {"dtype": "F32", "shape": [0, 5], "data_offsets": [0, 0]}}),
        safetensors({"w": dict(f32, data_offsets=[0, 32])}, data),        # past the data
        safetensors({"w": dict(f32, dtype="I32")}, data),                 # unsupported dtype
        safetensors({"w": dict(f32, shape=[3, 2])}, data),                # size != shape
        safetensors({"w": dict(f32, shape=[2 ** 47, 2 ** 47])}, data),    # overflowing shape
        safetensors({"w": dict(f32, data_offsets=[16, 0])}, data),        # begin > end
        safetensors(good, data, length=1 << 40),                          # header too long
        safetensors(good, data)[:5],                                      # truncated
        struct.pack("<Q", 2) + b"[]",                                     # not an object
    ]


def model_configs() -> list[bytes]:
    tiny = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 320, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1,
            "eos_token_id": 2, "hidden_act": "silu", "rope_scaling": None}
    llama7b = dict(tiny, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                   max_position_embeddings=4096, torch_dtype="float16")
    transformers5 = {k: v for k, v in tiny.items() if k != "rope_theta"}
    transformers5["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    configs = [tiny, llama7b, transformers5,
               dict(tiny, head_dim=32, eos_token_id=[2, 7], tie_word_embeddings=True),
               dict(tiny, num_key_value_heads=3),
               dict(tiny, hidden_size="64"),
               dict(tiny, rope_scaling={"type": "linear", "factor": 2.0}),
               dict(tiny, vocab_size=2 ** 40),
               dict(tiny, rms_norm_eps=1e300),
               dict(tiny, eos_token_id=[])]
    out = [json.dumps(c, indent=1).encode() for c in configs]
    out.append((REPO / "models/arith-small/config.json").read_bytes())
    return out


def span_configs() -> list[bytes]:
    good = {"span_protocol": 1, "anchor_token": "<a>", "header_end_token": "</a>",
            "prompt_segmentation": "whole", "max_header_tokens": 16}
    configs = [good, {"span_protocol": 1},
               dict(good, prompt_segmentation="sentences"),
               dict(good, prompt_segmentation="paragraphs", max_header_tokens=1),
               dict(good, prompt_segmentation="client", chat_format="chatml"),
               dict(good, header_end_token="<a>"),
               dict(good, span_protocol=2),
               dict(good, anchor_token=""),
               dict(good, colour=1)]
    return [json.dumps(c).encode() for c in configs]


def server_configs() -> list[bytes]:
    out = [(REPO / "deploy/spanserve.yaml").read_bytes()]
    out += [s.encode() for s in [
        "",
        "model:\n  path: models/arith-small\ndevice: cpu\n",
        "kv_cache:\n  block_size: 32\n  num_blocks: 100\n  memory_mb: 64\n"
        "  gpu_memory_fraction: 0.5\n",
        "scheduler: {max_running: 8, max_batched_tokens: 512, max_waiting: 16}\n",
        "limits:\n  max_tokens: 512\n  max_stop_sequences: 2\n  max_stop_length: 8\n",
        "defaults:\n  max_tokens: 0\n  temperature: 0.7\n  top_k: 40\n  top_p: 0.9\n"
        "  span_mode: dense\n",
        "server:\n  bind_address: 127.0.0.1\n  port: 0\n  metrics_port: 0\n"
        "  drain_grace_seconds: 1.5\n",
        "tls:\n  cert_file: a.pem\n  key_file: a.key\n  client_ca_file: ca.pem\n",
        "logging: {level: debug, format: json}\ndebug: {step_delay_ms: 5, load_delay_ms: 0}\n",
        "kv_cache:\n  block_size: 8\n",
        "server:\n  prot: 1\n",
        "defaults:\n  temperature: 1e300\n",
        "scheduler:\n  max_running: 99999999999\n",
        "model: [1, 2]\n",
        "a: &x {b: *x}\n",
        "- {",
    ]]
    return out


def span_token_seeds() -> list[bytes]:
    # fuzz_span_headers: byte 0 max_header_tokens - 1, byte 1 mode | prompt_len << 1, then ids:
    # 0-9 digits, 10 ',', 11 '*', 12 "12", 13 'x', 14 <a>, 15 </a>, 16 <s>, 17 past the pieces.
    A, E, X, S = 14, 15, 13, 16
    chain = [S, A, X, X, X, A, 0, E, X, X, A, 1, E, X, A, 2, 10, 0, E, X]
    return [bytes([7, 5 << 1]) + bytes(chain),
            bytes([7, (5 << 1) | 1]) + bytes(chain),                   # dense mode
            bytes([3, 2 << 1]) + bytes([S, A, A, 11, E, X, A, E, X]),  # star, empty header
            bytes([1, 2 << 1]) + bytes([S, A, A, 1, 2, 3, X]),         # header overflow
            bytes([7, 2 << 1]) + bytes([S, A, A, 12, 10, 0, E, A, 9, E, A, 0, 10, 0, E]),
            bytes([7, 0]) + bytes([A, 17, E, X, A, 0, A]),             # unclosed, unknown id
            b"\x07\x02One. Two! Three?\n\nA new paragraph.) And (x.y) \"q.\" end"]


def request_seeds(build: Path) -> list[bytes]:
    sys.path.insert(0, str(build / "python"))
    from spanserve.v1 import spanserve_pb2 as pb  # noqa: E402
    R = pb.GenerateRequest
    requests = [
        R(prompt="((3+4)*(5-2))+6=", max_tokens=16, seed=1),
        R(prompt="1+2=", seed=2, temperature=0.8, top_p=0.9, top_k=5, return_spans=True),
        R(segments=["The cat sat.", "On the mat."], max_tokens=8, seed=3,
          span_mode=pb.SPAN_MODE_DENSE, include_span_markup=True),
        R(prompt="One. Two! Three? Four.", stop=["x", "yz"], ignore_eos=True, seed=4),
        R(prompt="a <a> b", seed=5),
        R(prompt="", segments=["x", ""], seed=6),
        R(prompt="x", max_tokens=0, seed=7),
        R(prompt="x", max_tokens=400, seed=8),
        R(prompt="x", temperature=float("nan"), seed=9),
        R(prompt="x", top_p=0.0, seed=10),
        R(prompt="x", top_k=-1, seed=11),
        R(prompt="x", stop=[""] * 3, seed=12),
        R(prompt="x" * 600, seed=13),
        R(prompt="go", seed=14),
        # Segment reports asked for: the fuzz check counts the prompt's segments in them.
        R(prompt="go", seed=14, return_spans=True),
        R(prompt="One. Two! Three? Four.", max_tokens=8, seed=16, return_spans=True),
        R(segments=["The cat sat.", "On the mat."], max_tokens=8, seed=17, return_spans=True),
    ]
    out = [r.SerializeToString() for r in requests]
    unknown = R(prompt="x", seed=15)
    out.append(unknown.SerializeToString() + b"\x48\x07")  # span_mode 7
    return out


def openai_seeds() -> list[bytes]:
    # fuzz_openai_request: byte 0 bit 0 chat, bit 1 chatml; the rest is the body.
    completion = {"model": "arith-small", "prompt": "1+2=", "max_tokens": 8, "temperature": 0.5,
                  "top_p": 0.9, "seed": 3, "stop": ["\n"], "stream": True,
                  "stream_options": {"include_usage": True}}
    chat = {"model": "arith-small", "max_completion_tokens": 8,
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "2+2="}]}]}
    bodies = [(0, completion), (0, {"prompt": ["a", "b"]}), (0, dict(completion, n=2)),
              (0, dict(completion, logprobs=1)), (0, dict(completion, max_tokens="8")),
              (0, dict(completion, spanserve={"span_mode": "dense", "segments": ["A.", "B."]})),
              (0, dict(completion, colour=1)), (0, dict(completion, max_tokens=10 ** 9)),
              (1, chat), (3, chat), (1, dict(chat, tools=[])), (1, {"messages": []}),
              (1, {"messages": [{"role": "tool", "content": "x"}]})]
    out = [bytes([flags]) + json.dumps(body).encode() for flags, body in bodies]
    out += [b"\x00[]", b"\x00{\"prompt\": \"\xff\xfe\"}", b"\x01{\"messages\": [{"]
    return out


def write(target: str, seeds: list[bytes]) -> None:
    folder = HERE / "corpus" / target
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    print(f"{target}: {len(seeds)} seeds")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", type=Path, default=REPO / "build")
    args = parser.parse_args()
    write("fuzz_safetensors_header", safetensors_seeds())
    write("fuzz_model_config", model_configs())
    write("fuzz_span_config", span_configs())
    write("fuzz_server_config", server_configs())
    write("fuzz_span_headers", span_token_seeds())
    write("fuzz_request", request_seeds(args.build))
    write("fuzz_openai_request", openai_seeds())


if __name__ == "__main__":
    main()
