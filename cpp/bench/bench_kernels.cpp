// Kernel micro-benchmarks: distance kernels per SIMD level and dimension, and
// exact (flat) batch search. Build with -DSPARKNN_BUILD_BENCH=ON and run
// build/.../cpp/bench/sparknn_bench_kernels.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "sparknn/distance.h"
#include "sparknn/flat.h"

namespace {

std::vector<float> random_floats(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
}

void BM_Distance(benchmark::State& state, sparknn::SimdLevel level, bool l2) {
    if (static_cast<int>(level) > static_cast<int>(sparknn::cpu_simd_level())) {
        state.SkipWithError("CPU lacks this SIMD level");
        return;
    }
    const size_t dim = static_cast<size_t>(state.range(0));
    const size_t rows = 1024;
    const auto a = random_floats(dim, 1);
    const auto base = random_floats(rows * dim, 2);
    const sparknn::DistanceKernels& k = sparknn::kernels_for(level);
    const sparknn::DistanceFn fn = l2 ? k.l2sq : k.dot;
    for (auto _ : state) {
        float acc = 0;
        for (size_t r = 0; r < rows; ++r) acc += fn(a.data(), base.data() + r * dim, dim);
        benchmark::DoNotOptimize(acc);
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * rows));
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * rows * dim * sizeof(float)));
}

void BM_FlatSearch(benchmark::State& state) {
    const size_t n = static_cast<size_t>(state.range(0)), dim = 128, nq = 1000, k = 10;
    const auto base = random_floats(n * dim, 3);
    const auto queries = random_floats(nq * dim, 4);
    sparknn::FlatIndex index(dim, sparknn::Metric::L2);
    index.set_threads(static_cast<int>(state.range(1)));
    index.add(n, base.data(), nullptr);
    std::vector<int64_t> ids(nq * k);
    std::vector<float> dist(nq * k);
    for (auto _ : state) index.search(nq, queries.data(), k, ids.data(), dist.data());
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * nq));
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * dim * nq * state.iterations(),
                                                   benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

}  // namespace

BENCHMARK_CAPTURE(BM_Distance, l2_scalar, sparknn::SimdLevel::Scalar, true)->Arg(128)->Arg(768);
BENCHMARK_CAPTURE(BM_Distance, l2_avx2, sparknn::SimdLevel::Avx2, true)->Arg(128)->Arg(768);
BENCHMARK_CAPTURE(BM_Distance, l2_avx512, sparknn::SimdLevel::Avx512, true)->Arg(128)->Arg(768);
BENCHMARK_CAPTURE(BM_Distance, dot_scalar, sparknn::SimdLevel::Scalar, false)->Arg(128)->Arg(768);
BENCHMARK_CAPTURE(BM_Distance, dot_avx2, sparknn::SimdLevel::Avx2, false)->Arg(128)->Arg(768);
BENCHMARK_CAPTURE(BM_Distance, dot_avx512, sparknn::SimdLevel::Avx512, false)->Arg(128)->Arg(768);
BENCHMARK(BM_FlatSearch)->Args({200000, 1})->Args({200000, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
