// Writes the golden fixture files of the current format version into a
// directory: for each metric, flat_<metric>_v<version>.snn (40 vectors of
// dimension 8 with ids 1000, 1007, ...) and flat_<metric>_v<version>.expected
// (queries and their 5 nearest neighbours). See README.md beside this file.
//
// The content comes from a fixed integer generator (splitmix64), not from
// <random> distributions, whose output differs between standard libraries.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/flat.h"

namespace {

constexpr size_t kCount = 40, kDim = 8, kQueries = 6, kK = 5;

uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Multiples of 1/256 in [-3.9, 3.9]: exact in float32 on every platform.
std::vector<float> values(size_t n, uint64_t seed) {
    std::vector<float> x(n);
    for (float& v : x) v = static_cast<float>(static_cast<int>(splitmix64(seed) % 2001) - 1000) / 256.0f;
    return x;
}

bool write_fixture(const std::string& dir, sparknn::Metric metric) {
    const std::string stem =
        dir + "/flat_" + sparknn::metric_name(metric) + "_v" + std::to_string(sparknn::kFormatVersion);
    sparknn::FlatIndex index(kDim, metric);
    index.set_threads(1);
    const std::vector<float> base = values(kCount * kDim, 1);
    std::vector<int64_t> ids(kCount);
    for (size_t i = 0; i < kCount; ++i) ids[i] = 1000 + 7 * static_cast<int64_t>(i);
    index.add(kCount, base.data(), ids.data());
    index.save(stem + ".snn");

    // One more neighbour than recorded, to check that rank k is not a near tie
    // (a tie would make the expected ids depend on rounding).
    const std::vector<float> queries = values(kQueries * kDim, 2);
    std::vector<int64_t> out_ids(kQueries * (kK + 1));
    std::vector<float> out_dist(kQueries * (kK + 1));
    index.search(kQueries, queries.data(), kK + 1, out_ids.data(), out_dist.data());

    FILE* out = std::fopen((stem + ".expected").c_str(), "w");
    if (out == nullptr) return false;
    std::fprintf(out, "# written by make_fixtures.cpp; see README.md\n");
    std::fprintf(out, "metric %s\ndim %zu\ncount %zu\nk %zu\n", sparknn::metric_name(metric), kDim, kCount, kK);
    bool ok = true;
    for (size_t q = 0; q < kQueries; ++q) {
        std::fprintf(out, "query");
        for (size_t j = 0; j < kDim; ++j) std::fprintf(out, " %.9g", queries[q * kDim + j]);
        std::fprintf(out, "\nresult");
        const float* d = &out_dist[q * (kK + 1)];
        for (size_t r = 0; r < kK; ++r) {
            std::fprintf(out, " %lld %.9g", static_cast<long long>(out_ids[q * (kK + 1) + r]), d[r]);
            if (d[r + 1] - d[r] < 1e-4f * std::max(1.0f, std::fabs(d[r]))) {
                std::fprintf(stderr, "%s: query %zu has a near tie at rank %zu; change the seeds\n", stem.c_str(), q,
                             r);
                ok = false;
            }
        }
        std::fprintf(out, "\n");
    }
    std::fclose(out);
    return ok;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
        return 2;
    }
    try {
        bool ok = true;
        for (sparknn::Metric m : {sparknn::Metric::L2, sparknn::Metric::InnerProduct, sparknn::Metric::Cosine}) {
            ok = write_fixture(argv[1], m) && ok;
        }
        return ok ? 0 : 1;
    } catch (const sparknn::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
