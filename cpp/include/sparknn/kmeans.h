// k-means for coarse quantizers: batched D^2 (k-means++-style) seeding,
// then Lloyd iterations whose assignment step is exact search through
// BLAS (FlatIndex). Multi-threaded; deterministic for a seed and thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sparknn {

struct KMeansParams {
    size_t iterations = 15;
    uint64_t seed = 42;
    int threads = 0;  // 0 = all cores
    // Points assigned through a bf16 first pass (FlatIndex::set_bf16_first_pass), where
    // the CPU has one: the nearest centroid among the pass's best few, measured exactly.
    bool bf16_first_pass = false;
};

struct KMeansResult {
    std::vector<float> centroids;  // [k, dim]
    std::vector<uint32_t> assignment;  // [n], nearest centroid of each point after the last step
    double inertia = 0;                // sum of squared distances to the assigned centroid
};

// Clusters n points [n, dim] into k centroids (L2). Requires n >= k >= 1.
KMeansResult kmeans(const float* x, size_t n, size_t dim, size_t k, const KMeansParams& params = {});

}  // namespace sparknn
