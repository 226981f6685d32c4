"""A trainer checkpoint in pieces small enough to come back from (and travel to) a lent GPU
machine, and back: the weights stay float32, the optimizer's moments go bfloat16 (a resumed run
is then not bit-exact, but close), the bytes are cut into files of at most --part-mib MiB.

    python3 tools/checkpoint_parts.py split runs/range/checkpoint.pt OUTDIR   # OUTDIR/ckpt.partNN
    python3 tools/checkpoint_parts.py join OUTDIR runs/range/checkpoint.pt
"""
import argparse
import glob
import io
import os

import torch


def _moments(ckpt: dict, dtype: torch.dtype) -> None:
    for state in ckpt["optimizer"]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key] = state[key].to(dtype)


def split(path: str, out_dir: str, part_mib: float) -> list:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    _moments(ckpt, torch.bfloat16)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    data, size = buffer.getvalue(), int(part_mib * 2 ** 20)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(0, len(data), size):
        paths.append(os.path.join(out_dir, f"ckpt.part{i // size:02d}"))
        with open(paths[-1], "wb") as f:
            f.write(data[i:i + size])
    return paths


def join(parts_dir: str, path: str) -> None:
    data = b"".join(open(p, "rb").read()
                    for p in sorted(glob.glob(os.path.join(parts_dir, "ckpt.part*"))))
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    _moments(ckpt, torch.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(ckpt, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["split", "join"])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--part-mib", type=float, default=15)
    args = p.parse_args()
    if args.action == "split":
        print("\n".join(split(args.src, args.dst, args.part_mib)))
    else:
        join(args.src, args.dst)


if __name__ == "__main__":
    main()
