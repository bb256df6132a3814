#include "blas.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "sparknn/parallel.h"

#if defined(SPARKNN_OPENBLAS_SET_THREADS)
extern "C" void SPARKNN_OPENBLAS_SET_THREADS(int);
#endif

namespace sparknn {

void gemm_abt(int m, int n, int dim, const float* a, const float* b, float* c) {
    // Row-major C (m x n) is column-major C^T (n x m) = B (n x dim) * A^T.
    const char trans = 'T', notrans = 'N';
    const float one = 1.0f, zero = 0.0f;
    SPARKNN_BLAS(sgemm_)(&trans, &notrans, &n, &m, &dim, &one, b, &dim, a, &dim, &zero, c, &n);
}

void gemm_atb(int m, int n, int k, const float* a, const float* b, int ld, float* c, int ldc) {
    // Row-major C (m x n) is column-major C^T (n x m) = B^T A, where row-major B [k, n] is
    // column-major B^T (n x k) and row-major A [k, m] column-major A^T (m x k).
    const char trans = 'T', notrans = 'N';
    const float one = 1.0f, zero = 0.0f;
    SPARKNN_BLAS(sgemm_)(&notrans, &trans, &n, &m, &k, &one, b, &ld, a, &ld, &zero, c, &ldc);
}

void gemm_ab_subtract(int m, int n, int k, const float* a, const float* b, float* c) {
    // Row-major C (m x n) is column-major C^T (n x m); C^T -= B^T A^T, row-major B and A being
    // column-major B^T (n x k) and A^T (k x m).
    const char notrans = 'N';
    const float minus_one = -1.0f, one = 1.0f;
    SPARKNN_BLAS(sgemm_)(&notrans, &notrans, &n, &m, &k, &minus_one, b, &n, a, &k, &one, c, &n);
}

void gemm_abt_rows(size_t m, size_t n, size_t dim, const float* a, const float* b, float* c, int threads,
                   size_t block) {
    parallel_for(m, block, threads, [&](size_t lo, size_t hi, int) {
        gemm_abt(static_cast<int>(hi - lo), static_cast<int>(n), static_cast<int>(dim), a + lo * dim, b, c + lo * n);
    });
}

namespace {

// OpenBLAS 0.3.x (its Haswell kernels, on an AMD EPYC Zen 1) ran sgemm with fewer than about
// 330 columns at a third of its speed on a work buffer that had not yet served a call with more
// columns, and at full speed from then on (bench/README.md). Each call takes a buffer of its own
// from a table the process keeps, so one 512-column call per core, all at once, warms the
// buffers that concurrent callers take. (An OpenBLAS built with per-thread buffers gains
// nothing from this, and loses nothing.)
void warm_up_buffers() {
    constexpr int kRows = 256, kCols = 512, kDepth = 128;
    std::atomic<bool> go{false};
    auto warm = [&go]() noexcept {
        try {  // only speed is at stake: a warm-up that cannot allocate is skipped
            std::vector<float> a(size_t{kRows} * kDepth, 1.0f), b(size_t{kCols} * kDepth, 1.0f);
            std::vector<float> c(size_t{kRows} * kCols);
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();  // the calls overlap
            gemm_abt(kRows, kCols, kDepth, a.data(), b.data(), c.data());
        } catch (const std::bad_alloc&) {
        }
    };
    const int cores = std::max(1, available_cores());
    std::vector<std::thread> pool;
    try {
        pool.reserve(static_cast<size_t>(cores - 1));
        for (int t = 1; t < cores; ++t) pool.emplace_back(warm);
    } catch (...) {  // no thread (or memory) to spare: the threads started warm up
    }
    go.store(true, std::memory_order_release);
    warm();
    for (std::thread& t : pool) t.join();
}

}  // namespace

void prepare_blas() {
    static std::once_flag once;
    std::call_once(once, [] {
#if defined(SPARKNN_OPENBLAS_SET_THREADS)
        SPARKNN_OPENBLAS_SET_THREADS(1);
#endif
        warm_up_buffers();
    });
}

}  // namespace sparknn
