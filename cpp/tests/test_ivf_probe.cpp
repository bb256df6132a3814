// IvfIndex::probe_lists: each query's nprobe nearest lists, widened by doubling
// for a query whose lists hold fewer than `need` vectors and trimmed to the
// shortest prefix that holds them (the policy python/sparknn/spark/ivf_route.py
// applies to a routed query); and search scanning the same lists.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/ivf.h"
#include "test_util.h"

namespace sparknn {
namespace {

using test::ivf_params;

std::vector<int64_t> own_sizes(const IvfIndex& ivf) {
    std::vector<int64_t> s;
    for (size_t v : ivf.list_sizes()) s.push_back(static_cast<int64_t>(v));
    return s;
}

std::vector<int64_t> nearest(const IvfIndex& ivf, const float* query, size_t width) {
    std::vector<int64_t> lists(width);
    ivf.nearest_lists(1, query, width, lists.data());
    return lists;
}

// The policy spelled out for one query (ivf_route.probes, one row at a time).
std::vector<int64_t> expected_lists(const IvfIndex& ivf, const float* query, size_t nprobe, size_t need,
                                    const std::vector<int64_t>& sizes, std::vector<int64_t> first = {}) {
    const size_t nlist = ivf.nlist();
    nprobe = std::min(nprobe, nlist);
    if (first.empty()) first = nearest(ivf, query, nprobe);
    int64_t held = 0;
    for (int64_t l : first) held += sizes[l];
    if (held >= static_cast<int64_t>(need)) return first;
    for (size_t width = nprobe;;) {
        width = std::min(nlist, 2 * width);
        const std::vector<int64_t> wide = nearest(ivf, query, width);
        int64_t sum = 0;
        for (size_t j = 0; j < width; ++j) {
            sum += sizes[wide[j]];
            if (sum >= static_cast<int64_t>(need)) return {wide.begin(), wide.begin() + j + 1};
        }
        if (width == nlist) return wide;
    }
}

std::vector<int64_t> row_of(const ProbePlan& plan, size_t q) {
    return {plan.lists.begin() + plan.offsets[q], plan.lists.begin() + plan.offsets[q + 1]};
}

struct Fixture {
    static constexpr size_t dim = 4, n = 300, nq = 40;
    std::vector<float> base = test::clustered_vectors(n, dim, 5, 21);  // skewed lists: some small, some large
    std::vector<float> queries = test::random_vectors(nq, dim, 22);
};

TEST(IvfProbe, OwnSizesMatchThePolicy) {
    Fixture f;
    IvfIndex ivf(Fixture::dim, Metric::L2, ivf_params(24, 2));
    ivf.add(Fixture::n, f.base.data(), nullptr);
    const std::vector<int64_t> sizes = own_sizes(ivf);
    for (size_t nprobe : {1, 2, 5}) {
        for (size_t need : {0, 1, 10, 60, 150, 299, 300}) {
            const ProbePlan plan = ivf.probe_lists(Fixture::nq, f.queries.data(), nprobe, need);
            ASSERT_EQ(plan.offsets.size(), Fixture::nq + 1);
            EXPECT_EQ(plan.offsets[0], 0);
            EXPECT_EQ(plan.offsets.back(), static_cast<int64_t>(plan.lists.size()));
            size_t widened = 0;
            for (size_t q = 0; q < Fixture::nq; ++q) {
                const std::vector<int64_t> lists = row_of(plan, q);
                EXPECT_EQ(lists, expected_lists(ivf, &f.queries[q * Fixture::dim], nprobe, need, sizes))
                    << "nprobe " << nprobe << " need " << need << " query " << q;
                EXPECT_EQ(std::set<int64_t>(lists.begin(), lists.end()).size(), lists.size());  // no list twice
                int64_t held = 0;
                for (int64_t l : lists) held += sizes[l];
                EXPECT_GE(held, static_cast<int64_t>(need));  // need <= n: always reached
                widened += lists.size() > nprobe;
            }
            if (need >= 150) EXPECT_GT(widened, 0u) << "nprobe " << nprobe << " need " << need;
            if (need == 0) EXPECT_EQ(plan.lists.size(), Fixture::nq * nprobe);
        }
    }
    // The same sizes given explicitly give the same plan.
    const ProbePlan own = ivf.probe_lists(Fixture::nq, f.queries.data(), 2, 100);
    const ProbePlan given = ivf.probe_lists(Fixture::nq, f.queries.data(), 2, 100, sizes.data());
    EXPECT_EQ(own.offsets, given.offsets);
    EXPECT_EQ(own.lists, given.lists);
}

// A routed index: the quantizer's own lists are empty, the sizes come from elsewhere.
TEST(IvfProbe, GivenSizesDecide) {
    Fixture f;
    IvfIndex ivf(Fixture::dim, Metric::L2, ivf_params(16, 1));
    ivf.train(Fixture::n, f.base.data());  // trained, no vectors
    const std::vector<int64_t> ones(16, 1);
    const ProbePlan plan = ivf.probe_lists(Fixture::nq, f.queries.data(), 1, 5, ones.data());
    for (size_t q = 0; q < Fixture::nq; ++q) {
        // widths 2 and 4 hold 2 and 4 vectors; width 8 holds 8 >= 5: its nearest 5 lists
        const std::vector<int64_t> wide = nearest(ivf, &f.queries[q * Fixture::dim], 8);
        EXPECT_EQ(row_of(plan, q), std::vector<int64_t>(wide.begin(), wide.begin() + 5));
    }
    // With its own (empty) lists every query would scan all 16.
    const ProbePlan own = ivf.probe_lists(Fixture::nq, f.queries.data(), 1, 5);
    EXPECT_EQ(own.lists.size(), Fixture::nq * 16);
    // Sizes that hold nothing near but much far away: the nearest prefix that reaches need.
    std::vector<int64_t> sizes(16, 0);
    const std::vector<int64_t> order = nearest(ivf, f.queries.data(), 16);
    sizes[order[10]] = 7;
    const ProbePlan one = ivf.probe_lists(1, f.queries.data(), 3, 7, sizes.data());
    EXPECT_EQ(row_of(one, 0), std::vector<int64_t>(order.begin(), order.begin() + 11));
    sizes[order[10]] = -1;
    EXPECT_THROW(ivf.probe_lists(1, f.queries.data(), 3, 7, sizes.data()), InvalidArgument);
}

TEST(IvfProbe, GivenNearestUsedForTheFirstLists) {
    Fixture f;
    IvfIndex ivf(Fixture::dim, Metric::Cosine, ivf_params(12, 2));
    ivf.add(Fixture::n, f.base.data(), nullptr);
    const std::vector<int64_t> sizes = own_sizes(ivf);
    // Known lists, 4 per query, deliberately not the quantizer's: the farthest first.
    const size_t width = 4;
    std::vector<int64_t> known(Fixture::nq * width);
    for (size_t q = 0; q < Fixture::nq; ++q) {
        const std::vector<int64_t> all = nearest(ivf, &f.queries[q * Fixture::dim], 12);
        std::copy_n(all.rbegin(), width, known.begin() + q * width);
    }
    for (size_t need : {0, 40, 200}) {
        const ProbePlan plan = ivf.probe_lists(Fixture::nq, f.queries.data(), 2, need, nullptr, known.data(), width);
        for (size_t q = 0; q < Fixture::nq; ++q) {
            const std::vector<int64_t> first(known.begin() + q * width, known.begin() + q * width + 2);
            EXPECT_EQ(row_of(plan, q), expected_lists(ivf, &f.queries[q * Fixture::dim], 2, need, sizes, first));
        }
    }
    EXPECT_THROW(ivf.probe_lists(Fixture::nq, f.queries.data(), 5, 0, nullptr, known.data(), width),
                 InvalidArgument);  // narrower than nprobe
    known[1] = known[0];
    EXPECT_THROW(ivf.probe_lists(Fixture::nq, f.queries.data(), 2, 0, nullptr, known.data(), width),
                 InvalidArgument);  // a list twice
    known[1] = 12;
    EXPECT_THROW(ivf.probe_lists(Fixture::nq, f.queries.data(), 2, 0, nullptr, known.data(), width),
                 InvalidArgument);  // outside [0, nlist)
}

TEST(IvfProbe, NeedBeyondEveryVectorScansEveryList) {
    Fixture f;
    IvfIndex ivf(Fixture::dim, Metric::InnerProduct, ivf_params(10, 3));
    ivf.add(Fixture::n, f.base.data(), nullptr);
    const ProbePlan plan = ivf.probe_lists(Fixture::nq, f.queries.data(), 3, Fixture::n + 1);
    for (size_t q = 0; q < Fixture::nq; ++q) {
        EXPECT_EQ(row_of(plan, q), nearest(ivf, &f.queries[q * Fixture::dim], 10));  // every list, nearest first
    }
}

TEST(IvfProbe, FewListsAndEdgeCases) {
    Fixture f;
    for (size_t nlist : {1, 2, 3}) {
        IvfIndex ivf(Fixture::dim, Metric::L2, ivf_params(nlist, 1));
        ivf.add(Fixture::n, f.base.data(), nullptr);
        const std::vector<int64_t> sizes = own_sizes(ivf);
        for (size_t nprobe : {1, 2, 8}) {  // clamped to nlist
            for (size_t need : {1, 100, 300, 1000}) {
                const ProbePlan plan = ivf.probe_lists(Fixture::nq, f.queries.data(), nprobe, need);
                for (size_t q = 0; q < Fixture::nq; ++q) {
                    const std::vector<int64_t> lists = row_of(plan, q);
                    EXPECT_EQ(lists, expected_lists(ivf, &f.queries[q * Fixture::dim], nprobe, need, sizes));
                    EXPECT_LE(lists.size(), nlist);
                }
            }
        }
    }
    IvfIndex ivf(Fixture::dim, Metric::L2, ivf_params(4, 1));
    EXPECT_THROW(ivf.probe_lists(1, f.queries.data(), 1, 1), InvalidArgument);  // untrained
    ivf.add(Fixture::n, f.base.data(), nullptr);
    EXPECT_THROW(ivf.probe_lists(1, f.queries.data(), 0, 1), InvalidArgument);
    const ProbePlan empty = ivf.probe_lists(0, nullptr, 2, 1);
    EXPECT_EQ(empty.offsets, std::vector<int64_t>{0});
    EXPECT_TRUE(empty.lists.empty());
    std::vector<float> bad(f.queries.begin(), f.queries.begin() + Fixture::dim);
    bad[1] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_THROW(ivf.probe_lists(1, bad.data(), 1, 1), InvalidArgument);  // validated like search
}

// A query the plan does not widen scans exactly its nprobe nearest lists in
// search; one it widens gets min(k, n) neighbours from search.
TEST(IvfProbe, SearchScansThePlannedLists) {
    Fixture f;
    IvfIndex ivf(Fixture::dim, Metric::L2, ivf_params(24, 2));
    ivf.add(Fixture::n, f.base.data(), nullptr);
    const size_t k = 40;
    const ProbePlan plan = ivf.probe_lists(Fixture::nq, f.queries.data(), 2, k);
    const test::Results widened = test::search(ivf, f.queries, k, 0, 2);
    size_t short_rows = 0;
    for (size_t q = 0; q < Fixture::nq; ++q) {
        const std::vector<int64_t> lists = row_of(plan, q);
        EXPECT_GE(widened.ids[q * k + k - 1], 0);  // full
        if (lists.size() > 2) {
            ++short_rows;
            continue;
        }
        test::Results exact{std::vector<int64_t>(k), std::vector<float>(k)};
        SearchParams sp;
        sp.nprobe = 2;
        sp.lists = lists.data();
        sp.widen = false;
        ivf.search(1, &f.queries[q * Fixture::dim], k, exact.ids.data(), exact.dist.data(), sp);
        EXPECT_TRUE(std::equal(exact.ids.begin(), exact.ids.end(), widened.ids.begin() + q * k)) << q;
    }
    EXPECT_GT(short_rows, 0u);
}

}  // namespace
}  // namespace sparknn
