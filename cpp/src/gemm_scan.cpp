#include "gemm_scan.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(SPARKNN_TILE_BF16)
#include <cpuid.h>
#endif

#include "blas.h"
#include "sparknn/error.h"
#include "tile_bf16.h"
#include "tile_f32.h"

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

// The same with a term per column (row[j] + column[j] is the inner product).
void to_distances_dot(float* row, size_t cols, float offset, const float* column) {
    for (size_t j = 0; j < cols; ++j) row[j] = offset - column[j] - row[j];
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
// 2-3k entries to push instead of all. The groups are strided (group g: the
// entries g, g + G, g + 2G, ...), so the pass is an element-wise minimum of the
// row's consecutive G-wide slices: vector minima, no dependent chain of scalar
// ones; the minima's selection is TopK's branchless one (with the contiguous groups'
// scalar loop and std::nth_element this was 5% of a Fashion-MNIST self-join).
void bound_by_row(TopK& heap, const float* row, size_t cols) {
    const size_t k = heap.k();
    if (k < 2 || cols < 4 * k || heap.threshold() != std::numeric_limits<float>::infinity()) return;
    constexpr size_t kMaxGroups = 256;
    const size_t groups = std::min(kMaxGroups, (2 * k + 3) / 4 * 4);  // <= cols; the tail past whole slices is not needed
    if (groups < k) return;
    alignas(16) float minima[kMaxGroups];
    std::fill_n(minima, groups, std::numeric_limits<float>::infinity());
    for (size_t at = 0; at + groups <= cols; at += groups) {
        const float* slice = row + at;
#if defined(__SSE2__)
        for (size_t g = 0; g < groups; g += 4) {  // min_ps(a, m): a < m ? a : m, so a NaN is skipped
            _mm_store_ps(minima + g, _mm_min_ps(_mm_loadu_ps(slice + g), _mm_load_ps(minima + g)));
        }
#else
        for (size_t g = 0; g < groups; ++g) minima[g] = slice[g] < minima[g] ? slice[g] : minima[g];
#endif
    }
    heap.limit(TopK::kth_smallest(minima, groups, k - 1));  // (NaN skipped: none among the minima)
}

}  // namespace

bool bf16_tiles_available() {
#if defined(SPARKNN_TILE_BF16)
    // CPUID leaf 7, sub-leaf 1, EAX bit 5: AVX512_BF16 (clang 14 has no
    // __builtin_cpu_supports name for it).
    static const bool cpu = [] {
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 && (eax & (1u << 5)) != 0;
    }();
    return cpu && simd_level() == SimdLevel::Avx512;
#else
    return false;
#endif
}

bool bf16_tiles_preferred() {
    if (!bf16_tiles_available()) return false;
#if defined(SPARKNN_TILE_BF16)
    static const bool preferred = [] {
        const char* env = std::getenv("SPARKNN_BF16_TILES");
        if (env != nullptr && (std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0)) return env[0] == '1';
        unsigned eax = 0, vendor[3] = {0, 0, 0};
        __get_cpuid(0, &eax, &vendor[0], &vendor[2], &vendor[1]);  // "AuthenticAMD" in ebx, edx, ecx
        char name[13] = {0};
        std::memcpy(name, vendor, 12);
        return std::strcmp(name, "AuthenticAMD") == 0;
    }();
    return preferred;
#else
    return false;
#endif
}

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

GemmScanner::GemmScanner(Metric metric, size_t dim, TileProducts products)
    : metric_(metric), dim_(dim), products_(products) {
    if (products_ == TileProducts::Bf16) {
        SPARKNN_THROW_IF_NOT(bf16_tiles_available(), Unsupported, "bf16 tile products need AVX512_BF16");
        packed_base_.resize(tile_bf16::panel_rows(kScanBaseBlock) * tile_bf16::pairs(dim));
    }
    row_terms_.resize(kScanBaseBlock);
    prepare_blas();
}

void GemmScanner::pack_queries(const float* queries, size_t m, const float* centre) {
#if defined(SPARKNN_TILE_BF16)
    const size_t need = m * tile_bf16::pairs(dim_);
    if (packed_queries_.size() < need) packed_queries_.resize(need);
    tile_bf16::pack_rows(queries, m, dim_, centre, packed_queries_.data());
#endif
}

