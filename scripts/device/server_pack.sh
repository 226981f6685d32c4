#!/usr/bin/env bash
# Builds the server on this machine and packs it for the GPU machine: spanserve, its
# SentencePiece module and the Python gRPC stubs, with the shared libraries the GPU machine
# lacks (../shared/device/pack.sh), into .devcarry/devpack.tar.xz (ignored by git; ~25 MB).
# Carry .devcarry; scripts/device/summ_serve_bench.sh unpacks it there.
#   scripts/device/server_pack.sh          (BUILD_DIR=build-devpack, linked to the reference BLAS)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build-devpack}
shared=${SHARED_DIR:-../shared}
# The reference BLAS, not OpenBLAS: the GPU machine's server never runs the CPU path, and
# OpenBLAS is 36 MB (4 MB packed) of what must travel beside a model within 64 MiB.
TARGETS="spanserve spanserve_sentencepiece spanserve_python_stubs" BUILD_DIR=$build \
  scripts/build.sh -DSPANSERVE_BLAS_VENDOR=Generic >/dev/null
pack=.devcarry/devpack
rm -rf "$pack"
"$shared/device/pack.sh" "$pack" "$build/server/spanserve" \
  "$build/engine/libspanserve_sentencepiece.so" >/dev/null
# Debian's alternatives point libblas.so.3 at OpenBLAS where both are installed: pack the
# reference implementation under that name.
netlib=/usr/lib/x86_64-linux-gnu/blas/libblas.so.3
if [[ -f $netlib ]]; then
  cp -L "$netlib" "$pack/lib/libblas.so.3"
  # OpenBLAS and its Fortran runtime came in through the alternative; drop what nothing needs.
  for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
    others=$(find "$pack/bin" "$pack/lib" -type f ! -name "$lib" -print0 | xargs -0 -r \
      readelf -d 2>/dev/null | grep -c "NEEDED.*\[$lib\]" || true)
    [[ $others == 0 ]] && rm -f "$pack/lib/$lib"
  done
fi
# The module sits beside the executable, where the server looks for it.
strip --strip-debug "$pack"/bin/* "$pack"/lib/*
cp -r "$build/python" "$pack/python"
find "$pack/python" -name __pycache__ -prune -exec rm -rf {} +
# The server's tests find their data under the source directory compiled into them.
pwd > "$pack/source_dir.txt"
tar -cJf .devcarry/devpack.tar.xz -C .devcarry devpack
du -sh "$pack" .devcarry/devpack.tar.xz
