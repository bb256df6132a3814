#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <numeric>
#include <set>
#include <string>

#include "sparknn/distance.h"
#include "sparknn/error.h"
#include "sparknn/flat.h"
#include "sparknn/ivf.h"
#include "sparknn/kmeans.h"
#include "list_bound.h"
#include "tile_bf16.h"
#include "test_util.h"

namespace sparknn {
namespace {

using test::ivf_params;

using test::Results;
using test::search;

double recall(const Results& found, const Results& truth, size_t nq, size_t k) {
    size_t hits = 0;
    for (size_t q = 0; q < nq; ++q) {
        std::set<int64_t> t(truth.ids.begin() + q * k, truth.ids.begin() + (q + 1) * k);
        for (size_t i = 0; i < k; ++i) hits += t.count(found.ids[q * k + i]);
    }
    return double(hits) / double(nq * k);
}

// A PQ distance: the table entries the code selects, summed by the kernels in use.
float table_sum(const std::vector<float>& table, const std::vector<uint8_t>& code) {
    float d = 0;
    kernels().pq_scan(table.data(), code.data(), 1, code.size(), 0.0f, &d);
    return d;
}

TEST(KMeans, RecoversSeparatedClusters) {
    const size_t dim = 8, per = 200, k = 5;
    std::vector<float> x;
    for (size_t c = 0; c < k; ++c) {
        auto noise = test::random_vectors(per, dim, 10 + c);
        for (size_t i = 0; i < per * dim; ++i) x.push_back(noise[i] * 0.1f + (i % dim == c ? 50.0f : 0.0f));
    }
    const KMeansResult r = kmeans(x.data(), per * k, dim, k);
    // every true cluster maps to exactly one centroid
    for (size_t c = 0; c < k; ++c) {
        std::set<uint32_t> labels(r.assignment.begin() + c * per, r.assignment.begin() + (c + 1) * per);
        EXPECT_EQ(labels.size(), 1u) << "cluster " << c;
    }
    std::set<uint32_t> all(r.assignment.begin(), r.assignment.end());
    EXPECT_EQ(all.size(), k);
    EXPECT_THROW(kmeans(x.data(), 3, dim, 4), InvalidArgument);
}

// Many well separated clusters, as many centroids: D^2 seeding in batches
// (about 64 rounds here, 4 centres each) must still cover almost every true
// cluster, where uniform seeding leaves ~1/e of them without a centroid.
TEST(KMeans, BatchedSeedingCoversManyClusters) {
    const size_t dim = 16, per = 40, k = 256;
    std::vector<float> x;
    const auto centres = test::random_vectors(k, dim, 77);
    const auto noise = test::random_vectors(k * per, dim, 78);
    for (size_t c = 0; c < k; ++c) {
        for (size_t i = 0; i < per; ++i) {
            for (size_t j = 0; j < dim; ++j) x.push_back(centres[c * dim + j] * 100.0f + noise[(c * per + i) * dim + j]);
        }
    }
    KMeansParams p;
    p.threads = 2;
    const KMeansResult r = kmeans(x.data(), k * per, dim, k, p);
    size_t pure = 0;  // true clusters whose points all share one centroid used by no other cluster
    std::vector<size_t> owners(k, 0);
    for (size_t c = 0; c < k; ++c) {
        std::set<uint32_t> labels(r.assignment.begin() + c * per, r.assignment.begin() + (c + 1) * per);
        for (uint32_t l : labels) ++owners[l];
    }
    for (size_t c = 0; c < k; ++c) {
        std::set<uint32_t> labels(r.assignment.begin() + c * per, r.assignment.begin() + (c + 1) * per);
        pure += labels.size() == 1 && owners[*labels.begin()] == 1;
    }
    EXPECT_GE(pure, k * 9 / 10) << "pure " << pure;
    // deterministic for a seed, whatever the thread count of the seeding
    p.threads = 1;
    const KMeansResult again = kmeans(x.data(), k * per, dim, k, p);
    EXPECT_EQ(again.assignment, r.assignment);
}

class IvfExact : public ::testing::TestWithParam<Metric> {};

// Probing every list is exhaustive: the same answers as exact search.
TEST_P(IvfExact, AllListsEqualsFlat) {
    const Metric metric = GetParam();
    const size_t dim = 24, n = 3000, nq = 50, k = 10;
    const auto base = test::clustered_vectors(n, dim, 20, 1);
    const auto queries = test::clustered_vectors(nq, dim, 20, 2);
    IvfIndex ivf(dim, metric, ivf_params(32, 32));
    ivf.add(n, base.data(), nullptr);
    FlatIndex flat(dim, metric);
    flat.add(n, base.data(), nullptr);
    const Results a = search(ivf, queries, k), b = search(flat, queries, k);
    for (size_t i = 0; i < nq * k; ++i) {
        EXPECT_NEAR(a.dist[i], b.dist[i], 1e-3f * (1 + std::fabs(b.dist[i])));
    }
    EXPECT_GE(recall(a, b, nq, k), 0.99);  // ids may differ only at exact ties
}

INSTANTIATE_TEST_SUITE_P(Metrics, IvfExact, ::testing::Values(Metric::L2, Metric::InnerProduct, Metric::Cosine));

struct CodecCase {
    Storage storage;
    Metric metric;
    double min_recall;
};

class IvfRecall : public ::testing::TestWithParam<CodecCase> {};

// Documented parameters: nlist = 64 on 8k points, nprobe = 8.
TEST_P(IvfRecall, RecallAtTen) {
    const CodecCase c = GetParam();
    const size_t dim = 32, n = 8000, nq = 200, k = 10;
    const auto base = test::clustered_vectors(n, dim, 50, 3);
    const auto queries = test::clustered_vectors(nq, dim, 50, 4);
    IvfIndex ivf(dim, c.metric, ivf_params(64, 8, c.storage));
    ivf.set_threads(2);
    ivf.add(n, base.data(), nullptr);
    FlatIndex flat(dim, c.metric);
    flat.add(n, base.data(), nullptr);
    const double r = recall(search(ivf, queries, k), search(flat, queries, k), nq, k);
    EXPECT_GE(r, c.min_recall) << storage_name(c.storage);
}

// PQ with exact re-ranking of 10x candidates, at the documented parameters.
TEST(IvfPq, RerankedRecallAtTen) {
    const size_t dim = 32, n = 8000, nq = 200, k = 10;
    const auto base = test::clustered_vectors(n, dim, 50, 3);
    const auto queries = test::clustered_vectors(nq, dim, 50, 4);
    for (Metric metric : {Metric::L2, Metric::Cosine}) {
        IvfParams p = ivf_params(64, 8, Storage::Pq);
        p.pq_m = 8;
        p.rerank = 10;
        IvfIndex ivf(dim, metric, p);
        ivf.add(n, base.data(), nullptr);
        FlatIndex flat(dim, metric);
        flat.add(n, base.data(), nullptr);
        const Results truth = search(flat, queries, k);
        EXPECT_GE(recall(search(ivf, queries, k), truth, nq, k), 0.9) << metric_name(metric);
        // without re-ranking, PQ distances still rank well above chance
        IvfParams plain = p;
        plain.rerank = 0;
        IvfIndex compressed(dim, metric, plain);
        compressed.add(n, base.data(), nullptr);
        EXPECT_GE(recall(search(compressed, queries, k), truth, nq, k), 0.4) << metric_name(metric);
    }
}

// The lookup-table distance is the exact distance to the reconstruction.
TEST(ProductQuantizer, TableDistanceEqualsReconstructionDistance) {
    const size_t dim = 12, m = 3;
    const auto x = test::random_vectors(600, dim, 21);
    ProductQuantizer pq(dim, m);
    pq.train(600, x.data(), 1, 1, 5);
    std::vector<uint8_t> code(m);
    std::vector<float> table(m * 256);
    for (size_t i = 0; i < 20; ++i) {
        pq.encode(&x[i * dim], code.data());
        std::vector<float> recon(dim);
        for (size_t j = 0; j < m; ++j) {
            for (size_t t = 0; t < dim / m; ++t) recon[j * (dim / m) + t] = pq.codebooks()[(j * 256 + code[j]) * (dim / m) + t];
        }
        const float* q = &x[(i + 100) * dim];
        pq.l2_table(q, table.data());
        EXPECT_NEAR(table_sum(table, code), test::ref_distance(Metric::L2, q, recon.data(), dim), 1e-3);
        pq.ip_table(q, table.data());
        EXPECT_NEAR(table_sum(table, code), test::ref_distance(Metric::InnerProduct, q, recon.data(), dim),
                    1e-3);
        // the chosen code is the nearest reconstruction of x itself
        pq.l2_table(&x[i * dim], table.data());
        for (size_t j = 0; j < m; ++j) {
            const float chosen = table[j * 256 + code[j]];
            for (size_t c = 0; c < 256; ++c) EXPECT_LE(chosen, table[j * 256 + c] + 1e-5f);
        }
    }
    EXPECT_THROW(ProductQuantizer(10, 3), InvalidArgument);
    ProductQuantizer small(dim, m);
    EXPECT_THROW(small.train(100, x.data(), 1, 1, 5), InvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Codecs, IvfRecall,
                         ::testing::Values(CodecCase{Storage::Float32, Metric::L2, 0.95},
                                           CodecCase{Storage::Float32, Metric::Cosine, 0.95},
                                           CodecCase{Storage::Sq8, Metric::L2, 0.93},
                                           CodecCase{Storage::Sq8, Metric::Cosine, 0.93},
                                           CodecCase{Storage::Sq8, Metric::InnerProduct, 0.90}));

TEST(Ivf, SaveLoadRoundTripAndAddAfterLoad) {
    const size_t dim = 16, n = 2000, k = 5;
    const auto base = test::clustered_vectors(n, dim, 10, 5);
    const auto queries = test::clustered_vectors(20, dim, 10, 6);
    const std::string path = ::testing::TempDir() + "ivf_roundtrip.snn";
    for (Storage storage : {Storage::Float32, Storage::Sq8, Storage::Pq}) {
        IvfParams p = ivf_params(16, 4, storage);
        if (storage == Storage::Pq) p.rerank = 4;
        IvfIndex ivf(dim, Metric::L2, p);
        ivf.add(n, base.data(), nullptr);
        ivf.save(path);
        for (bool mmap : {true, false}) {
            auto loaded = load_index(path, mmap);
            ASSERT_EQ(loaded->kind(), IndexKind::Ivf);
            ASSERT_EQ(loaded->size(), n);
            const Results a = search(ivf, queries, k), b = search(*loaded, queries, k);
            EXPECT_EQ(a.ids, b.ids);
            EXPECT_EQ(a.dist, b.dist);
            const std::vector<float> extra(dim, 0.5f);
            const int64_t id = 99999;
            loaded->add(1, extra.data(), &id);
            const Results c = search(*loaded, extra, 1, 0, 16);
            EXPECT_EQ(c.ids[0], id);
        }
    }
    std::remove(path.c_str());
}

// Lists appended in many batches, then their reserved growth returned: every
// answer is the same, on owned and on mapped (view) lists, and adds go on.
TEST(Ivf, ShrinkToFitKeepsEveryAnswer) {
    const size_t dim = 16, n = 3000, k = 5;
    const auto base = test::clustered_vectors(n, dim, 10, 7);
    const auto queries = test::clustered_vectors(30, dim, 10, 8);
    const std::string path = ::testing::TempDir() + "ivf_shrink.snn";
    for (Storage storage : {Storage::Float32, Storage::Sq8, Storage::Float16}) {
        IvfParams p = ivf_params(16, 4, storage);
        if (storage == Storage::Sq8) p.rerank = 2;
        IvfIndex ivf(dim, Metric::L2, p);
        for (size_t lo = 0; lo < n; lo += 128) ivf.add(std::min<size_t>(128, n - lo), base.data() + lo * dim, nullptr);
        const Results before = search(ivf, queries, k);
        ivf.shrink_to_fit();
        const Results after = search(ivf, queries, k);
        EXPECT_EQ(before.ids, after.ids);
        EXPECT_EQ(before.dist, after.dist);
        const std::vector<float> extra(dim, 0.25f);
        const int64_t id = 77777;
        ivf.add(1, extra.data(), &id);
        EXPECT_EQ(search(ivf, extra, 1, 0, 16).ids[0], id);
        ivf.save(path);
        auto loaded = load_index(path, true);
        loaded->shrink_to_fit();  // mapped lists are views: nothing to return, nothing changes
        EXPECT_EQ(search(*loaded, queries, k).ids, search(ivf, queries, k).ids);
    }
    std::remove(path.c_str());
}

// A builder that assigned every vector first reserves each list's final size, then adds:
// the same index as adds alone (answers, file), whatever the storage; bad counts are refused.
TEST(Ivf, ReservedListsGiveTheSameIndex) {
    const size_t dim = 16, n = 3000, k = 5;
    const auto base = test::clustered_vectors(n, dim, 10, 7);
    const auto queries = test::clustered_vectors(30, dim, 10, 8);
    for (Storage storage : {Storage::Float32, Storage::Sq8, Storage::Float16}) {
        IvfParams p = ivf_params(16, 4, storage);
        if (storage == Storage::Sq8) p.rerank = 2;
        IvfIndex plain(dim, Metric::L2, p), reserved(dim, Metric::L2, p);
        plain.train(n, base.data());
        reserved.train(n, base.data());
        std::vector<int64_t> nearest(n);
        reserved.nearest_lists(n, base.data(), 1, nearest.data());
        std::vector<int64_t> counts(p.nlist, 0);
        for (int64_t l : nearest) ++counts[static_cast<size_t>(l)];
        std::vector<int64_t> negative(counts);
        negative[3] = -1;
        EXPECT_THROW(reserved.reserve_lists(negative.data()), InvalidArgument);
        reserved.reserve_lists(counts.data());
        EXPECT_EQ(reserved.size(), 0u);  // room, not vectors
        for (size_t lo = 0; lo < n; lo += 128) {
            const size_t m = std::min<size_t>(128, n - lo);
            plain.add(m, base.data() + lo * dim, nullptr);
            reserved.add_to_lists(m, base.data() + lo * dim, nullptr, nearest.data() + lo);
        }
        EXPECT_EQ(plain.list_sizes(), reserved.list_sizes());
        const Results a = search(plain, queries, k), b = search(reserved, queries, k);
        EXPECT_EQ(a.ids, b.ids);
        EXPECT_EQ(a.dist, b.dist);
    }
    IvfIndex untrained(dim, Metric::L2, ivf_params(16, 4));
    const std::vector<int64_t> counts(16, 1);
    EXPECT_THROW(untrained.reserve_lists(counts.data()), InvalidArgument);
}

// Room no machine holds was std::length_error ("vector::reserve", a ValueError in Python)
// or a wrapped size: now an InvalidArgument that says so, the index unchanged and usable.
TEST(Ivf, ReservingTooMuchRoomIsRefusedClearly) {
    const size_t dim = 8, n = 500;
    const auto base = test::random_vectors(n, dim, 21);
    for (Storage storage : {Storage::Float32, Storage::Float16, Storage::Sq8}) {
        IvfParams p = ivf_params(4, 4, storage);
        if (storage == Storage::Sq8) p.rerank = 2;  // keeps float32 copies: more bytes per vector
        IvfIndex ivf(dim, Metric::L2, p);
        ivf.train(n, base.data());
        ivf.add(n / 2, base.data(), nullptr);
        const Results before = search(ivf, base, 3);
        const int64_t huge = int64_t{1} << 62, large = int64_t{1} << 44;  // 2^44 x >= 18 bytes: ~300 TB
        for (const std::vector<int64_t>& extra : {std::vector<int64_t>{huge, 0, 0, 0},
                                                   std::vector<int64_t>{huge, huge, huge, huge},
                                                   std::vector<int64_t>{0, large, 0, 1}}) {
            try {
                ivf.reserve_lists(extra.data());
                ADD_FAILURE() << storage_name(storage) << ": reserved " << extra[0] << ", " << extra[1];
            } catch (const InvalidArgument& e) {
                const std::string what = e.what();
                EXPECT_EQ(what.rfind("reserve_lists: room for ", 0), 0u) << what;
                EXPECT_NE(what.find("the next adds need"), std::string::npos) << what;
            }
            EXPECT_EQ(ivf.size(), n / 2);
        }
        EXPECT_EQ(search(ivf, base, 3), before);
        const std::vector<int64_t> fine(4, 100);
        ivf.reserve_lists(fine.data());
        ivf.add(n - n / 2, base.data() + n / 2 * dim, nullptr);
        EXPECT_EQ(ivf.size(), n);
    }
}

TEST(Ivf, TrainingErrorsAndUntrainedSave) {
    const size_t dim = 4;
    const auto base = test::random_vectors(10, dim, 7);
    IvfIndex too_many_lists(dim, Metric::L2, ivf_params(64, 4));
    EXPECT_THROW(too_many_lists.add(10, base.data(), nullptr), InvalidArgument);
    EXPECT_EQ(too_many_lists.size(), 0u);
    // an untrained, empty index saves and loads
    const std::string path = ::testing::TempDir() + "ivf_empty.snn";
    too_many_lists.save(path);
    auto loaded = load_index(path, true);
    EXPECT_EQ(loaded->size(), 0u);
    EXPECT_EQ(dynamic_cast<const IvfIndex&>(*loaded).params().nlist, 64u);  // the configured nlist survives
    EXPECT_FALSE(dynamic_cast<const IvfIndex&>(*loaded).is_trained());
    std::remove(path.c_str());
    // automatic nlist works for small data
    IvfIndex automatic(dim, Metric::L2, ivf_params(0, 2));
    automatic.add(10, base.data(), nullptr);
    EXPECT_GE(automatic.nlist(), 1u);
    EXPECT_LE(automatic.nlist(), 10u);
}

// train() samples the raw rows and normalises only the sample; add() on an
// untrained index normalises every row and then samples: the same centroids.
TEST(Ivf, TrainingSampleIsDrawnBeforeNormalising) {
    const size_t dim = 8, n = 6000, nlist = 20;
    auto base = test::clustered_vectors(n, dim, 10, 5);
    for (size_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < dim; ++j) base[i * dim + j] *= 1.0f + static_cast<float>(i % 7);  // not unit length
    }
    IvfParams p = ivf_params(nlist, 2);
    p.train_size = 1500;
    IvfIndex trained(dim, Metric::Cosine, p), added(dim, Metric::Cosine, p);
    trained.train(n, base.data());
    added.add(n, base.data(), nullptr);
    ASSERT_EQ(trained.nlist(), nlist);
    EXPECT_EQ(trained.centroids(), added.centroids());
    EXPECT_EQ(trained.centroids().size(), nlist * dim);
    // Rows outside the sample are not read by training (they are validated when added).
    base[0] = std::numeric_limits<float>::quiet_NaN();
    IvfParams whole = p;
    whole.train_size = n;
    IvfIndex strict(dim, Metric::Cosine, whole);
    EXPECT_THROW(strict.train(n, base.data()), InvalidArgument);
    EXPECT_THROW(trained.add(n, base.data(), nullptr), InvalidArgument);
}

// A self-join computes each item's lists once: add_to_lists with column 0 and
// search with the given lists answer exactly as add and search do.
TEST(Ivf, GivenListsEqualQuantizerLists) {
    const size_t dim = 16, n = 4000, k = 10, nprobe = 4;
    const auto base = test::clustered_vectors(n, dim, 30, 12);
    for (Metric metric : {Metric::L2, Metric::Cosine}) {
        IvfIndex plain(dim, metric, ivf_params(40, nprobe));
        plain.add(n, base.data(), nullptr);
        IvfIndex given(dim, metric, ivf_params(40, nprobe));
        given.train(n, base.data());
        std::vector<int64_t> lists(n * nprobe), first(n);
        given.nearest_lists(n, base.data(), nprobe, lists.data());
        for (size_t i = 0; i < n; ++i) first[i] = lists[i * nprobe];
        given.add_to_lists(n, base.data(), nullptr, first.data());
        for (size_t l = 0; l < given.nlist(); ++l) EXPECT_EQ(given.list_size(l), plain.list_size(l));
        Results a{std::vector<int64_t>(n * k), std::vector<float>(n * k)}, b = a;
        plain.search(n, base.data(), k, a.ids.data(), a.dist.data());
        SearchParams sp;
        sp.nprobe = nprobe;
        sp.lists = lists.data();
        given.search(n, base.data(), k, b.ids.data(), b.dist.data(), sp);
        EXPECT_EQ(a.ids, b.ids);
        EXPECT_EQ(a.dist, b.dist);
    }
}

TEST(Ivf, GivenListsValidated) {
    const size_t dim = 4, n = 100;
    const auto base = test::random_vectors(n, dim, 13);
    IvfIndex ivf(dim, Metric::L2, ivf_params(8, 2));
    std::vector<int64_t> lists(n, 0);
    EXPECT_THROW(ivf.add_to_lists(n, base.data(), nullptr, lists.data()), InvalidArgument);  // untrained
    ivf.train(n, base.data());
    lists[7] = 8;  // nlist = 8
    EXPECT_THROW(ivf.add_to_lists(n, base.data(), nullptr, lists.data()), InvalidArgument);
    lists[7] = -1;
    EXPECT_THROW(ivf.add_to_lists(n, base.data(), nullptr, lists.data()), InvalidArgument);
    EXPECT_EQ(ivf.size(), 0u);  // nothing added by a rejected call
    lists[7] = 3;
    ivf.add_to_lists(n, base.data(), nullptr, lists.data());
    EXPECT_EQ(ivf.list_size(0), n - 1);

    Results out{std::vector<int64_t>(3), std::vector<float>(3)};
    std::vector<int64_t> probes = {1, 1};
    SearchParams sp;
    sp.nprobe = 2;
    sp.lists = probes.data();
    EXPECT_THROW(ivf.search(1, base.data(), 3, out.ids.data(), out.dist.data(), sp), InvalidArgument);  // twice
    probes = {1, 9};
    EXPECT_THROW(ivf.search(1, base.data(), 3, out.ids.data(), out.dist.data(), sp), InvalidArgument);  // range
    sp.nprobe = 0;
    probes = {0, 3};
    EXPECT_THROW(ivf.search(1, base.data(), 3, out.ids.data(), out.dist.data(), sp), InvalidArgument);  // width
    sp.nprobe = 2;
    ivf.search(1, base.data(), 3, out.ids.data(), out.dist.data(), sp);
    EXPECT_EQ(out.ids[0], 0);  // vector 0 is in list 0 and is its own nearest
}

// reconstruct: exact for float32 and with rerank, decoded for sq8/pq; works on a mapped file.
TEST(Ivf, ReconstructStoredVectors) {
    const size_t dim = 16, n = 2000;
    const auto base = test::clustered_vectors(n, dim, 20, 21);
    struct Case {
        Storage storage;
        size_t rerank;
        float tolerance;
    };
    for (const Case c : {Case{Storage::Float32, 0, 0.0f}, Case{Storage::Sq8, 0, 0.05f},
                         Case{Storage::Pq, 0, 1.0f}, Case{Storage::Pq, 2, 0.0f}}) {
        IvfParams p = ivf_params(16, 4, c.storage);
        p.pq_m = 8;
        p.rerank = c.rerank;
        IvfIndex ivf(dim, Metric::L2, p);
        ivf.add(n, base.data(), nullptr);
        const std::string path = ::testing::TempDir() + "ivf_reconstruct.snn";
        ivf.save(path);
        auto loaded = load_index(path, true);
        const IvfIndex* mapped = dynamic_cast<const IvfIndex*>(loaded.get());
        ASSERT_NE(mapped, nullptr);
        for (const IvfIndex* index : {static_cast<const IvfIndex*>(&ivf), mapped}) {
            std::vector<float> out(300 * dim);
            index->reconstruct(1700, 300, out.data());
            float worst = 0;
            for (size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::fabs(out[i] - base[1700 * dim + i]));
            EXPECT_LE(worst, c.tolerance) << storage_name(c.storage) << " rerank " << c.rerank;
            EXPECT_THROW(index->reconstruct(1900, 101, out.data()), InvalidArgument);
            // list_labels: every label once, list after list; reconstruct_labels gathers them.
            const std::vector<int64_t> order = index->list_labels();
            ASSERT_EQ(order.size(), n);
            std::vector<int64_t> sorted = order;
            std::sort(sorted.begin(), sorted.end());
            for (size_t i = 0; i < n; ++i) ASSERT_EQ(sorted[i], static_cast<int64_t>(i));
            std::vector<int64_t> assigned(n);
            index->nearest_lists(n, base.data(), 1, assigned.data());
            for (size_t l = 0, at = 0; l < index->nlist(); ++l) {
                for (size_t r = 0; r < index->list_size(l); ++r, ++at) {
                    ASSERT_EQ(assigned[static_cast<size_t>(order[at])], static_cast<int64_t>(l));
                }
            }
            std::vector<float> gathered(n * dim), plain(n * dim);
            index->reconstruct_labels(n, order.data(), gathered.data());
            index->reconstruct(0, n, plain.data());
            for (size_t i = 0; i < n; ++i) {
                ASSERT_EQ(0, std::memcmp(&gathered[i * dim], &plain[static_cast<size_t>(order[i]) * dim], dim * 4));
            }
            const int64_t outside[] = {5, static_cast<int64_t>(n)};
            EXPECT_THROW(index->reconstruct_labels(2, outside, gathered.data()), InvalidArgument);
        }
        std::remove(path.c_str());
    }
}

// Lists too small for k are widened: always min(k, n) neighbours, padding only past n.
TEST(Ivf, ShortListsWidenToMinKN) {
    const size_t dim = 4, n = 40;
    const auto base = test::random_vectors(n, dim, 8);
    for (Storage storage : {Storage::Float32, Storage::Sq8}) {
        IvfIndex ivf(dim, Metric::L2, ivf_params(8, 1, storage));  // ~5 vectors per list, 1 probed
        ivf.add(n, base.data(), nullptr);
        const std::vector<float> q(base.begin(), base.begin() + 3 * dim);
        for (size_t k : {size_t{20}, size_t{40}, size_t{60}}) {
            const Results r = search(ivf, q, k);
            for (size_t row = 0; row < 3; ++row) {
                std::set<int64_t> seen;
                for (size_t i = 0; i < k; ++i) {
                    const int64_t id = r.ids[row * k + i];
                    if (i < std::min(k, n)) {
                        EXPECT_GE(id, 0) << "k=" << k << " rank " << i;
                        seen.insert(id);
                    } else {
                        EXPECT_EQ(id, -1);
                        EXPECT_TRUE(std::isinf(r.dist[row * k + i]));
                    }
                }
                EXPECT_EQ(seen.size(), std::min(k, n));  // no duplicates
            }
        }
        // widen = false: exactly the probed list, padded (a part of a distributed index)
        SearchParams exact_lists;
        exact_lists.widen = false;
        Results r{std::vector<int64_t>(20), std::vector<float>(20)};
        ivf.search(1, base.data(), 20, r.ids.data(), r.dist.data(), exact_lists);
        EXPECT_EQ(r.ids[19], -1);
        EXPECT_GE(r.ids[0], 0);
    }
}

// A crafted file (valid header checksum, checksums not verified) with a list
// label out of range must be rejected, not used.
TEST(Ivf, CorruptListsRejected) {
    const size_t dim = 8, n = 500;
    const auto base = test::random_vectors(n, dim, 9);
    IvfIndex ivf(dim, Metric::L2, ivf_params(8, 2));
    ivf.add(n, base.data(), nullptr);
    const std::string path = ::testing::TempDir() + "ivf_corrupt.snn";
    ivf.save(path);
    std::ifstream in(path, std::ios::binary);
    const std::vector<uint8_t> good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::remove(path.c_str());
    const auto section_offset = [&](SectionType type) { return test::section_offset(good, type); };
    EXPECT_NO_THROW(load_index(IndexFile::from_bytes(good, false)));
    {
        auto bad = good;
        const int64_t label = static_cast<int64_t>(n) + 7;
        std::memcpy(bad.data() + section_offset(SectionType::IvfLabels), &label, 8);
        EXPECT_THROW(load_index(IndexFile::from_bytes(bad, false)), FileFormatError);
        EXPECT_THROW(load_index(IndexFile::from_bytes(bad, true)), FileFormatError);
    }
    {
        auto bad = good;
        const uint64_t offset = n + 1;
        std::memcpy(bad.data() + section_offset(SectionType::IvfListOffsets) + 8, &offset, 8);
        EXPECT_THROW(load_index(IndexFile::from_bytes(bad, false)), FileFormatError);
    }
    {
        auto bad = good;
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(bad.data() + section_offset(SectionType::IvfCentroids), &nan, 4);
        EXPECT_THROW(load_index(IndexFile::from_bytes(bad, false)), FileFormatError);
    }
}

// float32 with rerank: a bf16 first pass (AVX512_BF16 CPUs) whose candidates
// are re-ranked from the lists: exact distances, the plain scan's answers but
// for near ties, no float32 copies in the file; below AVX-512 the plain scan.
TEST(Ivf, Float32RerankScansInBf16) {
    const size_t dim = 96, n = 6000, nq = 300, k = 10;
    const auto base = test::clustered_vectors(n, dim, 40, 31);
    const auto queries = test::clustered_vectors(nq, dim, 40, 32);
    for (Metric metric : {Metric::L2, Metric::Cosine, Metric::InnerProduct}) {
        IvfIndex plain(dim, metric, ivf_params(32, 4));
        IvfParams p = ivf_params(32, 4);
        p.rerank = 2;
        IvfIndex fast(dim, metric, p);
        plain.add(n, base.data(), nullptr);
        fast.add(n, base.data(), nullptr);
        const Results want = search(plain, queries, k);
        const Results got = search(fast, queries, k);
        EXPECT_GE(recall(got, want, nq, k), 0.99) << metric_name(metric);
        // every distance is the exact float32 distance of the id returned
        std::vector<float> row(dim);
        for (size_t i = 0; i < nq * k; ++i) {
            fast.reconstruct(static_cast<size_t>(got.ids[i]), 1, row.data());
            const float exact = static_cast<float>(test::ref_distance(
                metric, queries.data() + (i / k) * dim, row.data(), dim));
            if (metric != Metric::Cosine) {
                ASSERT_NEAR(got.dist[i], exact, 1e-4f * (1.0f + std::fabs(exact))) << metric_name(metric);
            }
        }
        const std::string path = ::testing::TempDir() + "ivf_float32_rerank.snn";
        fast.save(path);
        auto loaded = load_index(path, true);
        const Results again = search(*loaded, queries, k);
        EXPECT_EQ(again.ids, got.ids) << metric_name(metric);
        EXPECT_EQ(std::ifstream(path, std::ios::binary | std::ios::ate).tellg(),
                  [&] { plain.save(path); return std::ifstream(path, std::ios::binary | std::ios::ate).tellg(); }())
            << "float32 re-ranks from its lists: no copies saved";
        std::remove(path.c_str());

        const SimdLevel level = simd_level();
        set_simd_level(SimdLevel::Avx2 <= cpu_simd_level() ? SimdLevel::Avx2 : SimdLevel::Scalar);
        const Results exact_scan = search(fast, queries, k);
        const Results plain_again = search(plain, queries, k);
        // no bf16 tiles: a float32 sgemm scan, its candidates re-ranked by the distance kernels,
        // so an answer does not depend on the queries searched with it (sgemm rounds a product
        // by its place in the matrix): the first 7 queries alone, then the others
        Results split{std::vector<int64_t>(nq * k), std::vector<float>(nq * k)};
        fast.search(7, queries.data(), k, split.ids.data(), split.dist.data());
        fast.search(nq - 7, queries.data() + 7 * dim, k, split.ids.data() + 7 * k, split.dist.data() + 7 * k);
        set_simd_level(level);
        EXPECT_EQ(exact_scan.ids, plain_again.ids) << "no bf16 tiles: the float32 scan";
        for (size_t i = 0; i < nq * k; ++i) {
            ASSERT_NEAR(exact_scan.dist[i], plain_again.dist[i], 1e-4f * (1.0f + std::fabs(plain_again.dist[i])));
        }
        EXPECT_EQ(split, exact_scan) << metric_name(metric) << ": the answers depend on the batch";
    }
}

// A dense cluster far from the origin (0.5 +- 0.01 per value): its differences
// are below bf16's resolution of the values themselves, kept only by packing
// residuals to the list's centroid. The bf16 pass must still find the plain scan's
// neighbours.
TEST(Ivf, Bf16ScanKeepsATightClusterFarFromTheOrigin) {
    const size_t dim = 16, n = 3000, nq = 400, k = 8;
    std::mt19937_64 rng(5);
    std::normal_distribution<float> normal;
    std::vector<float> base(n * dim), queries(nq * dim);
    for (float& v : base) v = 0.5f + 0.01f * normal(rng);
    for (size_t i = 0; i < nq * dim; ++i) queries[i] = base[i * 7] + 0.001f * normal(rng);
    IvfIndex plain(dim, Metric::L2, ivf_params(8, 8));
    IvfParams p = ivf_params(8, 8);
    p.rerank = 2;
    IvfIndex fast(dim, Metric::L2, p);
    plain.add(n, base.data(), nullptr);
    fast.add(n, base.data(), nullptr);
    EXPECT_GE(recall(search(fast, queries, k), search(plain, queries, k), nq, k), 0.99);
}

// search_nprobes: the answers at each nprobe of a ladder from one scan equal
// search's at that nprobe (widening off), float32 and bf16 scans alike; the
// ladder is checked.
TEST(Ivf, SearchAtEachNprobeEqualsSearch) {
    const size_t dim = 48, n = 6000, nq = 500, k = 10;
    const auto base = test::clustered_vectors(n, dim, 40, 41);
    const auto queries = test::clustered_vectors(nq, dim, 40, 42);
    // the first from a selection per rank, the second scan by scan (values above kRankHeapsTop)
    for (const std::vector<size_t>& ladder : {std::vector<size_t>{1, 2, 3, 5, 8, 32}, std::vector<size_t>{1, 20, 24, 32}})
    for (size_t rerank : {0, 2}) {
        IvfParams p = ivf_params(32, 4);
        p.rerank = rerank;
        IvfIndex ivf(dim, Metric::L2, p);
        ivf.add(n, base.data(), nullptr);
        std::vector<int64_t> ids(ladder.size() * nq * k);
        std::vector<float> dist(ladder.size() * nq * k);
        ivf.search_nprobes(nq, queries.data(), k, ladder.data(), ladder.size(), ids.data(), dist.data());
        for (size_t e = 0; e < ladder.size(); ++e) {
            SearchParams sp;
            sp.nprobe = ladder[e];
            sp.widen = false;
            Results want{std::vector<int64_t>(nq * k), std::vector<float>(nq * k)};
            ivf.search(nq, queries.data(), k, want.ids.data(), want.dist.data(), sp);
            const Results got{std::vector<int64_t>(ids.begin() + e * nq * k, ids.begin() + (e + 1) * nq * k),
                              std::vector<float>(dist.begin() + e * nq * k, dist.begin() + (e + 1) * nq * k)};
            EXPECT_GE(recall(got, want, nq, k), 0.995) << "nprobe " << ladder[e] << " rerank " << rerank;
            if (rerank == 0) {  // float32: the same distances (up to the products' rounding)
                for (size_t i = 0; i < nq * k; ++i) {
                    if (got.ids[i] == want.ids[i]) ASSERT_NEAR(got.dist[i], want.dist[i], 1e-3f * (1 + want.dist[i]));
                }
            }
        }
        const size_t bad[] = {2, 2};
        EXPECT_THROW(ivf.search_nprobes(nq, queries.data(), k, bad, 2, ids.data(), dist.data()), InvalidArgument);
        const size_t too_many[] = {33};
        EXPECT_THROW(ivf.search_nprobes(nq, queries.data(), k, too_many, 1, ids.data(), dist.data()), InvalidArgument);
        const size_t zero[] = {0};
        EXPECT_THROW(ivf.search_nprobes(nq, queries.data(), k, zero, 1, ids.data(), dist.data()), InvalidArgument);
    }
}

// The distance of a to b in double under `metric` (cosine: of the normalised vectors).
double exact_distance(Metric metric, const float* a, const float* b, size_t dim) {
    double dot = 0, na = 0, nb = 0, l2 = 0;
    for (size_t d = 0; d < dim; ++d) {
        dot += double(a[d]) * b[d];
        na += double(a[d]) * a[d];
        nb += double(b[d]) * b[d];
        l2 += (double(a[d]) - b[d]) * (double(a[d]) - b[d]);
    }
    if (metric == Metric::L2) return l2;
    if (metric == Metric::Cosine) return 1.0 - dot / std::sqrt(na * nb);
    return -dot;
}

// Rows far from the origin (1000 +- 1 per value), where |q|^2 + |x|^2 - 2 q . x cancels in
// float32 (recall@10 0.28 so): every scan takes L2 distances of residuals to a centre, the
// float32 scan (a list's centroid, GemmScanner::Centring::Auto), the bf16 scan and the
// quantizer alike; flat takes the rows' mean (test_flat.cpp).
TEST(Ivf, ScansKeepRowsFarFromTheOrigin) {
    const size_t dim = 64, n = 4000, nq = 300, k = 10;
    auto base = test::random_vectors(n, dim, 71);
    for (float& v : base) v = 1000.0f + v;
    const std::vector<float> queries(base.begin(), base.begin() + nq * dim);
    std::vector<std::set<int64_t>> want(nq);
    for (size_t q = 0; q < nq; ++q) {
        std::vector<std::pair<double, int64_t>> all(n);
        for (size_t i = 0; i < n; ++i) all[i] = {exact_distance(Metric::L2, &queries[q * dim], &base[i * dim], dim), int64_t(i)};
        std::partial_sort(all.begin(), all.begin() + k, all.end());
        for (size_t i = 0; i < k; ++i) want[q].insert(all[i].second);
    }
    for (size_t rerank : {0, 2}) {
        IvfParams p = ivf_params(32, 32);
        p.rerank = rerank;
        IvfIndex ivf(dim, Metric::L2, p);
        ivf.add(n, base.data(), nullptr);
        for (size_t batch : {nq, size_t{1}}) {  // many queries per list, and one (float32 in every scan)
            size_t hits = 0;
            for (size_t q0 = 0; q0 < nq; q0 += batch) {
                const std::vector<float> part(queries.begin() + q0 * dim, queries.begin() + (q0 + batch) * dim);
                const Results got = search(ivf, part, k);
                for (size_t q = 0; q < batch; ++q) {
                    for (size_t i = 0; i < k; ++i) hits += want[q0 + q].count(got.ids[q * k + i]);
                }
            }
            EXPECT_GE(double(hits) / double(nq * k), 0.99) << "rerank " << rerank << " batch " << batch;
        }
    }
}

// search_ladder_and_exact: the ladder's answers are search_nprobes', and the exact answer
// of every query it proves is a true top k (each neighbour within float32 rounding of the
// k-th distance in double). Near ties that the bf16 scan cannot order (rows at equal
// distance up to its error) cannot all be proven: those are left to the caller, never
// answered wrong.
// The exact answer's pruning skips a list when this bound exceeds a query's k-th distance: it
// must never exceed the distance the re-ranking computes to any row within the radius, for
// every metric, at every distance (rows and queries near, on and far from the centre).
TEST(Ivf, ListLowerBoundNeverExceedsARowsDistance) {
    const DistanceKernels& kern = kernels();
    for (size_t dim : {3, 64, 784}) {
        for (Metric metric : {Metric::L2, Metric::Cosine, Metric::InnerProduct}) {
            SCOPED_TRACE(std::string(metric_name(metric)) + " dim " + std::to_string(dim));
            const size_t n = 400, nq = 60;
            std::vector<float> centre = test::random_vectors(1, dim, 91 + dim);
            std::vector<float> rows = test::random_vectors(n, dim, 92 + dim), queries = test::random_vectors(nq, dim, 93 + dim);
            const auto unit = [dim](float* x) {
                double s = 0;
                for (size_t d = 0; d < dim; ++d) s += double(x[d]) * x[d];
                for (size_t d = 0; d < dim; ++d) x[d] = float(x[d] / std::sqrt(s));
            };
            if (metric == Metric::Cosine) unit(centre.data());
            // rows at spreads 0.01 .. 1 around the centre (cosine: .. 0.3 of the unit sphere's 2)
            const double widest = metric == Metric::Cosine ? 0.3 : 1.0;
            for (size_t i = 0; i < n; ++i) {
                const double spread = 0.01 + (widest - 0.01) * double(i % 20) / 19.0;
                for (size_t d = 0; d < dim; ++d) rows[i * dim + d] = float(centre[d] + spread * rows[i * dim + d] / std::sqrt(double(dim)));
                if (metric == Metric::Cosine) unit(rows.data() + i * dim);
            }
            for (size_t q = 0; q < nq; ++q) {  // queries from on the centre to far away
                const double away = q == 0 ? 0.0 : std::pow(10.0, -2.0 + 5.0 * double(q) / double(nq));
                for (size_t d = 0; d < dim; ++d) queries[q * dim + d] = float(centre[d] + away * queries[q * dim + d]);
                if (metric == Metric::Cosine) unit(queries.data() + q * dim);
            }
            double radius = 0;
            for (size_t i = 0; i < n; ++i) radius = std::max(radius, double(kern.l2sq(rows.data() + i * dim, centre.data(), dim)));
            radius = std::sqrt(radius) * 1.001;  // as IvfIndex::list_extents keeps it
            size_t useful = 0;
            for (size_t q = 0; q < nq; ++q) {
                const float* query = queries.data() + q * dim;
                const double qnorm = std::sqrt(double(kern.dot(query, query, dim)));
                const double bound = list_lower_bound(metric, dim, query, qnorm, centre.data(), radius);
                double nearest = std::numeric_limits<double>::infinity();
                for (size_t i = 0; i < n; ++i) {
                    const float* x = rows.data() + i * dim;
                    const double got = metric == Metric::L2 ? kern.l2sq(query, x, dim)
                                       : metric == Metric::Cosine ? 1.0f - kern.dot(query, x, dim)
                                                                  : -kern.dot(query, x, dim);
                    nearest = std::min(nearest, got);
                }
                ASSERT_LE(bound, nearest) << "query " << q;
                // and it bounds: far queries get a bound near their nearest row's distance
                if (bound > nearest - 0.5 * std::fabs(nearest)) ++useful;
            }
            EXPECT_GE(useful, nq / 4);
        }
    }
}

TEST(Ivf, LadderAndExactProvesOnlyExactAnswers) {
    const size_t dim = 64, n = 6000, nq = 200, k = 10;
    struct Case {
        const char* name;
        std::vector<float> base, queries;
        Metric metric;
    };
    std::vector<Case> cases;
    cases.push_back({"clustered l2", test::clustered_vectors(n, dim, 40, 51), test::clustered_vectors(nq, dim, 40, 52),
                     Metric::L2});
    cases.push_back({"clustered cosine", test::clustered_vectors(n, dim, 40, 53),
                     test::clustered_vectors(nq, dim, 40, 54), Metric::Cosine});
    {  // rows of norm 1 +- 0.05 orthogonal to u, queries s u (s in [50, 150)): a query's
       // distance to a row is s^2 + |r|^2, while the bf16 product s u . r is off by ~0.05
        std::vector<float> u = test::random_vectors(1, dim, 55);
        double un = 0;
        for (float v : u) un += double(v) * v;
        for (float& v : u) v = float(v / std::sqrt(un));
        const auto raw = test::random_vectors(n, dim, 56), jitter = test::random_vectors(n, 1, 57);
        Case shell{"near ties l2", std::vector<float>(n * dim), std::vector<float>(nq * dim), Metric::L2};
        for (size_t i = 0; i < n; ++i) {
            double along = 0, norm = 0;
            for (size_t d = 0; d < dim; ++d) along += double(raw[i * dim + d]) * u[d];
            std::vector<double> r(dim);
            for (size_t d = 0; d < dim; ++d) norm += (r[d] = raw[i * dim + d] - along * u[d]) * r[d];
            const double scale = (1.0 + 0.05 * std::tanh(double(jitter[i]))) / std::sqrt(norm);
            for (size_t d = 0; d < dim; ++d) shell.base[i * dim + d] = float(r[d] * scale);
        }
        for (size_t q = 0; q < nq; ++q) {
            for (size_t d = 0; d < dim; ++d) shell.queries[q * dim + d] = float((50.0 + 0.5 * q) * u[d]);
        }
        cases.push_back(std::move(shell));
    }
    const std::vector<size_t> ladder = {1, 2, 4, 16, 32};
    for (const Case& c : cases) {
        for (size_t rerank : {0, 2}) {
            IvfParams p = ivf_params(32, 4);
            p.rerank = rerank;
            IvfIndex ivf(dim, c.metric, p);
            ivf.add(n, c.base.data(), nullptr);
            std::vector<int64_t> ids((ladder.size() + 1) * nq * k), want_ids(ladder.size() * nq * k);
            std::vector<float> dist(ids.size()), want_dist(want_ids.size());
            std::vector<uint8_t> proven(nq, 7);
            ivf.search_ladder_and_exact(nq, c.queries.data(), k, ladder.data(), ladder.size(), ids.data(), dist.data(),
                                        proven.data());
            ivf.search_nprobes(nq, c.queries.data(), k, ladder.data(), ladder.size(), want_ids.data(), want_dist.data());
            // the answers below nlist are search_nprobes'; at nlist too for a float32 scan, whose
            // skipped lists hold none of its k (these rows lie near the origin: no list is scanned
            // less its centroid); with bf16 tiles the skips can change the candidates re-ranked there
            const size_t same = rerank ? (ladder.size() - 1) * nq * k : want_ids.size();
            ASSERT_TRUE(std::equal(want_ids.begin(), want_ids.begin() + same, ids.begin())) << c.name << " rerank " << rerank;
            size_t proved = 0;
            for (size_t q = 0; q < nq; ++q) {
                ASSERT_LE(proven[q], 1);
                if (!proven[q]) continue;
                ++proved;
                const float* query = c.queries.data() + q * dim;
                std::vector<double> all(n);
                double scale = 0;
                for (size_t i = 0; i < n; ++i) {
                    all[i] = exact_distance(c.metric, query, c.base.data() + i * dim, dim);
                    scale = std::max(scale, std::fabs(all[i]));
                }
                std::vector<double> sorted = all;
                std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end());
                const double kth = sorted[k - 1], tol = 4e-7 * scale + 1e-6;
                std::set<int64_t> seen;
                for (size_t i = 0; i < k; ++i) {
                    const int64_t id = ids[ladder.size() * nq * k + q * k + i];
                    ASSERT_TRUE(id >= 0 && seen.insert(id).second) << c.name << " query " << q;
                    ASSERT_LE(all[size_t(id)], kth + tol)
                        << c.name << " rerank " << rerank << " query " << q << ": a proven answer is not a top " << k;
                }
            }
            const bool approximate = rerank > 0 && bf16_tiles_preferred();
            if (!approximate || std::string(c.name) != "near ties l2") {
                EXPECT_GE(proved, nq * 95 / 100) << c.name << " rerank " << rerank;
            } else {
                EXPECT_LT(proved, nq / 2) << "near ties beyond the bf16 scan's precision were proven";
            }
        }
    }
    IvfIndex ivf(dim, Metric::L2, ivf_params(32, 4));
    ivf.add(n, cases[0].base.data(), nullptr);
    std::vector<int64_t> ids(3 * nq * k);
    std::vector<float> dist(ids.size());
    std::vector<uint8_t> proven(nq);
    const size_t short_ladder[] = {1, 16};  // not ending at nlist
    EXPECT_THROW(ivf.search_ladder_and_exact(nq, cases[0].queries.data(), k, short_ladder, 2, ids.data(), dist.data(),
                                             proven.data()),
                 InvalidArgument);
    IvfIndex sq8(dim, Metric::L2, ivf_params(32, 4, Storage::Sq8));
    sq8.add(n, cases[0].base.data(), nullptr);
    const size_t all[] = {32};
    EXPECT_THROW(sq8.search_ladder_and_exact(nq, cases[0].queries.data(), k, all, 1, ids.data(), dist.data(), proven.data()),
                 InvalidArgument);
}

// A float32 scan's exact answer skips lists by the scan's own rounding (scan_error_bounds): far
// from the origin, uncentred L2 distances |q|^2 + |x|^2 - 2 q . x are off by thousands, so a list
// the exact distances rule out can still be nearer as the scan computes it. The exact answer must
// be the full scan's; an error bound of 0 skips such lists and changes it.
TEST(Ivf, Float32ExactAnswerSkipsOnlyWhatItsRoundingAllows) {
    const size_t dim = 16, nlist = 32, copies = 12, k = 10, nq = 400;
    // list l: `copies` rows at O + d_l, O = 10^4 (1, ..., 1), |d_l| = 3, the d_l summing to 0
    // over dimensions (so |O + d_l| is the same for every l); each list's radius is 0
    const auto raw = test::random_vectors(nlist + nq, dim, 71);
    auto offset = [&](size_t i, double length) {
        std::vector<double> d(dim);
        double mean = 0, norm = 0;
        for (size_t j = 0; j < dim; ++j) mean += raw[i * dim + j] / double(dim);
        for (size_t j = 0; j < dim; ++j) norm += (d[j] = raw[i * dim + j] - mean) * d[j];
        for (double& v : d) v *= length / std::sqrt(norm);
        return d;
    };
    std::vector<float> points(nlist * dim);
    for (size_t l = 0; l < nlist; ++l) {
        const std::vector<double> d = offset(l, 3.0);
        for (size_t j = 0; j < dim; ++j) points[l * dim + j] = float(1e4 + d[j]);
    }
    IvfIndex ivf(dim, Metric::L2, ivf_params(nlist, nlist));
    ivf.train(nlist, points.data());
    std::vector<float> rows;
    std::vector<int64_t> ids, lists;
    for (size_t c = 0; c < copies; ++c) {
        rows.insert(rows.end(), points.begin(), points.end());
        for (size_t l = 0; l < nlist; ++l) ids.push_back(int64_t(ids.size())), lists.push_back(int64_t(l));
    }
    // each row in its own point's list (the index's centroids are the points, in some order)
    std::vector<int64_t> own(nlist, -1);
    for (size_t l = 0; l < nlist; ++l) {
        for (size_t c = 0; c < nlist; ++c) {
            if (std::equal(points.begin() + l * dim, points.begin() + (l + 1) * dim, ivf.centroid_data() + c * dim)) {
                own[l] = int64_t(c);
            }
        }
        ASSERT_GE(own[l], 0) << "point " << l << " is no centroid";
    }
    for (size_t i = 0; i < lists.size(); ++i) lists[i] = own[size_t(lists[i])];
    ivf.add_to_lists(rows.size() / dim, rows.data(), ids.data(), lists.data());
    // near queries O + e (|e| = 2) alternate with queries at the origin, which probe every list
    // too and keep every list's scan uncentred (GemmScanner's Centring::Auto)
    std::vector<float> queries(nq * dim, 0.0f);
    for (size_t q = 0; q < nq; q += 2) {
        const std::vector<double> e = offset(nlist + q, 2.0);
        for (size_t j = 0; j < dim; ++j) queries[q * dim + j] = float(1e4 + e[j]);
    }
    const size_t ladder[] = {16, nlist};
    std::vector<int64_t> got(3 * nq * k), want(2 * nq * k);
    std::vector<float> got_d(got.size()), want_d(want.size());
    std::vector<uint8_t> proven(nq);
    ivf.search_ladder_and_exact(nq, queries.data(), k, ladder, 2, got.data(), got_d.data(), proven.data());
    ivf.search_nprobes(nq, queries.data(), k, ladder, 2, want.data(), want_d.data());
    const int64_t* exact = got.data() + 2 * nq * k;
    const int64_t* full = want.data() + nq * k;  // the scan of every list
    size_t far_rows = 0;  // rows of lists that exact distances rank 16th or beyond, in the full scan's answers
    for (size_t q = 0; q < nq; q += 2) {
        std::vector<std::pair<double, size_t>> ranked;
        for (size_t l = 0; l < nlist; ++l) {
            double d = 0;
            for (size_t j = 0; j < dim; ++j) d += std::pow(double(queries[q * dim + j]) - points[l * dim + j], 2);
            ranked.emplace_back(d, l);
        }
        std::sort(ranked.begin(), ranked.end());
        std::set<size_t> far;
        for (size_t r = 16; r < nlist; ++r) far.insert(ranked[r].second);
        for (size_t i = 0; i < k; ++i) far_rows += far.count(size_t(full[q * k + i]) % nlist);
    }
    EXPECT_GT(far_rows, 0u) << "the data do not exercise the bound: no far list's row is in a full scan's answer";
    for (size_t q = 0; q < nq; ++q) {
        EXPECT_EQ(proven[q], 1) << "query " << q;
        for (size_t i = 0; i < k; ++i) {
            ASSERT_EQ(exact[q * k + i], full[q * k + i]) << "query " << q << " rank " << i;
            ASSERT_EQ(got_d[2 * nq * k + q * k + i], want_d[nq * k + q * k + i]) << "query " << q << " rank " << i;
        }
    }
}

}  // namespace
}  // namespace sparknn
