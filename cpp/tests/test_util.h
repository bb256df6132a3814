// Shared helpers for the C++ tests: fixed-seed data and a naive reference search.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "sparknn/distance.h"
#include "sparknn/file.h"
#include "sparknn/index.h"
#include "sparknn/ivf_params.h"
#include "sparknn/row_block.h"

namespace sparknn::test {

inline std::vector<float> random_vectors(size_t n, size_t dim, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(n * dim);
    for (float& v : x) v = normal(rng);
    return x;
}

// Gaussian clusters: `clusters` centres, points spread around them.
inline std::vector<float> clustered_vectors(size_t n, size_t dim, size_t clusters, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> centres(clusters * dim);
    for (float& v : centres) v = normal(rng) * 3.0f;
    std::uniform_int_distribution<size_t> pick(0, clusters - 1);
    std::vector<float> x(n * dim);
    for (size_t i = 0; i < n; ++i) {
        const size_t c = pick(rng);
        for (size_t j = 0; j < dim; ++j) x[i * dim + j] = centres[c * dim + j] + normal(rng);
    }
    return x;
}

inline void normalise_rows(std::vector<float>& x, size_t dim) {
    for (size_t i = 0; i < x.size() / dim; ++i) {
        double s = 0;
        for (size_t j = 0; j < dim; ++j) s += double(x[i * dim + j]) * x[i * dim + j];
        const float inv = static_cast<float>(1.0 / std::sqrt(s));
        for (size_t j = 0; j < dim; ++j) x[i * dim + j] *= inv;
    }
}

// Double-precision reference distance, "smaller is closer", on stored rows.
inline double ref_distance(Metric m, const float* a, const float* b, size_t dim) {
    double acc = 0;
    for (size_t j = 0; j < dim; ++j) {
        acc += m == Metric::L2 ? (double(a[j]) - b[j]) * (double(a[j]) - b[j]) : double(a[j]) * b[j];
    }
    if (m == Metric::L2) return acc;
    if (m == Metric::InnerProduct) return -acc;
    return 1.0 - acc;
}

// Naive exact kNN in double precision: per query, (distance, label) sorted.
inline std::vector<std::vector<std::pair<double, int64_t>>> naive_knn(Metric m, const std::vector<float>& base,
                                                                      const std::vector<float>& queries, size_t dim,
                                                                      size_t k) {
    const size_t n = base.size() / dim, nq = queries.size() / dim;
    std::vector<std::vector<std::pair<double, int64_t>>> out(nq);
    for (size_t q = 0; q < nq; ++q) {
        std::vector<std::pair<double, int64_t>> all(n);
        for (size_t i = 0; i < n; ++i) {
            all[i] = {ref_distance(m, &queries[q * dim], &base[i * dim], dim), static_cast<int64_t>(i)};
        }
        const size_t kk = std::min(k, n);
        std::partial_sort(all.begin(), all.begin() + kk, all.end());
        all.resize(kk);
        out[q] = std::move(all);
    }
    return out;
}

// Every SIMD level this CPU can run: the kernels of each are compared with the scalar ones.
inline std::vector<SimdLevel> supported_levels() {
    std::vector<SimdLevel> levels{SimdLevel::Scalar};
    const SimdLevel cpu = cpu_simd_level();
    if (cpu == SimdLevel::Avx512) levels.push_back(SimdLevel::Avx2);
    if (cpu != SimdLevel::Scalar) levels.push_back(cpu);
    return levels;
}

// Search results of a batch: ids and distances [nq, k], row-major.
struct Results {
    std::vector<int64_t> ids;
    std::vector<float> dist;
    bool operator==(const Results&) const = default;
};

// Searches every row of `queries` (row-major, index.dim() wide); ef / nprobe 0 = the index's default.
inline Results search(const Index& index, const std::vector<float>& queries, size_t k, size_t ef = 0,
                      size_t nprobe = 0) {
    const size_t nq = queries.size() / index.dim();
    Results r{std::vector<int64_t>(nq * k), std::vector<float>(nq * k)};
    SearchParams params;
    params.ef = ef;
    params.nprobe = nprobe;
    index.search(nq, queries.data(), k, r.ids.data(), r.dist.data(), params);
    return r;
}

// A RowBlock holding rows x [n, dim] (what a reader fills before an index adopts it).
inline std::shared_ptr<RowBlock> block_of(const std::vector<float>& x, size_t dim) {
    auto block = std::make_shared<RowBlock>(x.size() / dim, dim);
    std::copy(x.begin(), x.end(), block->data());
    return block;
}

// Rows x [n, dim] laid out in a random order (seed): order[r] is the row that holds label r's
// vector (a reader's file order against labels in id order, adopt_rows' `order`).
struct ShuffledRows {
    std::vector<int64_t> order;
    std::vector<float> rows;
};
inline ShuffledRows shuffled_rows(const std::vector<float>& x, size_t dim, uint64_t seed) {
    const size_t n = x.size() / dim;
    ShuffledRows out{std::vector<int64_t>(n), std::vector<float>(n * dim)};
    std::iota(out.order.begin(), out.order.end(), 0);
    std::mt19937_64 rng(seed);
    std::shuffle(out.order.begin(), out.order.end(), rng);
    for (size_t r = 0; r < n; ++r) {
        std::copy(x.begin() + r * dim, x.begin() + (r + 1) * dim, out.rows.begin() + out.order[r] * dim);
    }
    return out;
}

// A file's bytes (saved indexes compared byte for byte).
inline std::string file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A file's bytes as a vector (for crafting damaged copies).
inline std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// IVF parameters of the tests: nlist lists, nprobe probed, the storage given, the rest default.
inline IvfParams ivf_params(size_t nlist, size_t nprobe, Storage storage = Storage::Float32) {
    IvfParams p;
    p.nlist = nlist;
    p.nprobe = nprobe;
    p.storage = storage;
    return p;
}

// Where a section of a saved file's bytes starts (its section table entry: docs/FORMAT.md),
// 0 when the file has none; for crafting damaged files.
inline size_t section_offset(const std::vector<uint8_t>& bytes, SectionType type) {
    uint32_t count;
    std::memcpy(&count, bytes.data() + 20, 4);
    for (uint32_t i = 0; i < count; ++i) {
        const uint8_t* e = bytes.data() + 64 + i * 32;
        uint32_t t;
        uint64_t off;
        std::memcpy(&t, e, 4);
        std::memcpy(&off, e + 8, 8);
        if (t == static_cast<uint32_t>(type)) return off;
    }
    return 0;
}

// Where the value of a named parameter lies in those bytes (Params: 32-byte records, the
// name's 24 bytes then the value), 0 when there is none.
inline size_t param_value_offset(const std::vector<uint8_t>& bytes, const std::string& name) {
    const size_t params = section_offset(bytes, SectionType::Params);
    if (params == 0) return 0;
    for (size_t at = params; at + 32 <= bytes.size(); at += 32) {
        const char* record = reinterpret_cast<const char*>(bytes.data() + at);
        if (std::string(record, strnlen(record, 24)) == name) return at + 24;
        if (record[0] == 0) break;
    }
    return 0;
}

}  // namespace sparknn::test
