#include "sparknn/kmeans.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <cmath>
#include <random>

#include "sparknn/distance.h"
#include "sparknn/error.h"
#include "sparknn/flat.h"
#include "sparknn/parallel.h"

namespace sparknn {
namespace {

// Candidates a bf16 first pass keeps beyond the nearest (KMeansParams::bf16_first_pass).
constexpr size_t kBf16Extra = 4;

// Counter-based uniform in (0, 1): the same value for a (seed, round, point)
// whatever thread computes it, so seeding is deterministic.
double uniform01(uint64_t seed, uint64_t round, uint64_t i) {
    uint64_t z = seed ^ (round * 0x9E3779B97F4A7C15ull) ^ (i * 0xD1B54A32D192ED03ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (static_cast<double>(z >> 11) + 0.5) * 0x1.0p-53;
}

// D^2 seeding in batches (k-means++ with b centres per round, as k-means||
// oversamples per round; Arthur & Vassilvitskii 2007, Bahmani et al. 2012).
// Each round draws b new centres without replacement with probability
// proportional to the squared distance to the nearest centre so far
// (Efraimidis-Spirakis keys u^(1/w)), then updates those distances with one
// BLAS pass against the b new centres. Plain k-means++ is b = 1 and costs k
// sequential passes over the data; with about 64 rounds the whole seeding
// costs what one Lloyd iteration does.
std::vector<float> seed_d2_batched(const float* x, size_t n, size_t dim, size_t k, uint64_t seed, int threads) {
    std::vector<float> centroids;
    centroids.reserve(k * dim);
    std::vector<float> nearest(n, std::numeric_limits<float>::infinity());
    const size_t batch = std::max<size_t>(1, (k + 63) / 64);
    const size_t workers = static_cast<size_t>(resolve_threads(threads));
    using Key = std::pair<double, size_t>;  // (key, point); smaller key = drawn first
    std::vector<Key> picked;
    for (size_t round = 0; centroids.size() < k * dim; ++round) {
        const size_t want = round == 0 ? 1 : std::min(batch, k - centroids.size() / dim);
        // Key -log(u) / w: the `want` smallest are a weighted sample without
        // replacement. Points at distance 0 (already centres) are never drawn
        // unless every point is, which falls back to uniform keys.
        std::vector<std::vector<Key>> local(workers);
        std::atomic<bool> any_positive{false};
        const size_t chunk = 8192;
        parallel_for(n, chunk, threads, [&](size_t b, size_t e, int worker) {
            std::vector<Key>& best = local[static_cast<size_t>(worker)];
            bool positive = false;
            for (size_t i = b; i < e; ++i) {
                const double w = round == 0 ? 1.0 : static_cast<double>(nearest[i]);
                if (!(w > 0)) continue;
                positive = true;
                const double key = -std::log(uniform01(seed, round, i)) / w;
                if (best.size() < want) {
                    best.emplace_back(key, i);
                    std::push_heap(best.begin(), best.end());
                } else if (key < best.front().first) {
                    std::pop_heap(best.begin(), best.end());
                    best.back() = {key, i};
                    std::push_heap(best.begin(), best.end());
                }
            }
            if (positive) any_positive.store(true, std::memory_order_relaxed);
        });
        picked.clear();
        for (const auto& l : local) picked.insert(picked.end(), l.begin(), l.end());
        if (!any_positive.load()) {  // every point coincides with a centre: draw uniformly
            for (size_t i = 0; i < n && picked.size() < want; ++i) {
                picked.emplace_back(-std::log(uniform01(seed, round, i)), i);
            }
        }
        std::sort(picked.begin(), picked.end());  // ties broken by index: deterministic
        picked.resize(std::min(picked.size(), want));
        const size_t first = centroids.size() / dim;
        for (const Key& p : picked) centroids.insert(centroids.end(), x + p.second * dim, x + (p.second + 1) * dim);
        if (centroids.size() == k * dim) break;
        // Each point's distance to the nearest new centre: a point against four centres per
        // kernel call, read once (a GEMM against a few centres packed the whole sample and
        // took its norms again every round: the seeding of 265 centres on 10k x 784 rows cost
        // what nine Lloyd iterations did).
        const float* added = centroids.data() + first * dim;
        const size_t count = picked.size();
        parallel_for(n, chunk, threads, [&](size_t b, size_t e, int) {
            const DistanceKernels& kern = kernels();
            float out[4];
            for (size_t i = b; i < e; ++i) {
                const float* row = x + i * dim;
                float best = nearest[i];
                size_t c = 0;
                for (; c + 4 <= count; c += 4) {
                    const float* four[4] = {added + c * dim, added + (c + 1) * dim, added + (c + 2) * dim,
                                            added + (c + 3) * dim};
                    kern.l2sq_x4(row, four, dim, out);
                    best = std::min({best, out[0], out[1], out[2], out[3]});
                }
                for (; c < count; ++c) best = std::min(best, kern.l2sq(row, added + c * dim, dim));
                nearest[i] = best;
            }
        });
    }
    return centroids;
}

}  // namespace

KMeansResult kmeans(const float* x, size_t n, size_t dim, size_t k, const KMeansParams& params) {
    SPARKNN_CHECK_ARG(k >= 1, "k-means needs k >= 1");
    SPARKNN_CHECK_ARG(n >= k, "k-means needs at least as many points (", n, ") as centroids (", k, ")");
    std::mt19937_64 rng(params.seed);
    KMeansResult result;
    result.centroids = seed_d2_batched(x, n, dim, k, params.seed, params.threads);
    result.assignment.assign(n, 0);
    std::vector<int64_t> nearest(n);
    std::vector<float> dist(n);
    for (size_t iter = 0;; ++iter) {
        FlatIndex quantizer(dim, Metric::L2);
        quantizer.set_threads(params.threads);
        quantizer.set_bf16_first_pass(params.bf16_first_pass ? kBf16Extra : 0);
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
