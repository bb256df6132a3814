#!/usr/bin/env bash
# Runs every test: the C++ suite (ctest) in Release and under ASan+UBSan, a
# bounded fuzz run of the index file loader, and the Python suite (pytest),
# which includes real local Spark and a loopback standalone cluster.
# Prerequisites: see .ci/run (which installs them and then runs this script).
set -euo pipefail
cd "$(dirname "$0")"
jobs=$(nproc)

echo "== C++ tests (Release)"
cmake -S . -B build/test-release -DCMAKE_BUILD_TYPE=Release -DSPARKNN_BUILD_TESTS=ON >/dev/null
cmake --build build/test-release -j"$jobs"
ctest --test-dir build/test-release --output-on-failure -j"$jobs"

echo "== find_package(sparknn) from an installed tree"
prefix=$(mktemp -d)
cmake -S . -B build/install-check -DSPARKNN_BUILD_TESTS=OFF -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
cmake --build build/install-check -j"$jobs" >/dev/null
cmake --install build/install-check >/dev/null
cmake -S cpp/tests/find_package -B build/find-package-consumer -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build build/find-package-consumer >/dev/null
build/find-package-consumer/consumer
rm -rf "$prefix"

echo "== C++ tests (AddressSanitizer + UndefinedBehaviorSanitizer)"
cmake -S . -B build/test-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPARKNN_BUILD_TESTS=ON \
  -DSPARKNN_SANITIZE=address,undefined >/dev/null
cmake --build build/test-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/test-asan --output-on-failure -j"$jobs"

echo "== Python tests"
export SPARK_LOCAL_IP=127.0.0.1
python3 -m pytest -q python/tests
