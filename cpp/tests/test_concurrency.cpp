// One index shared by threads that add, search, save, load and change settings
// at once (issue 16: concurrent add and search crashed the process or returned
// distances that belonged to other ids; saves during adds wrote torn files).
// Bounded iteration counts, no timing: run under ASan and TSan in test.sh.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/hnsw.h"
#include "sparknn/ivf.h"
#include "test_util.h"

namespace sparknn {
namespace {

constexpr size_t kDim = 16;
constexpr size_t kFirst = 400;  // vectors before the threads start
constexpr size_t kBatch = 20;   // per add
constexpr size_t kAdds = 30;
constexpr size_t kTotal = kFirst + kBatch * kAdds;
constexpr size_t kK = 6;
constexpr size_t kSearchLimit = 600;  // searches, over all searcher threads

// Ids are not labels (a result that returned a label would not pass for an id).
int64_t id_of_row(size_t row) { return static_cast<int64_t>(7 * row + 3); }

struct StressCase {
    IndexKind kind;
    Metric metric;
};

std::string case_name(const ::testing::TestParamInfo<StressCase>& info) {
    return std::string(kind_name(info.param.kind)) + "_" + metric_name(info.param.metric);
}

std::unique_ptr<Index> make(const StressCase& c) {
    IndexOptions o;
    o.M = 8;
    o.ef_construction = 40;
    o.ef_search = 32;
    o.nlist = 8;
    o.nprobe = 3;
    auto index = make_index(c.kind, kDim, c.metric, o);
    index->set_threads(2);
    return index;
}

// What every thread checks of a result row: ids are ids of added rows, each
// once; distances are ascending and are the true distances of those ids.
class Checker {
  public:
    Checker(Metric metric, const std::vector<float>& base) : metric_(metric), stored_(base) {
        if (metric == Metric::Cosine) test::normalise_rows(stored_, kDim);
    }

    // Returns a description of the first problem, or "" when the rows are consistent.
    std::string check(const float* queries, size_t nq, const int64_t* ids, const float* dist, size_t limit) const {
        std::vector<float> q(queries, queries + nq * kDim);
        if (metric_ == Metric::Cosine) test::normalise_rows(q, kDim);
        for (size_t i = 0; i < nq; ++i) {
            std::set<int64_t> seen;
            for (size_t r = 0; r < kK; ++r) {
                const int64_t id = ids[i * kK + r];
                const float d = dist[i * kK + r];
                const std::string where = "query " + std::to_string(i) + " rank " + std::to_string(r) + ": ";
                if (id == -1) {
                    if (!std::isinf(d)) return where + "padding with a finite distance";
                    continue;
                }
                if (id < 3 || (id - 3) % 7 != 0 || static_cast<size_t>((id - 3) / 7) >= limit) {
                    return where + "id " + std::to_string(id) + " was never added";
                }
                if (!seen.insert(id).second) return where + "id " + std::to_string(id) + " twice";
                if (r > 0 && d < dist[i * kK + r - 1]) return where + "distances not ascending";
                const size_t row = static_cast<size_t>((id - 3) / 7);
                const double want = test::ref_distance(metric_, &q[i * kDim], &stored_[row * kDim], kDim);
                if (std::fabs(d - want) > 1e-3 * (1.0 + std::fabs(want))) {
                    return where + "distance " + std::to_string(d) + " is not the distance of id " +
                           std::to_string(id) + " (" + std::to_string(want) + ")";
                }
            }
        }
        return "";
    }

