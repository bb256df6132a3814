#include "sparknn/kmeans.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "sparknn/distance.h"
#include "sparknn/error.h"
#include "sparknn/flat.h"
#include "sparknn/parallel.h"

namespace sparknn {
namespace {

// k-means++: each next centre is drawn with probability proportional to the
// squared distance to the nearest centre chosen so far.
std::vector<float> seed_plus_plus(const float* x, size_t n, size_t dim, size_t k, std::mt19937_64& rng,
                                  int threads) {
    const DistanceKernels& kern = kernels();
    std::vector<float> centroids(k * dim);
    std::vector<float> nearest(n, std::numeric_limits<float>::infinity());
    size_t chosen = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
    for (size_t c = 0; c < k; ++c) {
        std::copy(x + chosen * dim, x + (chosen + 1) * dim, centroids.begin() + static_cast<ptrdiff_t>(c * dim));
        if (c + 1 == k) break;
        const float* centre = centroids.data() + c * dim;
        // Per-chunk sums keep the total deterministic whatever the thread timing.
        const size_t chunk = 4096;
        std::vector<double> sums((n + chunk - 1) / chunk, 0.0);
        parallel_for(n, chunk, threads, [&](size_t b, size_t e, int) {
            double s = 0;
            for (size_t i = b; i < e; ++i) {
                nearest[i] = std::min(nearest[i], kern.l2sq(x + i * dim, centre, dim));
                s += nearest[i];
            }
            sums[b / chunk] = s;
        });
        double total = 0;
        for (double s : sums) total += s;
        if (!(total > 0)) {  // every point coincides with a centre: pick any
            chosen = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
            continue;
        }
        double target = std::uniform_real_distribution<double>(0, total)(rng);
        size_t block = 0;
        while (block + 1 < sums.size() && target >= sums[block]) target -= sums[block++];
        chosen = std::min(n - 1, block * chunk);
        for (size_t i = block * chunk; i < std::min(n, (block + 1) * chunk); ++i) {
            chosen = i;
            target -= nearest[i];
            if (target < 0) break;
        }
    }
    return centroids;
}

}  // namespace

KMeansResult kmeans(const float* x, size_t n, size_t dim, size_t k, const KMeansParams& params) {
    SPARKNN_CHECK_ARG(k >= 1, "k-means needs k >= 1");
    SPARKNN_CHECK_ARG(n >= k, "k-means needs at least as many points (", n, ") as centroids (", k, ")");
    std::mt19937_64 rng(params.seed);
    KMeansResult result;
    result.centroids = seed_plus_plus(x, n, dim, k, rng, params.threads);
    result.assignment.assign(n, 0);
    std::vector<int64_t> nearest(n);
    std::vector<float> dist(n);
    for (size_t iter = 0;; ++iter) {
        FlatIndex quantizer(dim, Metric::L2);
        quantizer.set_threads(params.threads);
        quantizer.add(k, result.centroids.data(), nullptr);
        quantizer.search(n, x, 1, nearest.data(), dist.data());
        result.inertia = 0;
        for (size_t i = 0; i < n; ++i) {
            result.assignment[i] = static_cast<uint32_t>(nearest[i]);
            result.inertia += dist[i];
        }
        if (iter == params.iterations) break;

        // Update: mean of each cluster (double sums: clusters can be large).
        std::vector<double> sums(k * dim, 0.0);
        std::vector<size_t> counts(k, 0);
        for (size_t i = 0; i < n; ++i) {
            const size_t c = result.assignment[i];
            ++counts[c];
            const float* row = x + i * dim;
            double* s = sums.data() + c * dim;
            for (size_t j = 0; j < dim; ++j) s[j] += row[j];
        }
        for (size_t c = 0; c < k; ++c) {
            if (counts[c] == 0) continue;
            for (size_t j = 0; j < dim; ++j) {
                result.centroids[c * dim + j] = static_cast<float>(sums[c * dim + j] / static_cast<double>(counts[c]));
            }
        }
        // Empty clusters take half of the largest one: copy its centroid and
        // nudge both apart, as faiss does, so no list stays empty.
        for (size_t c = 0; c < k; ++c) {
            if (counts[c] != 0) continue;
            const size_t big = static_cast<size_t>(std::max_element(counts.begin(), counts.end()) - counts.begin());
            if (counts[big] < 2) break;
            std::uniform_real_distribution<float> jitter(-1e-3f, 1e-3f);
            for (size_t j = 0; j < dim; ++j) {
                const float v = result.centroids[big * dim + j];
                const float eps = jitter(rng) * (std::fabs(v) + 1e-3f);
                result.centroids[c * dim + j] = v + eps;
                result.centroids[big * dim + j] = v - eps;
            }
            counts[c] = counts[big] / 2;
            counts[big] -= counts[c];
        }
    }
    return result;
}

}  // namespace sparknn
