// HNSW: recall against exact search for every metric, deterministic and
// parallel builds, file round trips (mapped and read), adding after a load,
// structural validation of crafted files, and degenerate inputs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/file.h"
#include "sparknn/hnsw.h"
#include "test_util.h"

namespace sparknn {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

using test::Results;
using test::search;

HnswParams small_params(size_t M = 16, size_t ef_construction = 100) {
    HnswParams p;
    p.M = M;
    p.ef_construction = ef_construction;
    p.ef_search = 64;
    p.seed = 7;
    return p;
}

std::unique_ptr<HnswIndex> build(Metric metric, const std::vector<float>& x, size_t dim, int threads,
                                 const HnswParams& params = small_params()) {
    auto index = std::make_unique<HnswIndex>(dim, metric, params);
    index->set_threads(threads);
    index->add(x.size() / dim, x.data(), nullptr);
    return index;
}

// Fraction of the exact k nearest (by label = default id) that were found.
double recall(const Results& r, std::vector<float> base, std::vector<float> queries, size_t dim, size_t k,
              Metric metric) {
    if (metric == Metric::Cosine) {
        test::normalise_rows(base, dim);
        test::normalise_rows(queries, dim);
    }
    const auto truth = test::naive_knn(metric, base, queries, dim, k);
    size_t hits = 0, total = 0;
    for (size_t q = 0; q < truth.size(); ++q) {
        std::set<int64_t> found(r.ids.begin() + q * k, r.ids.begin() + (q + 1) * k);
        for (const auto& t : truth[q]) hits += found.count(t.second);
        total += truth[q].size();
    }
    return static_cast<double>(hits) / static_cast<double>(total);
}


class HnswTest : public ::testing::Test {
  protected:
    void SetUp() override {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::temp_directory_path() / ("sparknn_hnsw_" + std::to_string(::getpid()) + "_" + info->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }
    std::string path(const std::string& name) const { return (dir_ / name).string(); }
    fs::path dir_;
};

// ------------------------------------------------------------ parameters

TEST(HnswParams, InvalidValuesAreRejected) {
    auto with = [](auto change) {
        HnswParams p;
        change(p);
        return p;
    };
    EXPECT_THROW(HnswIndex(8, Metric::L2, with([](HnswParams& p) { p.M = 1; })), InvalidArgument);
    EXPECT_THROW(HnswIndex(8, Metric::L2, with([](HnswParams& p) { p.M = 0; })), InvalidArgument);
    EXPECT_THROW(HnswIndex(8, Metric::L2, with([](HnswParams& p) { p.M = kHnswMaxM + 1; })), InvalidArgument);
    EXPECT_THROW(HnswIndex(8, Metric::L2, with([](HnswParams& p) { p.ef_construction = 0; })), InvalidArgument);
    EXPECT_THROW(HnswIndex(8, Metric::L2, with([](HnswParams& p) { p.ef_search = 0; })), InvalidArgument);
    IndexOptions o;
    o.M = 1;
    EXPECT_THROW(make_index(IndexKind::Hnsw, 8, Metric::L2, o), InvalidArgument);
    try {
        HnswIndex(8, Metric::L2, with([](HnswParams& p) { p.M = 1; }));
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("M must be >= 2"), std::string::npos) << e.what();
    }
    HnswIndex ok(8, Metric::L2, with([](HnswParams& p) { p.M = 2; }));
    EXPECT_THROW(ok.set_ef_search(0), InvalidArgument);
    ok.set_ef_search(5);
    EXPECT_EQ(ok.params().ef_search, 5u);
}

// ------------------------------------------------------------ recall

class HnswRecall : public ::testing::TestWithParam<Metric> {};

TEST_P(HnswRecall, AtLeast95PercentAtK10OnClusteredData) {
    const Metric metric = GetParam();
    const size_t dim = 32, n = 5000, nq = 200, k = 10;
    const auto base = test::clustered_vectors(n, dim, 50, 1);
    const auto queries = test::clustered_vectors(nq, dim, 50, 2);
    // Inner product is no metric (a point need not be its own nearest), so
    // its graph needs more links for the same recall, as in hnswlib.
    const bool ip = metric == Metric::InnerProduct;
    const auto index = build(metric, base, dim, /*threads=*/1, small_params(ip ? 32 : 16, 100));  // deterministic
    ASSERT_EQ(index->size(), n);
    const size_t ef = ip ? 200 : 100;
    EXPECT_GE(recall(search(*index, queries, k, ef), base, queries, dim, k, metric), 0.95);
    // a candidate list as long as the index is exact
    EXPECT_EQ(recall(search(*index, queries, k, n), base, queries, dim, k, metric), 1.0);
}

INSTANTIATE_TEST_SUITE_P(Metrics, HnswRecall, ::testing::Values(Metric::L2, Metric::InnerProduct, Metric::Cosine),
                         [](const auto& info) { return std::string(metric_name(info.param)); });

TEST(Hnsw, ResultsAreSortedAndCarryTheirTrueDistances) {
    const size_t dim = 17, n = 2000, k = 10;
    const auto base = test::clustered_vectors(n, dim, 20, 3);
    const auto queries = test::random_vectors(50, dim, 4);
    const auto index = build(Metric::L2, base, dim, 2);
    const Results r = search(*index, queries, k);
    for (size_t q = 0; q < 50; ++q) {
        for (size_t i = 0; i < k; ++i) {
            const int64_t id = r.ids[q * k + i];
            ASSERT_GE(id, 0);
            const double d = test::ref_distance(Metric::L2, &queries[q * dim], &base[size_t(id) * dim], dim);
            EXPECT_NEAR(r.dist[q * k + i], d, 1e-3 * (1 + d));
            if (i > 0) EXPECT_LE(r.dist[q * k + i - 1], r.dist[q * k + i]);
        }
    }
}

TEST(Hnsw, UserIdsAreReturned) {
    const size_t dim = 8, n = 300;
    const auto base = test::clustered_vectors(n, dim, 5, 5);
    std::vector<int64_t> ids(n);
    for (size_t i = 0; i < n; ++i) ids[i] = 1000 + 7 * static_cast<int64_t>(i);
    HnswIndex index(dim, Metric::L2, small_params(4, 32));
    index.add(n, base.data(), ids.data());
    // each stored vector finds itself first, under its user id
    const std::vector<float> first10(base.begin(), base.begin() + 10 * dim);
    const Results r = search(index, first10, 1, 32);
    for (size_t i = 0; i < 10; ++i) EXPECT_EQ(r.ids[i], ids[i]);
}

// ------------------------------------------------------------ determinism and threads

TEST_F(HnswTest, SingleThreadBuildIsDeterministicAcrossRunsAndBatches) {
    const size_t dim = 24, n = 3000;
    const auto base = test::clustered_vectors(n, dim, 30, 6);
    const auto a = build(Metric::Cosine, base, dim, 1);
    const auto b = build(Metric::Cosine, base, dim, 1);
    // the same data in three add() calls: levels depend on (seed, label) only
    HnswIndex c(dim, Metric::Cosine, small_params());
    c.set_threads(1);
    c.add(1000, base.data(), nullptr);
    c.add(1, base.data() + 1000 * dim, nullptr);
    c.add(n - 1001, base.data() + 1001 * dim, nullptr);
    a->save(path("a.snn"));
    b->save(path("b.snn"));
    c.save(path("c.snn"));
    const Bytes bytes_a = test::read_bytes(path("a.snn"));
    EXPECT_EQ(bytes_a, test::read_bytes(path("b.snn")));
    EXPECT_EQ(bytes_a, test::read_bytes(path("c.snn")));
    // a different seed gives a different graph
    HnswParams other = small_params();
    other.seed = 8;
    build(Metric::Cosine, base, dim, 1, other)->save(path("d.snn"));
    EXPECT_NE(bytes_a, test::read_bytes(path("d.snn")));
}

TEST(Hnsw, ParallelBuildKeepsRecallAndSearchThreadsAgree) {
    const size_t dim = 32, n = 4000, nq = 150, k = 10;
    const auto base = test::clustered_vectors(n, dim, 40, 9);
    const auto queries = test::clustered_vectors(nq, dim, 40, 10);
    // more threads than cores: inserts interleave as much as they can
    const auto index = build(Metric::L2, base, dim, 4);
    const Results parallel = search(*index, queries, k, 128);
    EXPECT_GE(recall(parallel, base, queries, dim, k, Metric::L2), 0.95);
    index->set_threads(1);
    EXPECT_EQ(search(*index, queries, k, 128), parallel);  // search itself is deterministic
}

TEST(Hnsw, VisitedTagsSurviveTheEpochWrapping) {
    // More than 65535 searches through one scratch (threads = 1) wrap the
    // 16-bit visited epoch; results must not change.
    const size_t dim = 4, n = 300, nq = 70000, k = 3;
    const auto base = test::random_vectors(n, dim, 11);
    const auto queries = test::random_vectors(nq, dim, 12);
    const auto index = build(Metric::L2, base, dim, 1, small_params(4, 20));
    const Results all = search(*index, queries, k, 8);
    const auto fresh = build(Metric::L2, base, dim, 1, small_params(4, 20));
    const std::vector<float> tail(queries.end() - 100 * dim, queries.end());
    const Results expected = search(*fresh, tail, k, 8);
    EXPECT_TRUE(std::equal(expected.ids.begin(), expected.ids.end(), all.ids.end() - 100 * k));
}

// ------------------------------------------------------------ files

TEST_F(HnswTest, SaveLoadGivesIdenticalResultsMappedAndRead) {
    const size_t dim = 20, n = 2500, k = 10;
    const auto base = test::clustered_vectors(n, dim, 25, 13);
    const auto queries = test::clustered_vectors(100, dim, 25, 14);
    for (Metric metric : {Metric::L2, Metric::InnerProduct, Metric::Cosine}) {
        SCOPED_TRACE(metric_name(metric));
        const auto index = build(metric, base, dim, 2, small_params(8, 64));
        index->set_ef_search(40);
        const Results expected = search(*index, queries, k);
        index->save(path("i.snn"));
        for (bool mmap : {true, false}) {
            const auto loaded = load_index(path("i.snn"), mmap);
            ASSERT_EQ(loaded->kind(), IndexKind::Hnsw);
            const auto& h = dynamic_cast<const HnswIndex&>(*loaded);
            EXPECT_EQ(h.params().M, 8u);
            EXPECT_EQ(h.params().ef_construction, 64u);
            EXPECT_EQ(h.params().ef_search, 40u);
            EXPECT_EQ(h.params().seed, 7u);
            EXPECT_EQ(h.max_level(), index->max_level());
            EXPECT_EQ(h.entry_point(), index->entry_point());
            EXPECT_EQ(search(*loaded, queries, k), expected);
        }
    }
}

TEST_F(HnswTest, AddingAfterLoadMatchesBuildingInOneGo) {
    const size_t dim = 16, n = 2000, k = 5;
    const auto base = test::clustered_vectors(n, dim, 20, 15);
    const auto queries = test::clustered_vectors(50, dim, 20, 16);
    const auto whole = build(Metric::L2, base, dim, 1);
    HnswIndex half(dim, Metric::L2, small_params());
    half.set_threads(1);
    half.add(n / 2, base.data(), nullptr);
    half.save(path("half.snn"));
    for (bool mmap : {true, false}) {
        auto loaded = load_index(path("half.snn"), mmap);
        loaded->set_threads(1);
        loaded->add(n / 2, base.data() + n / 2 * dim, nullptr);  // copies the mapped arrays on write
        EXPECT_EQ(search(*loaded, queries, k), search(*whole, queries, k));
        loaded->save(path("grown.snn"));
        whole->save(path("whole.snn"));
        EXPECT_EQ(test::read_bytes(path("grown.snn")), test::read_bytes(path("whole.snn")));
    }
}

TEST_F(HnswTest, EmptyIndexSavesLoadsAndGrows) {
    HnswIndex empty(6, Metric::Cosine, small_params());
    empty.save(path("e.snn"));
    auto loaded = load_index(path("e.snn"));
    EXPECT_EQ(loaded->size(), 0u);
    const std::vector<float> q(6, 1.0f);
    const Results none = search(*loaded, q, 3);
    EXPECT_EQ(none.ids, std::vector<int64_t>(3, -1));
    const auto x = test::random_vectors(40, 6, 17);
    loaded->add(40, x.data(), nullptr);
    const Results some = search(*loaded, q, 3, 8);
    for (int64_t id : some.ids) EXPECT_GE(id, 0);
}

// A saved image and accessors for its sections, to craft structurally bad files
// (checksums are skipped when loading them, so the structure checks must catch them).
class HnswCorruption : public HnswTest {
  protected:
    void SetUp() override {
        HnswTest::SetUp();
        // M = 2 and 400 nodes: several upper layers
        const auto base = test::random_vectors(kCount, kDim, 18);
        build(Metric::L2, base, kDim, 1, small_params(2, 16))->save(path("ok.snn"));
        image_ = test::read_bytes(path("ok.snn"));
        levels_ = section(SectionType::HnswLevels);
        links0_ = section(SectionType::HnswLinks0);
        offsets_ = section(SectionType::HnswUpperOffsets);
        upper_ = section(SectionType::HnswUpperLinks);
    }
    size_t section(SectionType type) const {
        uint32_t n;
        std::memcpy(&n, image_.data() + 20, 4);
        for (uint32_t i = 0; i < n; ++i) {
            const uint8_t* e = image_.data() + kHeaderSize + i * kSectionEntrySize;
            uint32_t t;
            uint64_t offset;
            std::memcpy(&t, e, 4);
            std::memcpy(&offset, e + 8, 8);
            if (t == static_cast<uint32_t>(type)) return static_cast<size_t>(offset);
        }
        ADD_FAILURE() << "no section " << static_cast<uint32_t>(type);
        return 0;
    }
    template <class T>
    T get(size_t at) const {
        T v;
        std::memcpy(&v, image_.data() + at, sizeof(T));
        return v;
    }
    template <class T>
    void put(Bytes& b, size_t at, T v) const {
        std::memcpy(b.data() + at, &v, sizeof(T));
    }
    // Offset of the value of parameter `name` in the Params section.
    size_t param_at(const std::string& name) const {
        const size_t p = section(SectionType::Params);
        for (size_t r = p;; r += sizeof(ParamRecord)) {
            if (name == reinterpret_cast<const char*>(image_.data() + r)) return r + 24;
        }
    }
    // A node whose top level is `level`.
    uint32_t node_with_level(int level) const {
        for (uint32_t i = 0; i < kCount; ++i) {
            if (image_[levels_ + i] == level) return i;
        }
        ADD_FAILURE() << "no node on level " << level;
        return 0;
    }
    void expect_rejected(const Bytes& bytes, const std::string& needle) const {
        try {
            HnswIndex::load(IndexFile::from_bytes(bytes, /*verify_checksums=*/false));
            ADD_FAILURE() << "loaded without error; expected '" << needle << "'";
        } catch (const FileFormatError& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    }

    static constexpr size_t kCount = 400, kDim = 4, kStride0 = 1 + 4, kStrideUp = 1 + 2;
    Bytes image_;
    size_t levels_ = 0, links0_ = 0, offsets_ = 0, upper_ = 0;
};

TEST_F(HnswCorruption, TheUntouchedImageLoads) {
    EXPECT_NO_THROW(HnswIndex::load(IndexFile::from_bytes(image_, false)));
    ASSERT_GT(node_with_level(2), 0u);  // the fixture really has upper layers
}

TEST_F(HnswCorruption, NeighbourOutOfRangeIsRejected) {
    for (uint32_t bad : {uint32_t{kCount}, uint32_t{0xffffffff}, uint32_t{0x80000000}}) {
        Bytes b = image_;
        ASSERT_GT(get<uint32_t>(links0_ + 7 * kStride0 * 4), 0u);
        put<uint32_t>(b, links0_ + (7 * kStride0 + 1) * 4, bad);
        expect_rejected(b, "links to node");
    }
    const uint32_t top = node_with_level(1);
    Bytes b = image_;
    put<uint32_t>(b, upper_ + (get<uint64_t>(offsets_ + top * 8) + 1) * 4, kCount + 5);
    expect_rejected(b, "links to node");
}

TEST_F(HnswCorruption, DegreeAboveCapacityIsRejected) {
    Bytes b = image_;
    put<uint32_t>(b, links0_ + 3 * kStride0 * 4, 5);  // layer 0 holds 2M = 4
    expect_rejected(b, "more than the 4");
    const uint32_t top = node_with_level(1);
    b = image_;
    put<uint32_t>(b, upper_ + get<uint64_t>(offsets_ + top * 8) * 4, 3);  // upper layers hold M = 2
    expect_rejected(b, "more than the 2");
}

TEST_F(HnswCorruption, UpperLinkToANodeMissingFromThatLayerIsRejected) {
    const uint32_t top = node_with_level(1), low = node_with_level(0);
    Bytes b = image_;
    const size_t row = upper_ + get<uint64_t>(offsets_ + top * 8) * 4;
    put<uint32_t>(b, row, 1);
    put<uint32_t>(b, row + 4, low);
    expect_rejected(b, "only reaches layer");
}

TEST_F(HnswCorruption, BadLevelsAndOffsetsAreRejected) {
    Bytes b = image_;
    b[levels_ + 5] = kHnswMaxLevel + 1;
    expect_rejected(b, "has level");
    b = image_;
    b[levels_ + node_with_level(0)] = 1;  // offsets no longer follow the levels
    expect_rejected(b, "offset");
    b = image_;
    put<uint64_t>(b, offsets_, 1);
    expect_rejected(b, "do not start at 0");
    b = image_;
    put<uint64_t>(b, offsets_ + kCount * 8, get<uint64_t>(offsets_ + kCount * 8) + 1000000);
    expect_rejected(b, "offset");
}

TEST_F(HnswCorruption, BadParametersAndEntryPointAreRejected) {
    Bytes b = image_;
    put<uint64_t>(b, param_at("M"), 1);
    expect_rejected(b, "M must be >= 2");
    b = image_;
    put<uint64_t>(b, param_at("M"), 3);  // sizes no longer match the sections
    expect_rejected(b, "bytes, expected");
    b = image_;
    put<uint64_t>(b, param_at("M"), uint64_t{1} << 62);
    expect_rejected(b, "M must be <=");
    b = image_;
    put<uint64_t>(b, param_at("ef_search"), 0);
    expect_rejected(b, "ef_search");
    b = image_;
    put<uint64_t>(b, param_at("entry_point"), kCount);
    expect_rejected(b, "entry point");
    b = image_;
    put<uint64_t>(b, param_at("entry_point"), node_with_level(0));
    expect_rejected(b, "entry point");
}

// ------------------------------------------------------------ degenerate inputs

TEST(Hnsw, TinyIndexesReturnEverythingPadded) {
    for (size_t n : {1, 2, 3}) {
        SCOPED_TRACE(n);
        const auto base = test::random_vectors(n, 5, 19);
        const auto index = build(Metric::L2, base, 5, 0, small_params(2, 1));
        const Results r = search(*index, base, 5, 1);  // ef raised to k >= n: exhaustive
        for (size_t q = 0; q < n; ++q) {
            EXPECT_EQ(r.ids[q * 5], static_cast<int64_t>(q));
            std::set<int64_t> got(r.ids.begin() + q * 5, r.ids.begin() + q * 5 + n);
            EXPECT_EQ(got.size(), n);
            for (size_t i = n; i < 5; ++i) {
                EXPECT_EQ(r.ids[q * 5 + i], -1);
                EXPECT_TRUE(std::isinf(r.dist[q * 5 + i]));
            }
        }
        // k = 1 with ef = 1 < n goes through the graph
        const Results g = search(*index, base, 1, 1);
        for (size_t q = 0; q < n; ++q) EXPECT_EQ(g.ids[q], static_cast<int64_t>(q));
    }
}

TEST(Hnsw, KLargerThanTheIndexReturnsAllItems) {
    const size_t dim = 6, n = 50, k = 60;
    const auto base = test::random_vectors(n, dim, 20);
    const auto index = build(Metric::InnerProduct, base, dim, 2, small_params(4, 16));
    const Results r = search(*index, test::random_vectors(3, dim, 21), k);
    for (size_t q = 0; q < 3; ++q) {
        std::set<int64_t> got(r.ids.begin() + q * k, r.ids.begin() + q * k + n);
        EXPECT_EQ(got.size(), n);
        EXPECT_EQ(*got.begin(), 0);
        EXPECT_EQ(r.ids[q * k + n], -1);
    }
}

TEST(Hnsw, IdenticalAndDuplicateVectorsTerminate) {
    const size_t dim = 8, k = 10;
    // all identical
    const std::vector<float> same(700 * dim, 0.5f);
    for (int threads : {1, 2}) {
        const auto index = build(Metric::L2, same, dim, threads, small_params(4, 32));
        const Results r = search(*index, std::vector<float>(same.begin(), same.begin() + dim), k, 16);
        std::set<int64_t> got(r.ids.begin(), r.ids.end());
        EXPECT_EQ(got.size(), k);
        for (float d : r.dist) EXPECT_EQ(d, 0.0f);
    }
    // every vector five times: each query still finds a copy of itself
    const auto distinct = test::random_vectors(200, dim, 22);
    std::vector<float> repeated;
    for (int copy = 0; copy < 5; ++copy) repeated.insert(repeated.end(), distinct.begin(), distinct.end());
    const auto index = build(Metric::Cosine, repeated, dim, 2, small_params(8, 64));
    const Results r = search(*index, distinct, k, 64);
    for (size_t q = 0; q < 200; ++q) EXPECT_EQ(r.ids[q * k] % 200, static_cast<int64_t>(q)) << "query " << q;
}

}  // namespace
}  // namespace sparknn
