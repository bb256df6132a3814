// How near a query can come to any row of an IVF list, from the list's centroid and radius
// (the largest |x - c| of its rows) alone: the exact answer's pruning (ivf_exact_prune.cpp).
#pragma once

#include <cmath>
#include <cstddef>

#include "sparknn/distance.h"

namespace sparknn {

// How far a float32 sum of dim products may be from the exact sum, relative to the sum of the
// terms' magnitudes: (dim + 8) 2^-23. The scan's error bounds and the lists' lower bounds both
// allow for it (IvfIndex::scan_error_bounds, list_lower_bound).
inline double float32_sum_rounding(size_t dim) { return static_cast<double>(dim + 8) * std::ldexp(1.0, -23); }

// A lower bound of metric's distance from `query` to every row within `radius` of `centre`, as
// the re-ranking's float32 kernels compute it (L2: squared; cosine: 1 - q . x of unit vectors;
// inner product: -q . x). query_norm: |query| (used by the inner product only).
double list_lower_bound(Metric metric, size_t dim, const float* query, double query_norm, const float* centre,
                        double radius);

}  // namespace sparknn
