#!/usr/bin/env bash
# Builds the server on this machine and packs it for the GPU machine: spanserve, its
# SentencePiece module and the Python gRPC stubs, with the shared libraries the GPU machine
# lacks (../shared/device/pack.sh), into .devcarry/devpack.tar.xz (ignored by git; ~25 MB).
# Carry .devcarry; scripts/device/summ_serve_bench.sh unpacks it there.
#   scripts/device/server_pack.sh          (BUILD_DIR=build)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build}
shared=${SHARED_DIR:-../shared}
TARGETS="spanserve spanserve_sentencepiece spanserve_python_stubs" BUILD_DIR=$build \
  scripts/build.sh >/dev/null
pack=.devcarry/devpack
rm -rf "$pack"
"$shared/device/pack.sh" "$pack" "$build/server/spanserve" \
  "$build/engine/libspanserve_sentencepiece.so" >/dev/null
# The module sits beside the executable, where the server looks for it.
strip --strip-debug "$pack"/bin/* "$pack"/lib/*
cp -r "$build/python" "$pack/python"
find "$pack/python" -name __pycache__ -prune -exec rm -rf {} +
# The server's tests find their data under the source directory compiled into them.
pwd > "$pack/source_dir.txt"
tar -cJf .devcarry/devpack.tar.xz -C .devcarry devpack
du -sh "$pack" .devcarry/devpack.tar.xz