void GemmScanner::pack_base(const float* base, size_t cols, const float* centre) {
#if defined(SPARKNN_TILE_BF16)
    // L2 takes |x - c|^2, the others c . (x - c) (scan_impl)
    const bool l2 = metric_ == Metric::L2;
    tile_bf16::pack_panels(base, cols, dim_, centre, packed_base_.data(), l2 ? nullptr : row_terms_.data(),
                           l2 ? row_terms_.data() : nullptr);
#endif
}

void GemmScanner::grow_tile(size_t m, size_t nb) {
    const size_t tile_size = std::min(m, kScanQueryBlock) * std::min(nb, kScanBaseBlock);
    if (tile_size > tile_capacity_) {
        tile_.reset(new float[tile_size]);
        tile_capacity_ = tile_size;
    }
}

void GemmScanner::centre_rows(const float* rows, size_t n, const float* centre, std::vector<float>& out,
                              float* terms) const {
    if (out.size() < n * dim_) out.resize(n * dim_);
    const DistanceKernels& kern = kernels();
    for (size_t i = 0; i < n; ++i) {
        const float* x = rows + i * dim_;
        float* r = out.data() + i * dim_;
        for (size_t d = 0; d < dim_; ++d) r[d] = x[d] - centre[d];
        if (terms != nullptr) terms[i] = metric_ == Metric::L2 ? kern.dot(r, r, dim_) : kern.dot(centre, r, dim_);
    }
}

void GemmScanner::products(bool bf16, const float* queries, size_t q0, size_t m, const float* base, size_t cols) {
#if defined(SPARKNN_TILE_BF16)
    if (bf16) {
        const size_t pairs = tile_bf16::pairs(dim_);
        tile_bf16::product(packed_queries_.data() + q0 * pairs, m, packed_base_.data(), cols, pairs, tile_.get(), cols);
        return;
    }
#endif
    gemm_abt(static_cast<int>(m), static_cast<int>(cols), static_cast<int>(dim_), queries + q0 * dim_, base,
             tile_.get());
}

void GemmScanner::scan(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm,
                       size_t nb, const int64_t* labels, int64_t first_label, TopK* heaps, const float* centre) {
    scan_impl(queries, qnorm, m, base, bnorm, nb, labels, first_label, centre,
              [heaps](size_t i) -> TopK& { return heaps[i]; });
}

void GemmScanner::scan(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm,
                       size_t nb, const int64_t* labels, int64_t first_label, TopK* const* heaps,
                       const float* centre) {
    scan_impl(queries, qnorm, m, base, bnorm, nb, labels, first_label, centre,
              [heaps](size_t i) -> TopK& { return *heaps[i]; });
}

