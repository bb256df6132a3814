// Equal distances are ordered by user id, and at the k-th distance the smaller
// ids are kept, in every search path: the same vectors with the same ids give
// the same answer whatever order they were added in (issue 16: two runs of one
// self-join differed in rows of equal distances).
//
// Vectors have entries in {-1, 0, 1}, four of them non-zero: every distance
// (and the cosine normalisation, by 2) is exact in float, so duplicates tie
// exactly wherever they are stored; float rounding would otherwise decide.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "sparknn/hnsw.h"
#include "sparknn/ivf.h"
#include "test_util.h"

namespace sparknn {
namespace {

constexpr size_t kTieDim = 8;

std::vector<float> sparse_signs(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<float> x(n * kTieDim, 0.0f);
    std::vector<size_t> cols(kTieDim);
    std::iota(cols.begin(), cols.end(), size_t{0});
    for (size_t i = 0; i < n; ++i) {
        std::shuffle(cols.begin(), cols.end(), rng);
        for (size_t j = 0; j < 4; ++j) x[i * kTieDim + cols[j]] = rng() % 2 ? 1.0f : -1.0f;
    }
    return x;
}

// 40 distinct vectors, each stored 2-6 times under distinct, unordered ids.
struct TiedData {
    std::vector<float> vectors;  // [n, dim]
    std::vector<int64_t> ids;    // [n]
    size_t n = 0;
};

TiedData tied_data() {
    const std::vector<float> distinct = sparse_signs(40, 1);
    std::mt19937_64 rng(2);
    TiedData d;
    for (size_t v = 0; v < 40; ++v) {
        for (size_t c = 0, copies = 2 + rng() % 5; c < copies; ++c) {
            d.vectors.insert(d.vectors.end(), distinct.begin() + v * kTieDim, distinct.begin() + (v + 1) * kTieDim);
        }
    }
    d.n = d.vectors.size() / kTieDim;
    d.ids.resize(d.n);
    std::iota(d.ids.begin(), d.ids.end(), int64_t{1000});
    std::shuffle(d.ids.begin(), d.ids.end(), rng);  // ids unrelated to positions
    return d;
}

// The rows of `d` in the order `perm`.
TiedData permuted(const TiedData& d, const std::vector<size_t>& perm) {
    TiedData p;
    p.n = d.n;
    for (size_t i : perm) {
        p.vectors.insert(p.vectors.end(), d.vectors.begin() + i * kTieDim, d.vectors.begin() + (i + 1) * kTieDim);
        p.ids.push_back(d.ids[i]);
    }
    return p;
}

// Brute force in double, ordered by (distance, id).
test::Results reference(Metric m, const TiedData& d, const std::vector<float>& queries, size_t k) {
    std::vector<float> base = d.vectors, q = queries;
    if (m == Metric::Cosine) {
        test::normalise_rows(base, kTieDim);
        test::normalise_rows(q, kTieDim);
    }
    const size_t nq = q.size() / kTieDim;
    test::Results r{std::vector<int64_t>(nq * k, -1), std::vector<float>(nq * k)};
    for (size_t i = 0; i < nq; ++i) {
        std::vector<std::pair<double, int64_t>> all;
        for (size_t j = 0; j < d.n; ++j) all.emplace_back(test::ref_distance(m, &q[i * kTieDim], &base[j * kTieDim], kTieDim), d.ids[j]);
        std::sort(all.begin(), all.end());
        for (size_t r0 = 0; r0 < k; ++r0) {
            r.ids[i * k + r0] = all[r0].second;
            r.dist[i * k + r0] = static_cast<float>(all[r0].first);
        }
    }
    return r;
}

// ivf indexes are trained alike (the lists, and so the answer, depend on training).
const std::vector<float>& training() {
    static const std::vector<float> x = sparse_signs(400, 7);  // pq trains on at least 256
    return x;
}

std::unique_ptr<Index> build(IndexKind kind, Metric m, const TiedData& d, const std::string& storage) {
    IndexOptions o;
    o.nlist = 6;
    o.nprobe = 2;
    o.storage = storage;
    o.pq_m = 4;
    o.M = 6;
    o.ef_construction = 32;
    auto index = make_index(kind, kTieDim, m, o);
    index->set_threads(2);
    if (auto* ivf = dynamic_cast<IvfIndex*>(index.get())) ivf->train(training().size() / kTieDim, training().data());
    index->add(d.n, d.vectors.data(), d.ids.data());
    return index;
}

using TieCase = std::tuple<Metric, std::string>;  // metric, "flat" or an ivf storage

class Ties : public ::testing::TestWithParam<TieCase> {};

TEST_P(Ties, OrderOfAddsDoesNotChangeTheAnswer) {
    const auto [metric, what] = GetParam();
    const IndexKind kind = what == "flat" ? IndexKind::Flat : IndexKind::Ivf;
    const TiedData d = tied_data();
    const std::vector<float> queries = sparse_signs(30, 3);
    std::vector<size_t> perm(d.n);
    std::iota(perm.begin(), perm.end(), size_t{0});
    std::mt19937_64 rng(4);
    const auto a = build(kind, metric, d, what);
    bool some_tie_cut = false;
    for (int trial = 0; trial < 3; ++trial) {
        std::shuffle(perm.begin(), perm.end(), rng);
        const auto b = build(kind, metric, permuted(d, perm), what);  // trained alike, added shuffled
        for (size_t k : {1u, 5u, 9u, 23u}) {
            for (size_t nprobe : {size_t{2}, size_t{6}}) {
                SCOPED_TRACE("k " + std::to_string(k) + " nprobe " + std::to_string(nprobe));
                const test::Results ra = test::search(*a, queries, k, 0, nprobe);
                const test::Results rb = test::search(*b, queries, k, 0, nprobe);
                EXPECT_EQ(ra.ids, rb.ids);
                EXPECT_EQ(ra.dist, rb.dist);
                if (what == "float32" && nprobe < 6) continue;  // only all lists are exact
                if (what == "sq8" || what == "pq") continue;     // approximate distances
                const test::Results want = reference(metric, d, queries, k);
                EXPECT_EQ(ra.ids, want.ids);
                EXPECT_EQ(ra.dist, want.dist);
                for (size_t i = 0; i < queries.size() / kTieDim && k > 1; ++i) {
                    // the k-th distance is shared beyond k: the cut went through a tie group
                    const auto full = reference(metric, d, std::vector<float>(queries.begin() + i * kTieDim,
                                                                              queries.begin() + (i + 1) * kTieDim), k + 1);
                    some_tie_cut |= full.dist[k] == full.dist[k - 1];
                }
            }
        }
    }
    if (what == "flat") EXPECT_TRUE(some_tie_cut) << "the data never cut through a group of ties";
}

INSTANTIATE_TEST_SUITE_P(MetricsStorages, Ties,
                         ::testing::Combine(::testing::Values(Metric::L2, Metric::InnerProduct, Metric::Cosine),
                                            ::testing::Values("flat", "float32", "sq8", "pq")),
                         [](const ::testing::TestParamInfo<TieCase>& info) {
                             return std::string(metric_name(std::get<0>(info.param))) + "_" +
                                    std::get<1>(info.param);
                         });

// hnsw: whatever the graph search found is ordered by (distance, id); with a
// candidate list as long as the index it is exact, ties included.
TEST(TiesHnsw, ResultsOrderedByDistanceThenId) {
    const TiedData d = tied_data();
    const std::vector<float> queries = sparse_signs(30, 5);
    for (Metric m : {Metric::L2, Metric::InnerProduct, Metric::Cosine}) {
        SCOPED_TRACE(metric_name(m));
        const auto index = build(IndexKind::Hnsw, m, d, "float32");
        for (size_t k : {5u, 9u}) {
            const test::Results r = test::search(*index, queries, k, 12);
            for (size_t i = 0; i < queries.size() / kTieDim; ++i) {
                for (size_t j = 1; j < k; ++j) {
                    const size_t at = i * k + j;
                    EXPECT_TRUE(r.dist[at - 1] < r.dist[at] || (r.dist[at - 1] == r.dist[at] && r.ids[at - 1] < r.ids[at]))
                        << "query " << i << " rank " << j;
                }
            }
            const test::Results exact = test::search(*index, queries, k, d.n);
            const test::Results want = reference(m, d, queries, k);
            EXPECT_EQ(exact.ids, want.ids);
            EXPECT_EQ(exact.dist, want.dist);
        }
    }
}

}  // namespace
}  // namespace sparknn
