#!/usr/bin/env bash
# Installs everything spanserve needs to build, test and run on Debian 12 (CI starts clean).
# Safe to run again. Uses sudo when not root.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
packages=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates curl
  clang libclang-rt-14-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev libyaml-cpp-dev libsentencepiece-dev sentencepiece
  libopenblas-dev libblas-dev libspdlog-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
  libssl-dev openssl libpcre2-dev libicu-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  prometheus
  python3 python3-torch python3-numpy python3-grpcio python3-protobuf
  python3-sentencepiece python3-pytest python3-matplotlib
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "all packages present"
fi
