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

echo "== Fuzzing the index file loader (libFuzzer, bounded)"
# A clang build of the library with ASan+UBSan and coverage; the golden
# fixtures are the seed corpus. Any crash, sanitizer report or leak fails here.
cmake -S . -B build/fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSPARKNN_BUILD_TESTS=OFF -DSPARKNN_SANITIZE=address,undefined -DSPARKNN_BUILD_FUZZ=ON >/dev/null
cmake --build build/fuzz -j"$jobs" --target sparknn_fuzz_load
mkdir -p build/fuzz/corpus build/fuzz/artifacts
build/fuzz/cpp/fuzz/sparknn_fuzz_load -max_total_time="${SPARKNN_FUZZ_SECONDS:-60}" -rss_limit_mb=2048 \
  -timeout=10 -print_final_stats=1 -artifact_prefix=build/fuzz/artifacts/ \
  build/fuzz/corpus cpp/tests/data

echo "== Python tests"
export SPARK_LOCAL_IP=127.0.0.1
python3 -m pytest -q python/tests

echo "== Spark and CLI tests again on pyspark 3.5"
# The Spark layer supports 3.5 and 4.x. A venv that sees this environment's packages (sparknn
# as installed above, numpy, pyarrow, pandas) with pyspark 3.5 in front of pyspark 4. PySpark
# 3.5 raises deprecation and unclosed-socket warnings of its own, which the suite otherwise
# turns into errors: hence -W ignore and no unraisable-exception plugin.
venv=build/venv-spark35
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "pyspark>=3.5,<3.6"
"$venv/bin/python" -m pytest -q -W ignore -p no:unraisableexception python/tests/test_spark.py \
  python/tests/test_spark_direct_read.py python/tests/test_spark_ivf.py python/tests/test_spark_cluster.py \
  python/tests/test_cli.py
