// Index::adopt_rows for flat and hnsw (a RowBlock's rows kept in place as the index's
// vectors): the same index as add(), and nothing changed on a refusal. ivf: test_ivf_adopt.cpp.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/flat.h"
#include "sparknn/hnsw.h"
#include "sparknn/row_block.h"
#include "test_util.h"

namespace sparknn {
namespace {

using test::block_of;
using test::file_bytes;
using test::Results;
using test::search;

// hnsw on one thread: its graph then depends on nothing but the rows and the seed.
std::unique_ptr<Index> make(bool hnsw, size_t dim, Metric metric, Storage storage = Storage::Float32) {
    std::unique_ptr<Index> index;
    if (hnsw) {
        HnswParams p;
        p.M = 8;
        p.ef_construction = 40;
        index = std::make_unique<HnswIndex>(dim, metric, p, storage);
    } else {
        index = std::make_unique<FlatIndex>(dim, metric, storage);
    }
    index->set_threads(1);
    return index;
}

// Both kinds, every metric, ids given or generated, rows in label order or shuffled with
// an order: the adopted index answers, reconstructs and saves as the added one, and keeps
// the block's memory as its vectors.
TEST(Adopt, FlatAndHnswAdoptedRowsGiveTheAddedIndex) {
    const size_t dim = 20, n = 1500, k = 6;
    const auto base = test::clustered_vectors(n, dim, 10, 71);
    const auto queries = test::clustered_vectors(30, dim, 10, 72);
    std::vector<int64_t> ids(n);
    for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int64_t>(7 * (n - i));
    const auto [order, shuffled] = test::shuffled_rows(base, dim, 9);  // label r's vector at row order[r]
    const std::string path_added = ::testing::TempDir() + "adopt_kind_added.snn";
    const std::string path_adopted = ::testing::TempDir() + "adopt_kind_adopted.snn";
    for (bool hnsw : {false, true}) {
        for (Metric metric : {Metric::L2, Metric::Cosine, Metric::InnerProduct}) {
            for (bool with_order : {false, true}) {
                SCOPED_TRACE(testing::Message() << (hnsw ? "hnsw" : "flat") << " metric " << static_cast<int>(metric)
                                                << " order " << with_order);
                auto added = make(hnsw, dim, metric), adopted = make(hnsw, dim, metric);
                const int64_t* id_ptr = with_order ? ids.data() : nullptr;
                added->add(n, base.data(), id_ptr);
                auto block = block_of(with_order ? shuffled : base, dim);
                const float* memory = block->data();
                adopted->adopt_rows(block, id_ptr, with_order ? order.data() : nullptr);
                EXPECT_TRUE(block->taken());
                block.reset();  // the index keeps the rows alive
                ASSERT_EQ(adopted->size(), n);
                EXPECT_EQ(adopted->view_vectors().data, memory);  // in place, not copied
                const Results a = search(*added, queries, k, 50), b = search(*adopted, queries, k, 50);
                EXPECT_EQ(a.ids, b.ids);
                EXPECT_EQ(a.dist, b.dist);
                std::vector<float> ra(n * dim), rb(n * dim);
                added->reconstruct(0, n, ra.data());
                adopted->reconstruct(0, n, rb.data());
                EXPECT_EQ(ra, rb);
                added->save(path_added);
                adopted->save(path_adopted);
                EXPECT_EQ(file_bytes(path_added), file_bytes(path_adopted));
                // a later add appends (the adopted rows copied first), as to the added index
                const auto more = test::clustered_vectors(40, dim, 10, 73);
                added->add(40, more.data(), nullptr);
                adopted->add(40, more.data(), nullptr);
                EXPECT_EQ(search(*added, queries, k, 50).ids, search(*adopted, queries, k, 50).ids);
            }
        }
    }
    std::remove(path_added.c_str());
    std::remove(path_adopted.c_str());
}

// Queries that are the index's own adopted rows (a self-join searching in place) skip the
// query checks and the cosine copy: they answer as copies of those rows do. A pointer into the
// block off a row's start is no row of it: such queries are checked and normalised as any.
TEST(Adopt, QueriesThatAreItsOwnRowsAnswerAsTheirCopies) {
    const size_t dim = 24, n = 800, k = 5, nq = 40;
    for (bool hnsw : {false, true}) {
        for (Metric metric : {Metric::L2, Metric::Cosine, Metric::InnerProduct}) {
            SCOPED_TRACE(std::string(hnsw ? "hnsw " : "flat ") + metric_name(metric));
            auto index = make(hnsw, dim, metric);
            auto block = block_of(test::clustered_vectors(n, dim, 8, 81), dim);
            index->adopt_rows(block, nullptr);
            const float* own = block->data() + 100 * dim;  // rows 100.. (normalised in place under cosine)
            auto answer = [&](const float* queries) {
                Results r{std::vector<int64_t>(nq * k), std::vector<float>(nq * k)};
                index->search(nq, queries, k, r.ids.data(), r.dist.data(), SearchParams{});
                return r;
            };
            const std::vector<float> copy(own, own + nq * dim);
            const Results in_place = answer(own), copied = answer(copy.data());
            EXPECT_EQ(in_place.ids, copied.ids);
            for (size_t i = 0; i < nq * k; ++i) EXPECT_NEAR(in_place.dist[i], copied.dist[i], 1e-5f * (1 + std::abs(copied.dist[i])));
            // off a row's start: rows made of two stored halves (not unit: cosine must normalise them)
            const float* off = block->data() + 100 * dim + dim / 2;
            const std::vector<float> off_copy(off, off + nq * dim);
            EXPECT_EQ(answer(off), answer(off_copy.data()));
        }
    }
}

TEST(Adopt, FlatAndHnswRefusalsChangeNothing) {
    const size_t dim = 8, n = 300;
    const auto base = test::clustered_vectors(n, dim, 4, 81);
    for (bool hnsw : {false, true}) {
        SCOPED_TRACE(hnsw ? "hnsw" : "flat");
        const auto refused = [&](Index& index, const std::vector<float>& rows, const int64_t* ids,
                                 const int64_t* order, size_t block_dim) {
            auto block = std::make_shared<RowBlock>(rows.size() / block_dim, block_dim);
            std::copy(rows.begin(), rows.end(), block->data());
            EXPECT_THROW(index.adopt_rows(block, ids, order), Error);
            EXPECT_FALSE(block->taken());
            EXPECT_EQ(std::memcmp(block->data(), rows.data(), rows.size() * sizeof(float)), 0);  // NaN too
            EXPECT_EQ(index.size(), 0u);
        };
        auto index = make(hnsw, dim, Metric::Cosine);
        refused(*index, std::vector<float>(base.begin(), base.begin() + 10 * 2 * dim), nullptr, nullptr, 2 * dim);
        std::vector<float> nan_row = base;
        nan_row[(n - 1) * dim + 3] = std::nanf("");
        refused(*index, nan_row, nullptr, nullptr, dim);
        std::vector<float> zero_row = base;  // cosine: no direction
        std::fill(zero_row.begin() + 7 * dim, zero_row.begin() + 8 * dim, 0.0f);
        refused(*index, zero_row, nullptr, nullptr, dim);
        std::vector<int64_t> duplicate(n);
        std::iota(duplicate.begin(), duplicate.end(), 0);
        duplicate[n - 1] = 0;
        refused(*index, base, duplicate.data(), nullptr, dim);
        std::vector<int64_t> twice(n);
        std::iota(twice.begin(), twice.end(), 0);
        twice[3] = twice[4];
        refused(*index, base, nullptr, twice.data(), dim);
        auto half = make(hnsw, dim, Metric::Cosine, Storage::Float16);  // 16-bit rows are not the block's
        refused(*half, base, nullptr, nullptr, dim);

        // taken once; a non-empty index appends with add
        auto block = block_of(base, dim);
        index->adopt_rows(block, nullptr);
        auto other = make(hnsw, dim, Metric::Cosine);
        EXPECT_THROW(other->adopt_rows(block, nullptr), InvalidArgument);
        EXPECT_THROW(index->adopt_rows(block_of(base, dim), nullptr), InvalidArgument);
        EXPECT_EQ(index->size(), n);
        EXPECT_EQ(other->size(), 0u);
    }
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SPARKNN_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define SPARKNN_SANITIZED 1
#endif
#endif

// An hnsw adopt whose graph cannot be allocated hands the block back as it was given
// (rows in the caller's order): the rows are reordered only once the graph's arrays exist.
TEST(Adopt, HnswOutOfMemoryHandsTheBlockBackUnchanged) {
#if defined(SPARKNN_SANITIZED)
    GTEST_SKIP() << "sanitizers reserve address space: an address-space limit cannot stand for a full memory";
#else
    const size_t dim = 8, n = 5000;
    const auto base = test::clustered_vectors(n, dim, 4, 83);
    std::vector<int64_t> order(n);
    std::iota(order.rbegin(), order.rend(), 0);  // reversed: every row would move
    HnswParams p;
    p.M = kHnswMaxM;  // level 0 alone: n * (2M + 1) * 4 bytes = 82 MB
    HnswIndex index(dim, Metric::L2, p);
    index.set_threads(1);
    auto block = block_of(base, dim);
    rlimit before{};
    ASSERT_EQ(getrlimit(RLIMIT_AS, &before), 0);
    long pages = 0;
    {
        std::ifstream statm("/proc/self/statm");
        statm >> pages;
    }
    ASSERT_GT(pages, 0);
    bool threw = false;
    {
        rlimit tight = before;
        tight.rlim_cur = static_cast<rlim_t>(pages) * 4096 + (48u << 20);
        ASSERT_EQ(setrlimit(RLIMIT_AS, &tight), 0);
        try {
            index.adopt_rows(block, nullptr, order.data());
        } catch (...) {
            threw = true;
        }
        setrlimit(RLIMIT_AS, &before);
    }
    ASSERT_TRUE(threw);
    EXPECT_FALSE(block->taken());
    EXPECT_EQ(std::memcmp(block->data(), base.data(), base.size() * sizeof(float)), 0);
    EXPECT_EQ(index.size(), 0u);
#endif
}

}  // namespace
}  // namespace sparknn