// Base blocks outside, query blocks inside: a base block (read from memory,
// and packed for bf16 tiles) is used by every query before the next one.
template <class HeapAt>
void GemmScanner::scan_impl(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm,
                            size_t nb, const int64_t* labels, int64_t first_label, const float* centre,
                            HeapAt&& heap_at) {
    // A few queries do not repay packing the base rows: sgemm reads them as they are.
    const bool bf16 = products_ == TileProducts::Bf16 && m >= kMinBf16Queries;
    const DistanceKernels& kern = kernels();
    const bool l2 = metric_ == Metric::L2;
    if (!bf16 && (centre_float32_ == Centring::Off || (centre_float32_ == Centring::Auto && !l2))) centre = nullptr;
    // With a centre the tile holds (q - c) . (x - c). L2: |q - x|^2 = |q - c|^2 + |x - c|^2
    // - 2 (q - c) . (x - c), every term a residual's (|q|^2 + |x|^2 - 2 q . x of rows far
    // from the origin cancels in float32: at values 1000 +- 1, recall@10 0.28). Inner
    // products: q . c (per query) and c . (x - c) (per row) are added back in float32.
    if (centre != nullptr) {
        query_centre_.resize(m);
        double near = 0;  // sum of |q - c|^2 (L2)
        for (size_t i = 0; i < m; ++i) {
            const float* q = queries + i * dim_;
            query_centre_[i] = l2 ? kern.l2sq(q, centre, dim_) : kern.dot(q, centre, dim_);
            near += query_centre_[i];
        }
        // Auto: float32 takes the centre only when it is far from the origin for these queries
        if (!bf16 && centre_float32_ == Centring::Auto &&
            kern.dot(centre, centre, dim_) <= kCentreWhen * near / static_cast<double>(m)) {
            centre = nullptr;
        }
    }
    const bool centred_float32 = !bf16 && centre != nullptr;
    if (bf16) pack_queries(queries, m, centre);
    if (centred_float32) {  // the products then read the copies less the centre
        centre_rows(queries, m, centre, centred_queries_, nullptr);
        queries = centred_queries_.data();
    }
    grow_tile(m, nb);
    for (size_t c0 = 0; c0 < nb; c0 += kScanBaseBlock) {
        const size_t cols = std::min(nb - c0, kScanBaseBlock);
        if (bf16) pack_base(base + c0 * dim_, cols, centre);
        const float* block = base + c0 * dim_;
        if (centred_float32) {
            centre_rows(block, cols, centre, centred_base_, row_terms_.data());
            block = centred_base_.data();
        }
        // per row of the block: |x|^2 (L2), or with a centre pack_base's |x - c|^2 (L2) or c . (x - c)
        const float* column = centre != nullptr ? row_terms_.data() : l2 ? bnorm + c0 : nullptr;
        for (size_t q0 = 0; q0 < m; q0 += kScanQueryBlock) {
            const size_t rows = std::min(m - q0, kScanQueryBlock);
            products(bf16, queries, q0, rows, block, cols);
            for (size_t i = 0; i < rows; ++i) {
                float* row = tile_.get() + i * cols;
                const float qc = centre != nullptr ? query_centre_[q0 + i] : 0.0f;
                const float offset = metric_ == Metric::Cosine ? 1.0f : 0.0f;
                if (l2) {
                    to_distances_l2(row, cols, centre != nullptr ? qc : qnorm[q0 + i], column);
                } else if (column != nullptr) {
                    to_distances_dot(row, cols, offset - qc, column);
                } else {
                    to_distances_dot(row, cols, offset);
                }
                select_row(heap_at(q0 + i), row, cols, labels != nullptr ? labels + c0 : nullptr,
                           first_label + static_cast<int64_t>(c0));
            }
        }
    }
}

static_assert(kScanBaseBlock % 16 == 0, "scan_panels starts each base block on a panel");

void GemmScanner::scan_panels(const float* queries, size_t m, const float* panels, const float* row_terms, size_t nb,
                              const int64_t* labels, TopK* const* heaps, const float* centre) {
    const bool l2 = metric_ == Metric::L2;
    // (the CPU's level, not the one in use: panels packed before set_simd_level lowered it stay readable)
    SPARKNN_THROW_IF_NOT(cpu_simd_level() == SimdLevel::Avx512 && metric_ != Metric::Cosine && l2 == (centre != nullptr) &&
                             l2 == (row_terms != nullptr),
                         Error, "scan_panels: L2 with a centre and row terms, or inner product without");
    if (l2) {
        const DistanceKernels& kern = kernels();
        query_centre_.resize(m);
        for (size_t i = 0; i < m; ++i) query_centre_[i] = kern.l2sq(queries + i * dim_, centre, dim_);
        centre_rows(queries, m, centre, centred_queries_, nullptr);
        queries = centred_queries_.data();
    }
    grow_tile(m, nb);
    for (size_t c0 = 0; c0 < nb; c0 += kScanBaseBlock) {  // kScanBaseBlock: whole panels
        const size_t cols = std::min(nb - c0, kScanBaseBlock);
        for (size_t q0 = 0; q0 < m; q0 += kScanQueryBlock) {
            const size_t rows = std::min(m - q0, kScanQueryBlock);
#if defined(SPARKNN_TILE_BF16)
            tile_f32::product(queries + q0 * dim_, dim_, rows, panels + c0 * dim_, cols, dim_, tile_.get(), cols);
#endif
            for (size_t i = 0; i < rows; ++i) {
                float* row = tile_.get() + i * cols;
                if (l2) {
                    to_distances_l2(row, cols, query_centre_[q0 + i], row_terms + c0);
                } else {
                    to_distances_dot(row, cols, 0.0f);
                }
                select_row(*heaps[q0 + i], row, cols, labels + c0, 0);
            }
        }
    }
}

void squared_norms(const float* x, size_t n, size_t dim, float* out) {
    const DistanceKernels& k = kernels();
    for (size_t i = 0; i < n; ++i) out[i] = k.dot(x + i * dim, x + i * dim, dim);
}

}  // namespace sparknn
