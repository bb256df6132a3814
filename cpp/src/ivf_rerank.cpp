// IvfIndex's exact re-rank of a batch's candidates list by list: every query's candidates
// gathered, grouped by the list that holds them, and each list's rows measured against all
// the queries that need them at once. One query at a time (rerank_candidates) reads its
// candidates' rows scattered over its lists: on a Fashion-MNIST self-join, 44 rows of 3 KB per
// query, half the search's time spent waiting on memory. By list, a list's rows are read once
// per batch while they stay in cache, and a query's own vector once per list. The distances are
// the same kernels' (distance_x4: the bits of distance()), so the answers are rerank_candidates'.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "sparknn/distance.h"
#include "sparknn/ivf.h"
#include "sparknn/parallel.h"
#include "sparknn/topk.h"

namespace sparknn {

void IvfIndex::rerank_by_list(size_t nq, const float* queries, const size_t* begins, const uint32_t* counts,
                              const int64_t* labels, size_t k, int64_t* out_ids, float* out_distances,
                              int threads) const {
    // labels[begins[q], + counts[q]): query q's candidates; index_places ran first
    const DistanceKernels& kern = kernels();
    const size_t nlist = lists_.size();
    struct Place {
        uint32_t list, row;
    };
    size_t slots = 0;
    for (size_t q = 0; q < nq; ++q) slots = std::max(slots, begins[q] + counts[q]);
    std::vector<Place> place(slots);
    // The queries in `parts` consecutive ranges, each counting its candidates per list: the
    // pairs are laid out list by list, and within a list part after part, so in query order.
    const size_t parts = static_cast<size_t>(std::max(1, std::min<int>(resolve_threads(threads), 64)));
    const size_t per_part = (nq + parts - 1) / parts;
    std::vector<size_t> cursor(parts * nlist, 0);  // [part][list]: its count, then where it writes
    parallel_for(parts, 1, threads, [&](size_t b, size_t e, int) {
        for (size_t p = b; p < e; ++p) {
            size_t* count = cursor.data() + p * nlist;
            for (size_t q = p * per_part; q < std::min(nq, (p + 1) * per_part); ++q) {
                for (size_t j = 0; j < counts[q]; ++j) {
                    const auto [l, r] = place_of(static_cast<size_t>(labels[begins[q] + j]));
                    place[begins[q] + j] = Place{static_cast<uint32_t>(l), static_cast<uint32_t>(r)};
                    ++count[l];
                }
            }
        }
    });
    std::vector<size_t> start(nlist + 1, 0);
    for (size_t l = 0, at = 0; l < nlist; ++l) {
        start[l] = at;
        for (size_t p = 0; p < parts; ++p) {
            const size_t c = cursor[p * nlist + l];
            cursor[p * nlist + l] = at;
            at += c;
        }
        start[l + 1] = at;
    }
    struct Pair {
        size_t slot;     // begins[q] + j: where its distance goes
        uint32_t query;  // q
        uint32_t row;    // the candidate's row in its list
    };
    std::vector<Pair> pairs(start[nlist]);
    parallel_for(parts, 1, threads, [&](size_t b, size_t e, int) {
        for (size_t p = b; p < e; ++p) {
            size_t* fill = cursor.data() + p * nlist;
            for (size_t q = p * per_part; q < std::min(nq, (p + 1) * per_part); ++q) {
                for (size_t j = 0; j < counts[q]; ++j) {
                    const Place at = place[begins[q] + j];
                    pairs[fill[at.list]++] = Pair{begins[q] + j, static_cast<uint32_t>(q), at.row};
                }
            }
        }
    });
    std::vector<float> exact(slots);
    parallel_for(nlist, 1, threads, [&](size_t b, size_t e, int) {
        for (size_t l = b; l < e; ++l) {
            const float* rows = reinterpret_cast<const float*>(lists_[l].codes.data());
            for (size_t i = start[l], end = start[l + 1]; i < end;) {
                const uint32_t q = pairs[i].query;
                const float* query = queries + size_t{q} * dim_;
                size_t run = i;
                while (run < end && pairs[run].query == q) ++run;
                // four rows at a time; a run's last group filled up with its last row again
                // (measured twice, kept once: distance_x4 gives each row distance()'s bits)
                for (; i < run; i += 4) {
                    const float* group[4];
                    for (size_t t = 0; t < 4; ++t) group[t] = rows + size_t{pairs[std::min(i + t, run - 1)].row} * dim_;
                    float d[4];
                    distance_x4(metric_, kern, query, group, dim_, d);
                    for (size_t t = 0; t < 4 && i + t < run; ++t) exact[pairs[i + t].slot] = d[t];
                }
                i = run;
            }
        }
    });
    parallel_for(nq, 64, threads, [&](size_t b, size_t e, int) {
        TopK best;
        for (size_t q = b; q < e; ++q) {
            best.reset_for(k, counts[q]);
            best.order_ties_by(ids_.data());
            for (size_t j = 0; j < counts[q]; ++j) best.push(exact[begins[q] + j], labels[begins[q] + j]);
            best.write_sorted(out_ids + q * k, out_distances + q * k,
                              [&](int64_t label) { return ids_[static_cast<size_t>(label)]; });
        }
    });
}

}  // namespace sparknn
