// Kernel micro-benchmarks: distance kernels per SIMD level and dimension,
// exact (flat) batch search, and an ivf batch search scanned in float32 or bf16. Build with -DSPARKNN_BUILD_BENCH=ON and run
// build/.../cpp/bench/sparknn_bench_kernels.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "sparknn/distance.h"
#include "sparknn/flat.h"
#include "sparknn/ivf.h"
#include "sparknn/topk.h"

namespace {

std::vector<float> random_floats(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
}

// False (the benchmark skipped) when this CPU lacks the level.
bool runs_at(benchmark::State& state, sparknn::SimdLevel level) {
    if (static_cast<int>(level) <= static_cast<int>(sparknn::cpu_simd_level())) return true;
    state.SkipWithError("CPU lacks this SIMD level");
    return false;
}

constexpr size_t kRows = 1024;  // rows per iteration of the distance benchmarks

void BM_Distance(benchmark::State& state, sparknn::SimdLevel level, bool l2) {
    if (!runs_at(state, level)) return;
    const size_t dim = static_cast<size_t>(state.range(0)), rows = kRows;
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

// Four rows per call (a graph search's batch of neighbours), over the same 1024 rows.
void BM_DistanceX4(benchmark::State& state, sparknn::SimdLevel level, bool l2) {
    if (!runs_at(state, level)) return;
    const size_t dim = static_cast<size_t>(state.range(0)), rows = kRows;
    const auto a = random_floats(dim, 1);
    const auto base = random_floats(rows * dim, 2);
    const sparknn::DistanceKernels& k = sparknn::kernels_for(level);
    const sparknn::DistanceX4Fn fn = l2 ? k.l2sq_x4 : k.dot_x4;
    float out[4];
    for (auto _ : state) {
        for (size_t r = 0; r < rows; r += 4) {
            const float* b[4] = {&base[r * dim], &base[(r + 1) * dim], &base[(r + 2) * dim], &base[(r + 3) * dim]};
            fn(a.data(), b, dim, out);
            benchmark::DoNotOptimize(out);
        }
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * rows));
}

// A float32 query against 16-bit rows (fp16 or bf16), one row or four per call.
void BM_Half(benchmark::State& state, sparknn::SimdLevel level, bool bf16, bool l2, bool x4) {
    if (!runs_at(state, level)) return;
    const size_t dim = static_cast<size_t>(state.range(0)), rows = kRows;
    const auto a = random_floats(dim, 1);
    const auto floats = random_floats(rows * dim, 2);
    const sparknn::HalfKernels& k = bf16 ? sparknn::kernels_for(level).bf16 : sparknn::kernels_for(level).fp16;
    std::vector<uint16_t> base(rows * dim);
    k.encode(floats.data(), floats.size(), base.data());
    const sparknn::HalfDistanceFn one = l2 ? k.l2sq : k.dot;
    const sparknn::HalfX4Fn four = l2 ? k.l2sq_x4 : k.dot_x4;
    float out[4];
    for (auto _ : state) {
        for (size_t r = 0; r < rows; r += 4) {
            if (x4) {
                const uint16_t* b[4] = {&base[r * dim], &base[(r + 1) * dim], &base[(r + 2) * dim],
                                        &base[(r + 3) * dim]};
                four(a.data(), b, dim, out);
            } else {
                for (int t = 0; t < 4; ++t) out[t] = one(a.data(), &base[(r + t) * dim], dim);
            }
            benchmark::DoNotOptimize(out);
        }
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * rows));
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

// A batch of the items' own queries (a self-join's) through an ivf index of
// float32 lists, one thread: rerank 0 scans in float32 (sgemm), rerank 2 in bf16
// (AVX512_BF16, else float32) and re-ranks 2k candidates exactly.
void BM_IvfBatch(benchmark::State& state, size_t rerank) {
    const size_t dim = static_cast<size_t>(state.range(0)), n = 50000, nq = 8192, k = 10, centres = 224;
    std::mt19937_64 rng(5);
    std::normal_distribution<float> normal;
    std::vector<float> base(n * dim), centre(centres * dim);
    for (float& x : centre) x = normal(rng);
    for (size_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < dim; ++j) base[i * dim + j] = centre[(i % centres) * dim + j] + 0.5f * normal(rng);
    }
    sparknn::IvfParams params;
    params.nlist = centres;
    params.nprobe = 8;
    params.rerank = rerank;
    sparknn::IvfIndex index(dim, sparknn::Metric::L2, params);
    index.set_threads(1);
    index.add(n, base.data(), nullptr);
    std::vector<int64_t> ids(nq * k);
    std::vector<float> dist(nq * k);
    for (auto _ : state) index.search(nq, base.data(), k, ids.data(), dist.data());
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * nq));
}

}  // namespace

