#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gemm_scan.h"
#include "sparknn/topk.h"

namespace sparknn {
namespace {

TEST(TopK, KeepsKSmallestSortedWithLabelTieBreak) {
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> d(0, 50);  // many ties
    for (auto [k, slack] : {std::pair<size_t, size_t>{1, 2}, {5, 2}, {64, 2}, {5, 4}, {64, 4}, {16, 8}}) {
        SCOPED_TRACE("k " + std::to_string(k) + " slack " + std::to_string(slack));
        std::vector<std::pair<float, int64_t>> all;
        TopK top;
        top.reset(k, slack);
        for (int64_t i = 0; i < 1000; ++i) {
            const float v = static_cast<float>(d(rng));
            all.emplace_back(v, i);
            top.push(v, i);
        }
        std::sort(all.begin(), all.end());
        std::vector<int64_t> ids(k);
        std::vector<float> dist(k);
        top.write_sorted(ids.data(), dist.data(), [](int64_t l) { return l * 10; });
        for (size_t i = 0; i < k; ++i) {
            EXPECT_EQ(dist[i], all[i].first);
            EXPECT_EQ(ids[i], all[i].second * 10);
        }
    }
}

// Large selections of distinct distances, as the deep selections of an exact answer hold
// (1024 of them, cut back from 2048): the quickselect of the k-th runs many rounds.
TEST(TopK, LargeSelectionsOfDistinctDistances) {
    std::mt19937 rng(13);
    std::normal_distribution<float> normal;
    for (auto [k, slack] : {std::pair<size_t, size_t>{1024, 2}, {100, 3}, {17, 2}}) {
        SCOPED_TRACE("k " + std::to_string(k));
        std::vector<std::pair<float, int64_t>> all;
        TopK top;
        top.reset(k, slack);
        for (int64_t i = 0; i < 20000; ++i) {
            // drifting downwards now and then: the threshold keeps moving, many cuts
            const float v = normal(rng) - static_cast<float>(i % 5000) * 1e-3f;
            all.emplace_back(v, i);
            top.push(v, i);
        }
        std::sort(all.begin(), all.end());
        std::vector<int64_t> ids(k);
        std::vector<float> dist(k);
        top.write_sorted(ids.data(), dist.data(), [](int64_t l) { return l; });
        for (size_t i = 0; i < k; ++i) {
            ASSERT_EQ(dist[i], all[i].first) << i;
            ASSERT_EQ(ids[i], all[i].second) << i;
        }
    }
}

// Many rows at one distance (duplicates of the query, or of each other): the selection still
// keeps the first by id, and the cut does not degrade to a round per row.
TEST(TopK, RunsOfEqualDistances) {
    for (auto [k, slack] : {std::pair<size_t, size_t>{1024, 2}, {40, 2}}) {
        SCOPED_TRACE("k " + std::to_string(k));
        TopK top;
        top.reset(k, slack);
        const int64_t n = 30000;
        for (int64_t i = n - 1; i >= 0; --i) top.push(i % 3 == 0 ? 0.0f : 1.0f, i);  // 10000 at 0, in reverse
        std::vector<int64_t> ids(k);
        std::vector<float> dist(k);
        top.write_sorted(ids.data(), dist.data(), [](int64_t l) { return l; });
        for (size_t i = 0; i < k; ++i) {
            ASSERT_EQ(dist[i], 0.0f) << i;
            ASSERT_EQ(ids[i], static_cast<int64_t>(3 * i)) << i;
        }
    }
}

// With ids, equal distances are ordered by ids[label], not by label, at the
// cut (the k-th distance shared) as in the output order.
TEST(TopK, TiesOrderedByIdsWhenGiven) {
    std::mt19937 rng(9);
    std::uniform_int_distribution<int> d(0, 20);
    std::vector<int64_t> ids(500);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>((i * 7919) % 500);  // a permutation
    for (auto [k, slack] : {std::pair<size_t, size_t>{1, 2}, {7, 2}, {40, 4}}) {
        SCOPED_TRACE("k " + std::to_string(k));
        std::vector<std::pair<float, int64_t>> all;  // (distance, id)
        TopK top;
        top.reset(k, slack);
        top.order_ties_by(ids.data());
        for (int64_t label = 0; label < 500; ++label) {
            const float v = static_cast<float>(d(rng));
            all.emplace_back(v, ids[static_cast<size_t>(label)]);
            top.push(v, label);
        }
        std::sort(all.begin(), all.end());
        std::vector<int64_t> out(k);
        std::vector<float> dist(k);
        top.write_sorted(out.data(), dist.data(), [&](int64_t l) { return ids[static_cast<size_t>(l)]; });
        for (size_t i = 0; i < k; ++i) {
            EXPECT_EQ(dist[i], all[i].first);
            EXPECT_EQ(out[i], all[i].second);
        }
    }
}

TEST(TopK, PadsWhenFewerThanK) {
    TopK top(4);
    top.push(2.0f, 1);
    top.push(1.0f, 0);
    int64_t ids[4];
    float dist[4];
    top.write_sorted(ids, dist, [](int64_t l) { return l; });
    EXPECT_EQ(ids[0], 0);
    EXPECT_EQ(ids[1], 1);
    EXPECT_EQ(ids[2], -1);
    EXPECT_EQ(ids[3], -1);
    EXPECT_TRUE(std::isinf(dist[2]) && std::isinf(dist[3]));
}

TEST(TopK, MergeEqualsSinglePass) {
    TopK a(3), b(3), all(3);
    for (int i = 0; i < 10; ++i) {
        (i % 2 ? a : b).push(static_cast<float>((i * 7) % 10), i);
        all.push(static_cast<float>((i * 7) % 10), i);
    }
    a.merge(b);
    int64_t x[3], y[3];
    float dx[3], dy[3];
    a.write_sorted(x, dx, [](int64_t l) { return l; });
    all.write_sorted(y, dy, [](int64_t l) { return l; });
    for (int i = 0; i < 3; ++i) EXPECT_EQ(x[i], y[i]);
}

// The IVF scan's second pass: selections of other parts of the same query are
// bounded by a first selection's k-th distance; the merged result must equal
// one selection over everything, ties on the bound included.
TEST(TopK, BoundedSelectionsMergeToTheSinglePassResult) {
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> d(0, 30);  // many ties, some on the bound
    for (size_t k : {1u, 3u, 10u}) {
        std::vector<float> values(600);
        for (float& v : values) v = static_cast<float>(d(rng));
        TopK first(k), second(k), third(k), all(k);
        for (int64_t i = 0; i < 600; ++i) all.push(values[i], i);
        for (int64_t i = 0; i < 40; ++i) first.push(values[i], i);
        const float bound = first.tighten();
        second.limit(bound);
        third.limit(bound);
        for (int64_t i = 40; i < 600; ++i) (i % 2 ? second : third).push(values[i], i);
        first.merge(second);
        first.merge(third);
        std::vector<int64_t> x(k), y(k);
        std::vector<float> dx(k), dy(k);
        first.write_sorted(x.data(), dx.data(), [](int64_t l) { return l; });
        all.write_sorted(y.data(), dy.data(), [](int64_t l) { return l; });
        EXPECT_EQ(x, y) << "k=" << k;
        EXPECT_EQ(dx, dy) << "k=" << k;
    }
}

// select_row on rows long enough (at least 4k) for its bound from group minima: the
// selection it leaves is the one pushing every entry leaves, with NaNs (never kept), runs of
// equal distances and rows whose length is no multiple of the groups.
TEST(TopK, SelectRowKeepsWhatPushingEveryEntryKeeps) {
    std::mt19937 rng(11);
    for (size_t k : {2, 3, 10, 44, 200}) {
        for (size_t cols : {4 * k, 4 * k + 5, 9 * k + 3, size_t{1000}}) {
            for (int kind = 0; kind < 3; ++kind) {
                SCOPED_TRACE("k " + std::to_string(k) + " cols " + std::to_string(cols) + " kind " + std::to_string(kind));
                std::vector<float> row(cols);
                std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
                std::uniform_int_distribution<int> few(0, 6);
                for (size_t j = 0; j < cols; ++j) {
                    row[j] = kind == 1 ? static_cast<float>(few(rng)) : uniform(rng);
                    if (kind == 2 && j % 7 == 3) row[j] = std::numeric_limits<float>::quiet_NaN();
                }
                if (kind == 0) std::sort(row.begin(), row.end(), std::greater<float>());  // nearest last
                TopK selected, pushed;
                selected.reset(k);
                pushed.reset(k);
                select_row(selected, row.data(), cols, nullptr, 100);
                for (size_t j = 0; j < cols; ++j) {
                    if (row[j] == row[j]) pushed.push(row[j], 100 + static_cast<int64_t>(j));
                }
                std::vector<int64_t> ids_a(k), ids_b(k);
                std::vector<float> dist_a(k), dist_b(k);
                selected.write_sorted(ids_a.data(), dist_a.data(), [](int64_t l) { return l; });
                pushed.write_sorted(ids_b.data(), dist_b.data(), [](int64_t l) { return l; });
                EXPECT_EQ(ids_a, ids_b);
                EXPECT_EQ(dist_a, dist_b);
            }
        }
    }
}

}  // namespace
}  // namespace sparknn
