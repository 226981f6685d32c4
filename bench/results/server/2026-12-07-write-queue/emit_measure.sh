#!/bin/bash
# $1: spanserve binary, $2: label
cd /work/main
($1 --config /tmp/emit.yaml --port 50061 --metrics-port 9161 > /tmp/emit_server.log 2>&1 &); for i in $(seq 40); do grep -q serving /tmp/emit_server.log && break; sleep 0.25; done
m() { curl -s localhost:9161/metrics | grep -E '^spanserve_engine_loop_seconds_total|^spanserve_generated_tokens_total' ; }
m > /tmp/m0
SPANSERVE_BUILD_DIR=build timeout 300 /usr/bin/python3 bench/serve_bench.py --port 50061 --dataset arith --num-prompts 256 --concurrency 64 --max-tokens 128 --ignore-eos --span-modes self_selected --warmup 0 --progress-interval 0 --client-processes 2 --out /tmp/emit_$2.json 2>&1 | tail -1
m > /tmp/m1; paste /tmp/m0 /tmp/m1 | awk -v l=$2 '{printf "%s %s %.4f\n", l, $1, $4-$2}'; pkill -f "config /tmp/emit.yaml"; while pgrep -f "config /tmp/emit.yaml" >/dev/null; do sleep 0.3; done