BENCHMARK_CAPTURE(BM_Distance, l2_scalar, sparknn::SimdLevel::Scalar, true)->Arg(128)->Arg(768);
BENCHMARK_CAPTURE(BM_Distance, l2_avx2, sparknn::SimdLevel::Avx2, true)->Arg(128)->Arg(768);
BENCHMARK_CAPTURE(BM_Distance, l2_avx512, sparknn::SimdLevel::Avx512, true)->Arg(128)->Arg(768);
// Selections as a scan feeds them: rows of 512 distances pushed into one TopK per query, the
// threshold rejecting most once it is tight; ids given for ties, as the indexes give them.
void BM_TopK(benchmark::State& state) {
    const size_t k = static_cast<size_t>(state.range(0)), queries = 64, cols = 512, rows_per_query = 8;
    const std::vector<float> d = random_floats(queries * rows_per_query * cols, 3);
    std::vector<int64_t> ids(cols * rows_per_query);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i * 7 % ids.size());
    std::vector<sparknn::TopK> heaps(queries);
    std::vector<int64_t> out_ids(k);
    std::vector<float> out_d(k);
    for (auto _ : state) {
        for (size_t q = 0; q < queries; ++q) {
            sparknn::TopK& h = heaps[q];
            h.reset(k);
            h.order_ties_by(ids.data());
            const float* row = d.data() + q * rows_per_query * cols;
            for (size_t j = 0; j < rows_per_query * cols; ++j) h.push(row[j], static_cast<int64_t>(j));
            h.write_sorted(out_ids.data(), out_d.data(), [](int64_t label) { return label; });
        }
        benchmark::DoNotOptimize(out_ids.data());
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * queries * rows_per_query * cols));
}

BENCHMARK_CAPTURE(BM_Distance, dot_scalar, sparknn::SimdLevel::Scalar, false)->Arg(128)->Arg(768);
BENCHMARK_CAPTURE(BM_Distance, dot_avx2, sparknn::SimdLevel::Avx2, false)->Arg(128)->Arg(768);
BENCHMARK_CAPTURE(BM_Distance, dot_avx512, sparknn::SimdLevel::Avx512, false)->Arg(128)->Arg(768);
// 100: a tail after the full steps (4 values at both widths).
BENCHMARK_CAPTURE(BM_DistanceX4, l2_avx2, sparknn::SimdLevel::Avx2, true)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_DistanceX4, l2_avx512, sparknn::SimdLevel::Avx512, true)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_DistanceX4, dot_avx2, sparknn::SimdLevel::Avx2, false)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_DistanceX4, dot_avx512, sparknn::SimdLevel::Avx512, false)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_Half, fp16_l2_avx2, sparknn::SimdLevel::Avx2, false, true, false)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_Half, fp16_l2_avx512, sparknn::SimdLevel::Avx512, false, true, false)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_Half, fp16_dot_avx512, sparknn::SimdLevel::Avx512, false, false, false)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_Half, fp16_l2_x4_avx2, sparknn::SimdLevel::Avx2, false, true, true)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_Half, fp16_l2_x4_avx512, sparknn::SimdLevel::Avx512, false, true, true)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_Half, fp16_dot_x4_avx512, sparknn::SimdLevel::Avx512, false, false, true)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_Half, bf16_l2_avx512, sparknn::SimdLevel::Avx512, true, true, false)->Arg(100)->Arg(768);
BENCHMARK_CAPTURE(BM_Half, bf16_l2_x4_avx512, sparknn::SimdLevel::Avx512, true, true, true)->Arg(100)->Arg(768);
BENCHMARK(BM_TopK)->Arg(11)->Arg(44)->Arg(1024);
BENCHMARK(BM_FlatSearch)->Args({200000, 1})->Args({200000, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_IvfBatch, float32, 0)->Arg(128)->Arg(768)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_IvfBatch, bf16_rerank2, 2)->Arg(128)->Arg(768)->Unit(benchmark::kMillisecond)->UseRealTime();
