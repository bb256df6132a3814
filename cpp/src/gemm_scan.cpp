#include "gemm_scan.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "blas.h"

namespace sparknn {
namespace {

// Turns a row of inner products into distances, in place (vectorised loops).
void to_distances_l2(float* row, size_t cols, float qnorm, const float* xnorm) {
    // |q-x|^2 = |q|^2 + |x|^2 - 2 q.x; rounding can dip below zero: clamp
    for (size_t j = 0; j < cols; ++j) row[j] = std::max(qnorm + xnorm[j] - 2.0f * row[j], 0.0f);
}

void to_distances_dot(float* row, size_t cols, float offset) {
    for (size_t j = 0; j < cols; ++j) row[j] = offset - row[j];
}

// Bit t set when row[t] <= threshold, for row[0..16). SSE2 is part of x86-64,
// so this needs no dispatch; elsewhere the loop is left to the compiler.
uint32_t at_most_mask16(const float* row, float threshold) {
#if defined(__SSE2__)
    const __m128 t = _mm_set1_ps(threshold);
    uint32_t mask = 0;
    for (int i = 0; i < 4; ++i) {
        mask |= static_cast<uint32_t>(_mm_movemask_ps(_mm_cmple_ps(_mm_loadu_ps(row + 4 * i), t))) << (4 * i);
    }
    return mask;
#else
    uint32_t mask = 0;
    for (uint32_t i = 0; i < 16; ++i) mask |= static_cast<uint32_t>(row[i] <= threshold) << i;
    return mask;
#endif
}

// A selection that cannot reject anything yet (fewer than k kept: a query's
// first tile or list) would take every entry of the row and cut again and
// again. The minima of 2k or more disjoint groups of the row are k distinct
// entries at most their k-th smallest, so that value bounds what can still
// enter; it costs one pass and a selection over a few floats, and leaves about
// 2-3k entries to push instead of all.
void bound_by_row(TopK& heap, const float* row, size_t cols) {
    const size_t k = heap.k();
    if (k < 2 || cols < 4 * k || heap.threshold() != std::numeric_limits<float>::infinity()) return;
    constexpr size_t kMaxGroups = 256;
    const size_t width = std::max<size_t>(cols / (2 * k), (cols + kMaxGroups - 1) / kMaxGroups);
    const size_t groups = cols / width;  // the tail beyond is not needed for a bound
    if (groups < k) return;
    float minima[kMaxGroups];
    for (size_t g = 0; g < groups; ++g) {
        float m = std::numeric_limits<float>::infinity();
        for (size_t j = g * width; j < (g + 1) * width; ++j) m = row[j] < m ? row[j] : m;  // NaN is skipped
        minima[g] = m;
    }
    std::nth_element(minima, minima + (k - 1), minima + groups);
    heap.limit(minima[k - 1]);
}

}  // namespace

// Once the threshold is tight most entries are rejected, so 16 are compared at
// once and only the survivors are looked at alone.
void select_row(TopK& heap, const float* row, size_t cols, const int64_t* labels, int64_t first_label) {
    bound_by_row(heap, row, cols);
    float worst = heap.threshold();
    auto take = [&](size_t j) {
        heap.push(row[j], labels != nullptr ? labels[j] : first_label + static_cast<int64_t>(j));
        worst = heap.threshold();
    };
    size_t j = 0;
    for (; j + 16 <= cols; j += 16) {
        for (uint32_t mask = at_most_mask16(row + j, worst); mask != 0; mask &= mask - 1) {
            const size_t t = j + static_cast<size_t>(__builtin_ctz(mask));
            if (row[t] <= worst) take(t);
        }
    }
    for (; j < cols; ++j) {
        if (row[j] <= worst) take(j);
    }
}

GemmScanner::GemmScanner(Metric metric, size_t dim)
    : metric_(metric), dim_(dim), tile_(kScanQueryBlock * kScanBaseBlock) {
    blas_use_one_thread();
}

void GemmScanner::scan(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm,
                       size_t nb, const int64_t* labels, int64_t first_label, TopK* heaps) {
    scan_impl(queries, qnorm, m, base, bnorm, nb, labels, first_label, [heaps](size_t i) -> TopK& { return heaps[i]; });
}

void GemmScanner::scan(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm,
                       size_t nb, const int64_t* labels, int64_t first_label, TopK* const* heaps) {
    scan_impl(queries, qnorm, m, base, bnorm, nb, labels, first_label, [heaps](size_t i) -> TopK& { return *heaps[i]; });
}

template <class HeapAt>
void GemmScanner::scan_impl(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm,
                            size_t nb, const int64_t* labels, int64_t first_label, HeapAt&& heap_at) {
    for (size_t c0 = 0; c0 < nb; c0 += kScanBaseBlock) {
        const size_t cols = std::min(nb - c0, kScanBaseBlock);
        gemm_abt(static_cast<int>(m), static_cast<int>(cols), static_cast<int>(dim_), queries, base + c0 * dim_,
                 tile_.data());
        for (size_t i = 0; i < m; ++i) {
            float* row = tile_.data() + i * cols;
            if (metric_ == Metric::L2) {
                to_distances_l2(row, cols, qnorm[i], bnorm + c0);
            } else {
                to_distances_dot(row, cols, metric_ == Metric::Cosine ? 1.0f : 0.0f);
            }
            select_row(heap_at(i), row, cols, labels != nullptr ? labels + c0 : nullptr,
                        first_label + static_cast<int64_t>(c0));
        }
    }
}

void squared_norms(const float* x, size_t n, size_t dim, float* out) {
    const DistanceKernels& k = kernels();
    for (size_t i = 0; i < n; ++i) out[i] = k.dot(x + i * dim, x + i * dim, dim);
}

}  // namespace sparknn
