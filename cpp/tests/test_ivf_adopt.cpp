// IvfIndex::adopt_rows (a RowBlock's rows kept in place as the lists) and
// view_rows_in_list_order: the same index as add(), and nothing changed on a refusal.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/ivf.h"
#include "sparknn/row_block.h"
#include "test_util.h"

namespace sparknn {
namespace {

using test::block_of;
using test::file_bytes;
using test::Results;
using test::search;

IvfParams float32_lists(size_t nlist, size_t nprobe, size_t rerank = 0) {
    IvfParams p;
    p.nlist = nlist;
    p.nprobe = nprobe;
    p.rerank = rerank;
    return p;
}

// Every metric, with the bf16 scan (rerank) and without, lists given or assigned, ids given
// or generated: the adopted index answers, reconstructs and saves as the added one.
TEST(IvfAdopt, AdoptedRowsGiveTheAddedIndex) {
    const size_t dim = 24, n = 3000, k = 7;
    const auto base = test::clustered_vectors(n, dim, 12, 21);
    const auto queries = test::clustered_vectors(40, dim, 12, 22);
    std::vector<int64_t> ids(n);
    for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int64_t>(5 * i + 3);
    const std::string path_added = ::testing::TempDir() + "adopt_added.snn";
    const std::string path_adopted = ::testing::TempDir() + "adopt_adopted.snn";
    for (Metric metric : {Metric::L2, Metric::Cosine, Metric::InnerProduct}) {
        for (size_t rerank : {size_t{0}, size_t{2}}) {
            for (bool given : {false, true}) {
                SCOPED_TRACE(testing::Message() << "metric " << static_cast<int>(metric) << " rerank " << rerank
                                                << " lists given " << given);
                IvfIndex added(dim, metric, float32_lists(16, 4, rerank)), adopted(dim, metric, float32_lists(16, 4, rerank));
                added.train(n, base.data());
                adopted.train(n, base.data());
                std::vector<int64_t> lists(n);
                adopted.nearest_lists(n, base.data(), 1, lists.data());
                const int64_t* id_ptr = given ? ids.data() : nullptr;
                added.add_to_lists(n, base.data(), id_ptr, lists.data());
                auto block = block_of(base, dim);
                adopted.adopt_rows(block, id_ptr, given ? lists.data() : nullptr);
                EXPECT_TRUE(block->taken());
                block.reset();  // the index keeps the rows alive
                ASSERT_EQ(adopted.size(), n);
                EXPECT_EQ(added.list_sizes(), adopted.list_sizes());
                EXPECT_EQ(added.list_labels(), adopted.list_labels());
                const Results a = search(added, queries, k), b = search(adopted, queries, k);
                EXPECT_EQ(a.ids, b.ids);
                EXPECT_EQ(a.dist, b.dist);
                std::vector<float> ra(n * dim), rb(n * dim);
                added.reconstruct(0, n, ra.data());
                adopted.reconstruct(0, n, rb.data());
                EXPECT_EQ(ra, rb);
                added.save(path_added);
                adopted.save(path_adopted);
                EXPECT_EQ(file_bytes(path_added), file_bytes(path_adopted));
            }
        }
    }
    std::remove(path_added.c_str());
    std::remove(path_adopted.c_str());
}

// Rows in another order than the labels (a reader's file order, labels in id order): with
// `order` the index is the one add() builds from the rows in label order; a bad order is refused.
TEST(IvfAdopt, AnOrderGivesTheIndexOfTheRowsInThatOrder) {
    const size_t dim = 20, n = 2500, k = 6;
    const auto base = test::clustered_vectors(n, dim, 10, 51);
    const auto queries = test::clustered_vectors(30, dim, 10, 52);
    const auto [order, shuffled] = test::shuffled_rows(base, dim, 5);  // label r's vector at row order[r]
    std::vector<int64_t> ids(n);
    for (size_t r = 0; r < n; ++r) ids[r] = static_cast<int64_t>(n - r) * 3;
    const std::string path_added = ::testing::TempDir() + "adopt_order_added.snn";
    const std::string path_adopted = ::testing::TempDir() + "adopt_order_adopted.snn";
    for (Metric metric : {Metric::L2, Metric::Cosine}) {
        for (bool given : {false, true}) {
            IvfIndex added(dim, metric, float32_lists(12, 3)), adopted(dim, metric, float32_lists(12, 3));
            added.train(n, base.data());
            adopted.train(n, base.data());
            std::vector<int64_t> lists(n);
            added.nearest_lists(n, base.data(), 1, lists.data());
            added.add(n, base.data(), ids.data());
            adopted.adopt_rows(block_of(shuffled, dim), ids.data(), given ? lists.data() : nullptr, order.data());
            EXPECT_EQ(added.list_labels(), adopted.list_labels());
            const Results a = search(added, queries, k), b = search(adopted, queries, k);
            EXPECT_EQ(a.ids, b.ids);
            EXPECT_EQ(a.dist, b.dist);
            added.save(path_added);
            adopted.save(path_adopted);
            EXPECT_EQ(file_bytes(path_added), file_bytes(path_adopted));
        }
    }
    std::remove(path_added.c_str());
    std::remove(path_adopted.c_str());
    IvfIndex ivf(dim, Metric::L2, float32_lists(12, 3));
    ivf.train(n, base.data());
    std::vector<int64_t> twice(order);
    twice[7] = twice[8];
    std::vector<int64_t> outside(order);
    outside[0] = static_cast<int64_t>(n);
    for (const auto* bad : {&twice, &outside}) {
        auto block = block_of(shuffled, dim);
        EXPECT_THROW(ivf.adopt_rows(block, nullptr, nullptr, bad->data()), InvalidArgument);
        EXPECT_FALSE(block->taken());
        EXPECT_EQ(ivf.size(), 0u);
    }
}

// The rows in list order, in place: what reconstruct gives for list_labels; an index loaded
// from a file lies so too; an add breaks it (copy on write) and the view is then refused.
TEST(IvfAdopt, RowsInListOrderAreTheListsInPlace) {
    const size_t dim = 16, n = 2000;
    const auto base = test::clustered_vectors(n, dim, 8, 31);
    IvfIndex ivf(dim, Metric::Cosine, float32_lists(12, 3));
    ivf.train(n, base.data());
    ivf.adopt_rows(block_of(base, dim), nullptr, nullptr);
    const std::vector<int64_t> order = ivf.list_labels();
    std::vector<float> expected(n * dim);
    ivf.reconstruct_labels(n, order.data(), expected.data());
    {
        const PinnedView<float> view = ivf.view_rows_in_list_order();
        ASSERT_EQ(view.rows, n);
        ASSERT_EQ(view.cols, dim);
        EXPECT_EQ(std::vector<float>(view.data, view.data + n * dim), expected);
        const std::vector<float> extra(dim, 0.5f);
        const int64_t id = 999999;
        EXPECT_THROW(ivf.add(1, extra.data(), &id), InvalidArgument);  // pinned
    }
    const std::string path = ::testing::TempDir() + "adopt_view.snn";
    ivf.save(path);
    auto loaded = load_index(path, true);
    const PinnedView<float> mapped = dynamic_cast<IvfIndex&>(*loaded).view_rows_in_list_order();
    EXPECT_EQ(std::vector<float>(mapped.data, mapped.data + n * dim), expected);
    const std::vector<float> extra(dim, 0.5f);
    const int64_t id = 999999;
    ivf.add(1, extra.data(), &id);
    EXPECT_EQ(search(ivf, extra, 1, 0, 12).ids[0], id);
    EXPECT_THROW(ivf.view_rows_in_list_order(), Unsupported);
    std::remove(path.c_str());
}

// The lists' own rows searched in place (a self-join: rows_in_list_order's view) answer as
// copies of them, the in-place ones without the query checks or cosine's normalised copy.
TEST(IvfAdopt, ItsRowsSearchedInPlaceAnswerAsTheirCopies) {
    const size_t dim = 16, n = 2000, k = 5, nq = 300;
    const auto base = test::clustered_vectors(n, dim, 8, 33);
    for (Metric metric : {Metric::L2, Metric::Cosine}) {
        SCOPED_TRACE(metric_name(metric));
        IvfIndex ivf(dim, metric, float32_lists(12, 3, 2));
        ivf.train(n, base.data());
        ivf.adopt_rows(block_of(base, dim), nullptr, nullptr);
        const PinnedView<float> view = ivf.view_rows_in_list_order();
        const float* own = view.data + 500 * dim;
        const std::vector<float> copy(own, own + nq * dim);
        Results in_place{std::vector<int64_t>(nq * k), std::vector<float>(nq * k)};
        ivf.search(nq, own, k, in_place.ids.data(), in_place.dist.data(), SearchParams{});
        const Results copied = search(ivf, copy, k);
        EXPECT_EQ(in_place.ids, copied.ids);
        for (size_t i = 0; i < nq * k; ++i) EXPECT_NEAR(in_place.dist[i], copied.dist[i], 1e-5f * (1 + std::abs(copied.dist[i])));
    }
}

// Refusals leave the index empty and the block's rows as they were (cosine normalises in
// place only after every row and id passed).
TEST(IvfAdopt, RefusalsChangeNothing) {
    const size_t dim = 8, n = 500;
    const auto base = test::clustered_vectors(n, dim, 4, 41);
    const auto refused = [&](IvfIndex& ivf, const std::vector<float>& rows, const int64_t* ids, const int64_t* lists,
                             size_t block_dim) {
        auto block = std::make_shared<RowBlock>(rows.size() / block_dim, block_dim);
        std::copy(rows.begin(), rows.end(), block->data());
        EXPECT_THROW(ivf.adopt_rows(block, ids, lists), Error);
        EXPECT_FALSE(block->taken());
        EXPECT_EQ(std::memcmp(block->data(), rows.data(), rows.size() * sizeof(float)), 0);  // NaN too
        EXPECT_EQ(ivf.size(), 0u);
    };
    IvfIndex untrained(dim, Metric::Cosine, float32_lists(4, 2));
    refused(untrained, base, nullptr, nullptr, dim);

    IvfIndex ivf(dim, Metric::Cosine, float32_lists(4, 2));
    ivf.train(n, base.data());
    refused(ivf, std::vector<float>(base.begin(), base.begin() + 10 * 2 * dim), nullptr, nullptr, 2 * dim);  // dim
    std::vector<float> nan_row = base;
    nan_row[(n - 1) * dim + 3] = std::nanf("");
    refused(ivf, nan_row, nullptr, nullptr, dim);
    std::vector<float> zero_row = base;
    std::fill(zero_row.begin() + 7 * dim, zero_row.begin() + 8 * dim, 0.0f);
    refused(ivf, zero_row, nullptr, nullptr, dim);
    std::vector<int64_t> duplicate(n);
    std::iota(duplicate.begin(), duplicate.end(), 0);
    duplicate[n - 1] = 0;
    refused(ivf, base, duplicate.data(), nullptr, dim);
    std::vector<int64_t> outside(n, 1);
    outside[9] = 4;  // nlist = 4
    refused(ivf, base, nullptr, outside.data(), dim);

    IvfParams sq8 = float32_lists(4, 2);
    sq8.storage = Storage::Sq8;
    IvfIndex coded(dim, Metric::Cosine, sq8);
    coded.train(n, base.data());
    refused(coded, base, nullptr, nullptr, dim);

    // taken once; a non-empty index appends with add
    auto block = block_of(base, dim);
    ivf.adopt_rows(block, nullptr, nullptr);
    IvfIndex other(dim, Metric::Cosine, float32_lists(4, 2));
    other.train(n, base.data());
    EXPECT_THROW(other.adopt_rows(block, nullptr, nullptr), InvalidArgument);
    EXPECT_THROW(ivf.adopt_rows(block_of(base, dim), nullptr, nullptr), InvalidArgument);
    EXPECT_EQ(ivf.size(), n);
    EXPECT_THROW(RowBlock(size_t{1} << 62, 16), InvalidArgument);
}

// One block given to two indexes at once (a misuse): exactly one takes it, the other refuses
// before touching a row, and the one that took it answers as add would.
TEST(IvfAdopt, ConcurrentAdoptsOfOneBlockOneTakesIt) {
    const size_t dim = 16, n = 4000;
    const auto base = test::clustered_vectors(n, dim, 8, 61);
    for (int round = 0; round < 4; ++round) {
        IvfIndex a(dim, Metric::L2, float32_lists(8, 2)), b(dim, Metric::L2, float32_lists(8, 2)),
            added(dim, Metric::L2, float32_lists(8, 2));
        for (IvfIndex* ivf : {&a, &b, &added}) ivf->train(n, base.data());
        added.add(n, base.data(), nullptr);
        auto block = block_of(base, dim);
        std::atomic<int> taken{0}, refused{0};
        auto take = [&](IvfIndex& ivf) {
            try {
                ivf.adopt_rows(block, nullptr, nullptr);
                ++taken;
            } catch (const InvalidArgument&) {
                ++refused;
            }
        };
        std::thread first(take, std::ref(a)), second(take, std::ref(b));
        first.join();
        second.join();
        EXPECT_EQ(taken.load(), 1);
        EXPECT_EQ(refused.load(), 1);
        IvfIndex& winner = a.size() == n ? a : b;
        EXPECT_EQ((a.size() == n ? b : a).size(), 0u);
        EXPECT_EQ(search(winner, base, 3).ids, search(added, base, 3).ids);
    }
}

}  // namespace
}  // namespace sparknn
