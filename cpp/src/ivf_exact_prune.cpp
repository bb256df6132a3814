// An exact answer from the lists (search_ladder_and_exact: the recall tuning's truth) need not
// scan a list none of whose rows can come nearer than the query's k-th neighbour. Every row x of
// list l lies within radius(l) of its centroid c (list_extents), so |q - x| >= |q - c| - radius(l),
// and q . x <= q . c + |q| radius(l). Once a query's nearest lists are scanned, its k-th best scan
// distance plus the scan's error bound (bf16 tiles or float32 sgemm: scan_error_bounds) is at
// least its k-th exact distance: the lists whose lower bound lies beyond that are skipped, and
// the least skipped bound joins the answer's proof (search_batch). With bf16 tiles a skip can
// make an answer unproven (searched exactly), never wrong; a float32 scan's answer is the k
// nearest by its own distances, which no row of a skipped list can come within (its distance
// as the scan computes it exceeds the k-th), so such an answer stays proven. The projected first
// pass's selections hold lower bounds instead: its k-th from above is the exact k-th of the
// ladder's last answer (k rows re-ranked), given by the caller.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "list_bound.h"
#include "sparknn/distance.h"
#include "sparknn/ivf.h"
#include "sparknn/parallel.h"

namespace sparknn {

double list_lower_bound(Metric metric, size_t dim, const float* query, double query_norm, const float* centre,
                        double radius) {
    const DistanceKernels& kern = kernels();
    // the answer's distances are float32 sums too, so the bound is lowered by their rounding
    // once more to stay below the distance the re-ranking computes
    const double rounding = float32_sum_rounding(dim);
    if (metric == Metric::InnerProduct) {
        const double centre_norm = std::sqrt(static_cast<double>(kern.dot(centre, centre, dim)));
        const double qc = static_cast<double>(kern.dot(query, centre, dim));
        // -q . x >= -q . c - |q| radius, less the rounding of q . c and of the answer's q . x
        return -qc - query_norm * radius - 2.0 * rounding * query_norm * (centre_norm + radius);
    }
    const double to_centre = std::sqrt(std::max(0.0, static_cast<double>(kern.l2sq(query, centre, dim)) * (1.0 - rounding)));
    const double gap = std::max(0.0, to_centre - radius);
    if (metric == Metric::L2) return gap * gap * (1.0 - rounding);  // |q - x|^2 as the float32 sum may give it
    // cosine, unit rows and query: 1 - q . x = |q - x|^2 / 2 (their norms within 1e-6 of 1)
    return 0.5 * gap * gap - 1e-6 - 1.01 * rounding;
}

std::vector<int64_t> IvfIndex::without_far_lists(size_t nq, const float* queries, size_t k, size_t nprobe,
                                                 const int64_t* probes, size_t from_rank,
                                                 const std::vector<TopK>& heaps, size_t workers,
                                                 const std::vector<float>& error_bound,
                                                 std::vector<double>& least_skipped, int threads) const {
    // each query's k-th best scan distance plus the scan's error bound: at least its exact k-th
    std::vector<double> kth(nq, std::numeric_limits<double>::infinity());
    parallel_for(nq, 64, threads, [&](size_t b, size_t e, int) {
        std::vector<float> found;
        for (size_t q = b; q < e; ++q) {
            found.clear();
            for (size_t w = 0; w < workers; ++w) {
                for (const TopK::Entry& entry : heaps[w * nq + q].buffered()) found.push_back(entry.first);
            }
            if (found.size() < k) continue;  // not k rows yet: nothing bounds the k-th
            std::nth_element(found.begin(), found.begin() + static_cast<ptrdiff_t>(k - 1), found.end());
            kth[q] = static_cast<double>(found[k - 1]) + static_cast<double>(error_bound[q]);
        }
    });
    return without_far_lists(nq, queries, nprobe, probes, from_rank, kth, least_skipped, threads);
}

std::vector<int64_t> IvfIndex::without_far_lists(size_t nq, const float* queries, size_t nprobe, const int64_t* probes,
                                                 size_t from_rank, const std::vector<double>& kth,
                                                 std::vector<double>& least_skipped, int threads) const {
    const DistanceKernels& kern = kernels();
    const std::vector<double>& radius = list_extents(threads).radius;
    const float* centroids = centroid_data();
    std::vector<int64_t> kept(probes, probes + nq * nprobe);
    least_skipped.assign(nq, std::numeric_limits<double>::infinity());
    parallel_for(nq, 16, threads, [&](size_t b, size_t e, int) {
        for (size_t q = b; q < e; ++q) {
            if (!std::isfinite(kth[q])) continue;
            const float* query = queries + q * dim_;
            const double query_norm =
                metric_ == Metric::InnerProduct ? std::sqrt(static_cast<double>(kern.dot(query, query, dim_))) : 0.0;
            double least = std::numeric_limits<double>::infinity();
            for (size_t r = from_rank; r < nprobe; ++r) {
                int64_t& list = kept[q * nprobe + r];
                if (list < 0) continue;
                const double bound = list_lower_bound(metric_, dim_, query, query_norm, centroids + static_cast<size_t>(list) * dim_,
                                                      radius[static_cast<size_t>(list)]);
                if (bound > kth[q]) {
                    least = std::min(least, bound);
                    list = -1;
                }
            }
            least_skipped[q] = least;
        }
    });
    return kept;
}

}  // namespace sparknn
