// Writes the golden fixture files of the current format version into a
// directory: <name>_v<version>.snn and <name>_v<version>.expected (index
// parameters, queries and their 5 nearest neighbours) for every index kind:
// flat per metric, hnsw per metric, ivf per storage. See README.md beside this file.
//
// The content comes from a fixed integer generator (splitmix64), not from
// <random> distributions, whose output differs between standard libraries.
// The expected answers must not depend on float rounding, which differs
// between SIMD levels and BLAS kernels: the generator refuses to write a
// fixture whose answers sit on a near tie anywhere a rounding error could flip
// them (rank k, the nprobe-th list, the re-ranked candidate set), and an hnsw
// answer must equal the exact one, so any faithful graph walk reproduces it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/flat.h"
#include "sparknn/hnsw.h"
#include "sparknn/ivf.h"

namespace {

using sparknn::Metric;

constexpr size_t kDim = 8, kQueries = 6, kK = 5;
constexpr float kMargin = 1e-4f;  // relative gap a rounding error can never close

uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Multiples of 1/256 in [-half_range/256, half_range/256]: exact in float32 on
// every platform. With half_range = 512 (values in [-2, 2]) every squared L2
// distance and dot product of dimension 8 is a multiple of 2^-16 below 2^7,
// so it is computed exactly whatever the summation order.
std::vector<float> values(size_t n, uint64_t seed, int half_range) {
    std::vector<float> x(n);
    for (float& v : x) {
        const auto r = static_cast<int>(splitmix64(seed) % static_cast<uint64_t>(2 * half_range + 1));
        v = static_cast<float>(r - half_range) / 256.0f;
    }
    return x;
}

std::vector<int64_t> fixture_ids(size_t n) {
    std::vector<int64_t> ids(n);
    for (size_t i = 0; i < n; ++i) ids[i] = 1000 + 7 * static_cast<int64_t>(i);
    return ids;
}

struct Answers {
    size_t k;
    std::vector<int64_t> ids;
    std::vector<float> dist;
};
Answers search(const sparknn::Index& index, const std::vector<float>& queries, size_t k) {
    const size_t nq = queries.size() / kDim;
    Answers a{k, std::vector<int64_t>(nq * k), std::vector<float>(nq * k)};
    index.search(nq, queries.data(), k, a.ids.data(), a.dist.data());
    return a;
}

bool near_tie(float a, float b) { return std::fabs(b - a) < kMargin * std::max(1.0f, std::fabs(a)); }

// Complains (and fails) when ranks `rank` and `rank + 1` of query q are a near tie.
bool apart(const std::string& name, const char* what, const Answers& a, size_t q, size_t rank) {
    if (!near_tie(a.dist[q * a.k + rank], a.dist[q * a.k + rank + 1])) return true;
    std::fprintf(stderr, "%s: query %zu has a near tie at %s rank %zu; change the seeds\n", name.c_str(), q, what,
                 rank);
    return false;
}

// Under ivf the lists a query probes must not hinge on rounding either: its
// nprobe-th and (nprobe+1)-th nearest centroids must be clearly apart.
bool lists_apart(const std::string& name, const sparknn::IvfIndex& index, const std::vector<float>& queries) {
    const size_t nlist = index.nlist(), nprobe = index.params().nprobe;
    if (nprobe >= nlist) return true;
    bool ok = true;
    for (size_t q = 0; q < queries.size() / kDim; ++q) {
        std::vector<double> x(queries.begin() + q * kDim, queries.begin() + (q + 1) * kDim);
        if (index.metric() == Metric::Cosine) {  // clustered on the sphere, by L2
            double norm = 0;
            for (double v : x) norm += v * v;
            for (double& v : x) v /= std::sqrt(norm);
        }
        std::vector<double> d(nlist, 0.0);
        for (size_t l = 0; l < nlist; ++l) {
            for (size_t j = 0; j < kDim; ++j) {
                const double c = index.centroid_data()[l * kDim + j];
                d[l] += index.metric() == Metric::InnerProduct ? -x[j] * c : (x[j] - c) * (x[j] - c);
            }
        }
        std::sort(d.begin(), d.end());
        if (near_tie(static_cast<float>(d[nprobe - 1]), static_cast<float>(d[nprobe]))) {
            std::fprintf(stderr, "%s: query %zu is nearly as close to list %zu as to list %zu; change the seeds\n",
                         name.c_str(), q, nprobe + 1, nprobe);
            ok = false;
        }
    }
    return ok;
}

void print_param(FILE* out, const char* name, uint64_t value) {
    std::fprintf(out, "param %s %llu\n", name, static_cast<unsigned long long>(value));
}

// Saves `index` as <dir>/<name>_v<version>.snn with its .expected file.
// Returns false (after writing) when an answer is a near tie.
bool write_fixture(const std::string& dir, const std::string& name, const sparknn::Index& index,
                   const std::vector<float>& queries, const std::vector<sparknn::SideFile>& side_files = {}) {
    const std::string stem = dir + "/" + name + "_v" + std::to_string(sparknn::kFormatVersion);
    // A committed fixture is never replaced (built elsewhere, the same index
    // may differ in bytes); to compare, write into an empty directory.
    if (std::filesystem::exists(stem + ".snn") || std::filesystem::exists(stem + ".expected")) {
        std::fprintf(stderr, "%s.snn exists: fixtures are never rewritten\n", stem.c_str());
        return false;
    }
    index.save(stem + ".snn", true, side_files);

    // One more neighbour than recorded, to check that rank k is not a near tie.
    const Answers a = search(index, queries, kK + 1);
    FILE* out = std::fopen((stem + ".expected").c_str(), "w");
    if (out == nullptr) return false;
    std::fprintf(out, "# written by make_fixtures.cpp; see README.md\n");
    std::fprintf(out, "metric %s\ndim %zu\ncount %zu\nk %zu\n", sparknn::metric_name(index.metric()), kDim,
                 index.size(), kK);
    if (index.kind() != sparknn::IndexKind::Ivf && index.storage() != sparknn::Storage::Float32) {
        std::fprintf(out, "param storage %s\n", sparknn::storage_name(index.storage()));
    }
    if (const auto* h = dynamic_cast<const sparknn::HnswIndex*>(&index)) {
        print_param(out, "M", h->params().M);
        print_param(out, "ef_construction", h->params().ef_construction);
        print_param(out, "ef_search", h->params().ef_search);
        print_param(out, "seed", h->params().seed);
    }
    if (const auto* ivf = dynamic_cast<const sparknn::IvfIndex*>(&index)) {
        print_param(out, "nlist", ivf->nlist());
        print_param(out, "nprobe", ivf->params().nprobe);
        std::fprintf(out, "param storage %s\n", sparknn::storage_name(ivf->params().storage));
        print_param(out, "pq_m", ivf->params().pq_m);
        print_param(out, "rerank", ivf->params().rerank);
        print_param(out, "seed", ivf->params().seed);
        if (ivf->first_pass_dims() != 0) print_param(out, "first_pass_dims", ivf->first_pass_dims());
    }
    bool ok = true;
    for (size_t q = 0; q < kQueries; ++q) {
        std::fprintf(out, "query");
        for (size_t j = 0; j < kDim; ++j) std::fprintf(out, " %.9g", queries[q * kDim + j]);
        std::fprintf(out, "\nresult");
        for (size_t r = 0; r < kK; ++r) {
            std::fprintf(out, " %lld %.9g", static_cast<long long>(a.ids[q * a.k + r]), a.dist[q * a.k + r]);
            ok = apart(name, "result", a, q, r) && ok;
        }
        std::fprintf(out, "\n");
    }
    std::fclose(out);
    return ok;
}

// The name part of a 16-bit storage ("fp16_"), empty for float32 (as in version 1).
std::string storage_part(sparknn::Storage storage) {
    return storage == sparknn::Storage::Float32 ? "" : std::string(sparknn::storage_name(storage)) + "_";
}

// flat: 40 vectors in [-3.9, 3.9] (the first fixtures; their content must not
// change). Multiples of 1/256 there have at most 10 significant bits: exact in
// fp16; bf16 rounds them (to nearest even, the same everywhere), and the
// rounded values keep every distance exact. `side_files`: digests recorded in
// the file (a SideFiles section), for the fixture of an index whose ids live
// in a file beside it.
bool write_flat(const std::string& dir, Metric metric, sparknn::Storage storage = sparknn::Storage::Float32,
                const std::string& suffix = "", const std::vector<sparknn::SideFile>& side_files = {}) {
    sparknn::FlatIndex index(kDim, metric, storage);
    index.set_threads(1);
    const std::vector<float> base = values(40 * kDim, 1, 1000);
    index.add(40, base.data(), fixture_ids(40).data());
    return write_fixture(dir, "flat_" + storage_part(storage) + sparknn::metric_name(metric) + suffix, index,
                         values(kQueries * kDim, 2, 1000), side_files);
}

// hnsw: 60 vectors, M = 4, ef_search = 16 (< count, so search walks the graph
// rather than falling back to an exact scan). Built with one thread: deterministic.
bool write_hnsw(const std::string& dir, Metric metric, sparknn::Storage storage = sparknn::Storage::Float32) {
    const std::string name = "hnsw_" + storage_part(storage) + sparknn::metric_name(metric);
    constexpr size_t n = 60;
    sparknn::HnswParams params;
    params.M = 4;
    params.ef_construction = 16;
    params.ef_search = 16;
    params.seed = 7;
    sparknn::HnswIndex index(kDim, metric, params, storage);
    index.set_threads(1);
    const std::vector<float> base = values(n * kDim, 3, 512);
    const std::vector<int64_t> ids = fixture_ids(n);
    index.add(n, base.data(), ids.data());
    const std::vector<float> queries = values(kQueries * kDim, 4, 512);

    sparknn::FlatIndex exact(kDim, metric, storage);
    exact.set_threads(1);
    exact.add(n, base.data(), ids.data());
    const Answers graph = search(index, queries, kK), truth = search(exact, queries, kK);
    bool ok = true;
    if (graph.ids != truth.ids) {
        std::fprintf(stderr, "%s: the graph search misses a true neighbour; change the seeds\n", name.c_str());
        ok = false;
    }
    return write_fixture(dir, name, index, queries) && ok;
}

// ivf: trained on 256 vectors (product quantisation needs 256 per code
// book), then 100 vectors added, nlist = 4, nprobe = 2. One thread.
// first_pass_dims > 0: the first pass in that many principal dimensions, set before training
// (the basis section, the lists assigned through it); rerank must then re-rank every row the
// probed lists hold, so that no candidate boundary in the projected scan (float rounding) can
// change an answer.
bool write_ivf(const std::string& dir, sparknn::Storage storage, Metric metric, size_t rerank,
               size_t first_pass_dims = 0) {
    const std::string name = std::string("ivf_") + sparknn::storage_name(storage) +
                             (first_pass_dims ? "_firstpass_" : "_") + sparknn::metric_name(metric);
    constexpr size_t n = 100, n_train = 256;
    auto build = [&](size_t rerank_factor) {
        sparknn::IvfParams params;
        params.nlist = 4;
        params.nprobe = 2;
        params.storage = storage;
        params.pq_m = storage == sparknn::Storage::Pq ? 4 : 0;
        params.rerank = rerank_factor;
        params.seed = 11;
        auto index = std::make_unique<sparknn::IvfIndex>(kDim, metric, params);
        index->set_threads(1);
        if (first_pass_dims && rerank_factor) index->set_first_pass_dims(first_pass_dims);
        const std::vector<float> train = values(n_train * kDim, 5, 512);
        index->train(n_train, train.data());
        const std::vector<float> base = values(n * kDim, 6, 512);
        index->add(n, base.data(), fixture_ids(n).data());
        return index;
    };
    const auto index = build(rerank);
    const std::vector<float> queries = values(kQueries * kDim, 7, 512);
    bool ok = lists_apart(name, *index, queries);
    if (first_pass_dims) {
        size_t most = 0;  // rows a query's nprobe lists can hold at most
        std::vector<size_t> sizes = index->list_sizes();
        std::sort(sizes.rbegin(), sizes.rend());
        for (size_t l = 0; l < index->params().nprobe && l < sizes.size(); ++l) most += sizes[l];
        if (index->first_pass_in_use().first != first_pass_dims || rerank * kK < most) {
            std::fprintf(stderr, "%s: no first pass, or rerank %zu k does not cover the %zu rows probed\n",
                         name.c_str(), rerank, most);
            ok = false;
        }
    } else if (rerank > 0) {
        // The rerank * k candidates come from compressed distances: the same
        // index without re-ranking shows them, and their boundary must be clear.
        const auto plain = build(0);
        const Answers a = search(*plain, queries, rerank * kK + 1);
        for (size_t q = 0; q < kQueries; ++q) ok = apart(name, "re-rank candidate", a, q, rerank * kK - 1) && ok;
    }
    return write_fixture(dir, name, *index, queries) && ok;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
        return 2;
    }
    try {
        const std::string dir = argv[1];
        bool ok = true;
        for (Metric m : {Metric::L2, Metric::InnerProduct, Metric::Cosine}) ok = write_flat(dir, m) && ok;
        ok = write_flat(dir, Metric::L2, sparknn::Storage::Float32, "_sidefiles",
                        {{"ids", 1234, 0x0badcafeu}, {"items", 0, 0}}) &&
             ok;
        for (Metric m : {Metric::L2, Metric::InnerProduct, Metric::Cosine}) ok = write_hnsw(dir, m) && ok;
        ok = write_ivf(dir, sparknn::Storage::Float32, Metric::L2, 0) && ok;
        ok = write_ivf(dir, sparknn::Storage::Sq8, Metric::InnerProduct, 0) && ok;
        ok = write_ivf(dir, sparknn::Storage::Pq, Metric::Cosine, 2) && ok;
        // Version 2: 16-bit storage, each kind, the metrics spread over them.
        ok = write_flat(dir, Metric::L2, sparknn::Storage::Float16) && ok;
        ok = write_flat(dir, Metric::Cosine, sparknn::Storage::BFloat16) && ok;
        ok = write_hnsw(dir, Metric::InnerProduct, sparknn::Storage::Float16) && ok;
        ok = write_hnsw(dir, Metric::L2, sparknn::Storage::BFloat16) && ok;
        ok = write_ivf(dir, sparknn::Storage::Float16, Metric::Cosine, 0) && ok;
        ok = write_ivf(dir, sparknn::Storage::BFloat16, Metric::L2, 0) && ok;
        // (within version 2, 2026-12-06: the first pass's parameters and basis section)
        ok = write_ivf(dir, sparknn::Storage::Float32, Metric::L2, 12, 4) && ok;
        return ok ? 0 : 1;
    } catch (const sparknn::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
