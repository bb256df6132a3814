// Exact distances of a block of queries to a block of base vectors through one
// BLAS sgemm per tile, fed into per-query top-k heaps. Shared by the flat index
// (whole base) and the IVF index (one inverted list at a time).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparknn/distance.h"
#include "sparknn/topk.h"

namespace sparknn {

// A [kScanQueryBlock, kScanBaseBlock] float tile (512 KiB) stays in L2 while it
// is turned into distances and scanned.
inline constexpr size_t kScanQueryBlock = 256;
inline constexpr size_t kScanBaseBlock = 512;

class GemmScanner {
  public:
    GemmScanner(Metric metric, size_t dim);

    // Scans m <= kScanQueryBlock queries [m, dim] against nb base rows [nb, dim].
    // qnorm [m] and bnorm [nb] are squared norms, read only under L2. Pushes
    // (distance, labels ? labels[j] : first_label + j) into heaps[i].
    void scan(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm, size_t nb,
              const int64_t* labels, int64_t first_label, TopK* heaps);
    // The same, with the heap of query i at *heaps[i] (queries gathered from a batch).
    void scan(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm, size_t nb,
              const int64_t* labels, int64_t first_label, TopK* const* heaps);

  private:
    template <class HeapAt>
    void scan_impl(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm,
                   size_t nb, const int64_t* labels, int64_t first_label, HeapAt&& heap_at);

    Metric metric_;
    size_t dim_;
    std::vector<float> tile_;
};

// Pushes into `heap` the entries of row [cols] within its threshold, labelled
// labels[j] (or first_label + j when labels is null).
void select_row(TopK& heap, const float* row, size_t cols, const int64_t* labels, int64_t first_label);

// out[i] = |x_i|^2 for n rows of x [n, dim].
void squared_norms(const float* x, size_t n, size_t dim, float* out);

}  // namespace sparknn
