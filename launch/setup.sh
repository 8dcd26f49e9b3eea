#!/usr/bin/env bash
# setup.sh -- installs what cpattn needs on a Debian/Ubuntu machine and builds it into build/.
#
# Needs root or sudo for apt-get. The CUDA executor is built when nvcc, cuDNN and NCCL are
# found (set CUDNN_ROOT / NCCL_ROOT to point at other copies); otherwise the host-only
# library, the driver and every CPU test are built.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake make gcc g++ pkg-config \
    openmpi-bin libopenmpi-dev libcmocka-dev >/dev/null
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CPATTN_CMAKE_ARGS:-}
cmake --build build -j "$(nproc)"