  private:
    Metric metric_;
    std::vector<float> stored_;
};

class Concurrency : public ::testing::TestWithParam<StressCase> {};

TEST_P(Concurrency, AddSearchSaveLoadAtOnce) {
    const StressCase c = GetParam();
    const std::vector<float> base = test::clustered_vectors(kTotal, kDim, 10, 5);
    const std::vector<float> queries = test::random_vectors(64, kDim, 6);
    std::vector<int64_t> ids(kTotal);
    for (size_t i = 0; i < kTotal; ++i) ids[i] = id_of_row(i);
    const Checker checker(c.metric, base);
    std::vector<float> stored = base;  // as the index keeps them
    if (c.metric == Metric::Cosine) test::normalise_rows(stored, kDim);

    std::unique_ptr<Index> index = make(c);
    index->add(kFirst, base.data(), ids.data());

    std::mutex failures_mutex;
    std::vector<std::string> failures;
    auto fail = [&](const std::string& what) {
        std::lock_guard<std::mutex> lock(failures_mutex);
        failures.push_back(what);
    };
    std::atomic<bool> adding{true};
    std::atomic<size_t> searches{0}, saves{0};
    std::atomic<int> searchers_running{3};
    const std::string dir = ::testing::TempDir() + "sparknn_concurrency_" + std::to_string(::getpid()) + "_" +
                            kind_name(c.kind) + "_" + metric_name(c.metric);
    std::filesystem::create_directories(dir);

    std::vector<std::thread> threads;
    // One writer: adds batch after batch, each once the searchers have made
    // progress since the last, so adds spread over the searching.
    threads.emplace_back([&] {
        try {
            for (size_t a = 0; a < kAdds; ++a) {
                const size_t seen = searches.load();
                while (searches.load() < seen + 2 && searchers_running.load() > 0) std::this_thread::yield();
                const size_t row = kFirst + a * kBatch;
                index->add(kBatch, base.data() + row * kDim, ids.data() + row);
            }
        } catch (const std::exception& e) {
            fail(std::string("add: ") + e.what());
        }
        adding = false;
    });
    // Searchers, with per-call thread counts; each searches at least a few
    // times and keeps on while the writer runs (bounded either way).
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&, t] {
            try {
                for (size_t it = 0; it < kSearchLimit / 3 && (it < 4 || adding); ++it) {
                    const size_t nq = 8, q0 = ((it * 3 + t) % 8) * nq;
                    std::vector<int64_t> out_ids(nq * kK);
                    std::vector<float> out_dist(nq * kK);
                    SearchParams p;
                    p.threads = t % 2 == 0 ? 1 : 2;
                    index->search(nq, &queries[q0 * kDim], kK, out_ids.data(), out_dist.data(), p);
                    const std::string bad =
                        checker.check(&queries[q0 * kDim], nq, out_ids.data(), out_dist.data(), kTotal);
                    if (!bad.empty()) fail("search: " + bad);
                    ++searches;
                }
            } catch (const std::exception& e) {
                fail(std::string("search: ") + e.what());
            }
            --searchers_running;
        });
    }
    // Reconstruct and the other readers.
    threads.emplace_back([&] {
        try {
            std::vector<float> out(kFirst * kDim);
            for (size_t it = 0; it < 100 && (it < 3 || adding); ++it) {
                index->reconstruct(0, kFirst, out.data());
                if (c.kind == IndexKind::Ivf) {
                    const auto& ivf = dynamic_cast<const IvfIndex&>(*index);
                    const std::vector<int64_t> order = ivf.list_labels();
                    size_t listed = 0;
                    for (size_t s : ivf.list_sizes()) listed += s;
                    if (order.size() < kFirst || listed < kFirst) fail("ivf lists lost vectors");
                    std::vector<int64_t> lists(4 * 2);
                    ivf.nearest_lists(4, queries.data(), 2, lists.data(), 1);
                }
                for (size_t i = 0; i < kFirst * kDim; i += 97) {
                    if (std::fabs(out[i] - stored[i]) > 1e-5f) {
                        fail("reconstruct: value " + std::to_string(i) + " changed");
                        break;
                    }
                }
            }
        } catch (const std::exception& e) {
            fail(std::string("reconstruct: ") + e.what());
        }
    });
    // A saver: every file it writes must load, hold a prefix of the adds and search consistently.
    threads.emplace_back([&] {
        try {
            for (size_t it = 0; it < 20 && (it < 3 || adding); ++it) {
                const std::string path = dir + "/index-" + std::to_string(it) + ".snn";
                index->save(path, false);
                auto loaded = load_index(path, it % 2 == 0);
                const size_t n = loaded->size();
                if (n < kFirst || n > kTotal || (n - kFirst) % kBatch != 0) {
                    fail("save: loaded " + std::to_string(n) + " vectors, not a state between adds");
                    continue;
                }
                for (size_t i = 0; i < n; ++i) {
                    if (loaded->id_of(i) != ids[i]) {
                        fail("save: loaded id " + std::to_string(i) + " differs");
                        break;
                    }
                }
                std::vector<int64_t> out_ids(8 * kK);
                std::vector<float> out_dist(8 * kK);
                loaded->search(8, queries.data(), kK, out_ids.data(), out_dist.data());
                const std::string bad = checker.check(queries.data(), 8, out_ids.data(), out_dist.data(), n);
                if (!bad.empty()) fail("search of a saved file: " + bad);
                std::filesystem::remove(path);
                ++saves;
            }
        } catch (const std::exception& e) {
            fail(std::string("save/load: ") + e.what());
        }
    });
    // Settings change under the searches.
    threads.emplace_back([&] {
        try {
            for (size_t it = 0; it < 50 && (it < 3 || adding); ++it) {
                index->set_threads(static_cast<int>(it % 3));
                if (auto* h = dynamic_cast<HnswIndex*>(index.get())) h->set_ef_search(16 + it % 32);
                if (auto* ivf = dynamic_cast<IvfIndex*>(index.get())) ivf->set_nprobe(1 + it % 8);
                std::this_thread::yield();
            }
        } catch (const std::exception& e) {
            fail(std::string("settings: ") + e.what());
        }
    });
    for (auto& t : threads) t.join();
    std::filesystem::remove_all(dir);

    for (const std::string& f : failures) ADD_FAILURE() << f;
    EXPECT_GE(searches.load(), 12u);
    EXPECT_GE(saves.load(), 3u);
    ASSERT_EQ(index->size(), kTotal);

    // Afterwards the index is whole: flat and ivf with every list probed are exact.
    if (c.kind == IndexKind::Hnsw) return;
    std::vector<int64_t> out_ids(16 * kK);
    std::vector<float> out_dist(16 * kK);
    SearchParams p;
    p.nprobe = 8;
    index->search(16, queries.data(), kK, out_ids.data(), out_dist.data(), p);
    std::vector<float> q(queries.begin(), queries.begin() + 16 * kDim);
    if (c.metric == Metric::Cosine) test::normalise_rows(q, kDim);
    const auto ref = test::naive_knn(c.metric, stored, q, kDim, kK);
    for (size_t i = 0; i < 16; ++i) {
        for (size_t r = 0; r < kK; ++r) {
            EXPECT_NEAR(out_dist[i * kK + r], ref[i][r].first, 1e-3 * (1.0 + std::fabs(ref[i][r].first)));
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Kinds, Concurrency,
                         ::testing::Values(StressCase{IndexKind::Flat, Metric::L2},
                                           StressCase{IndexKind::Flat, Metric::Cosine},
                                           StressCase{IndexKind::Hnsw, Metric::L2},
                                           StressCase{IndexKind::Hnsw, Metric::InnerProduct},
                                           StressCase{IndexKind::Ivf, Metric::L2},
                                           StressCase{IndexKind::Ivf, Metric::Cosine}),
                         case_name);

// A pinned view keeps add from moving the memory under it: add refuses with a
// clear error until the view is released, and the view reads the same values.
TEST(PinnedView, AddRefusesWhileAViewLives) {
    for (IndexKind kind : {IndexKind::Flat, IndexKind::Hnsw, IndexKind::Ivf}) {
        SCOPED_TRACE(kind_name(kind));
        const std::vector<float> base = test::random_vectors(200, kDim, 8);
        auto index = make({kind, Metric::L2});
        index->add(100, base.data(), nullptr);
        {
            PinnedView<int64_t> view = index->view_ids();
            ASSERT_EQ(view.rows, 100u);
            EXPECT_EQ(view.data[99], 99);
            try {
                index->add(100, base.data() + 100 * kDim, nullptr);
                ADD_FAILURE() << "add ran while a view was alive";
            } catch (const InvalidArgument& e) {
                EXPECT_NE(std::string(e.what()).find("view"), std::string::npos) << e.what();
            }
            PinnedView<int64_t> copy = view;  // copies pin too
            view = {};
            EXPECT_THROW(index->add(100, base.data() + 100 * kDim, nullptr), InvalidArgument);
            EXPECT_EQ(copy.data[0], 0);
            if (kind == IndexKind::Ivf) {
                EXPECT_THROW(index->view_vectors(), Unsupported);
            } else {
                PinnedView<float> vectors = index->view_vectors();
                EXPECT_EQ(vectors.cols, kDim);
                EXPECT_EQ(vectors.data[5], base[5]);
            }
        }
        EXPECT_EQ(index->size(), 100u);  // the refused adds changed nothing
        index->add(100, base.data() + 100 * kDim, nullptr);
        EXPECT_EQ(index->size(), 200u);
        EXPECT_EQ(index->view_ids().data[199], 199);
    }
}

// Training while others search and ask for lists: either "not trained" or a
// consistent answer, never a crash.
TEST(ConcurrentIvf, TrainWhileSearching) {
    const std::vector<float> base = test::clustered_vectors(600, kDim, 6, 9);
    auto index = make({IndexKind::Ivf, Metric::L2});
    auto& ivf = dynamic_cast<IvfIndex&>(*index);
    std::atomic<bool> done{false};
    std::atomic<size_t> answered{0};
    std::vector<std::string> failures;
    std::mutex m;
    std::thread writer([&] {
        ivf.train(600, base.data());
        index->add(600, base.data(), nullptr);
        done = true;
    });
    std::thread reader([&] {
        std::vector<int64_t> lists(4 * 2), ids(4 * kK);
        std::vector<float> dist(4 * kK);
        for (size_t it = 0; it < 500 && (it < 5 || !done); ++it) {
            try {
                ivf.nearest_lists(4, base.data(), 2, lists.data());
                for (int64_t l : lists) {
                    if (l < 0 || l >= 8) {
                        std::lock_guard<std::mutex> lock(m);
                        failures.push_back("list " + std::to_string(l));
                    }
                }
                ++answered;
            } catch (const InvalidArgument&) {  // not trained yet
            }
            index->search(4, base.data(), kK, ids.data(), dist.data());
            for (size_t i = 0; i < ids.size(); ++i) {
                if (ids[i] < -1 || ids[i] >= 600) {
                    std::lock_guard<std::mutex> lock(m);
                    failures.push_back("id " + std::to_string(ids[i]));
                }
            }
        }
    });
    writer.join();
    reader.join();
    for (const auto& f : failures) ADD_FAILURE() << f;
    EXPECT_TRUE(ivf.is_trained());
    EXPECT_EQ(ivf.nlist(), 8u);
}

}  // namespace
}  // namespace sparknn
