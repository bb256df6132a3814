// The principal subspace (principal_basis.h) and the IVF first pass in it (ivf.h,
// set_first_pass_dims): the basis against the data's known subspace, the answers against
// brute force (recall, and exact distances for whatever is returned), the settings refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "principal_basis.h"
#include "sparknn/error.h"
#include "sparknn/file.h"
#include "sparknn/flat.h"
#include "sparknn/ivf.h"
#include "sparknn/row_block.h"
#include "test_util.h"
#include "tile_f32.h"

namespace sparknn {
namespace {

using test::naive_knn;

// Clusters in a `rank`-dimensional subspace of `dim` dimensions, plus isotropic noise.
std::vector<float> low_rank(size_t n, size_t dim, size_t rank, float noise, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> mix(rank * dim), centres(32 * rank);
    for (float& v : mix) v = normal(rng);
    for (float& v : centres) v = 4.0f * normal(rng);
    std::vector<float> x(n * dim);
    std::vector<float> z(rank);
    for (size_t i = 0; i < n; ++i) {
        const size_t c = rng() % 32;
        for (size_t r = 0; r < rank; ++r) z[r] = centres[c * rank + r] + normal(rng);
        for (size_t t = 0; t < dim; ++t) {
            float v = noise * normal(rng);
            for (size_t r = 0; r < rank; ++r) v += z[r] * mix[r * dim + t];
            x[i * dim + t] = v;
        }
    }
    return x;
}

double recall(const std::vector<int64_t>& ids, const std::vector<std::vector<std::pair<double, int64_t>>>& truth,
              size_t k) {
    size_t hit = 0;
    for (size_t q = 0; q < truth.size(); ++q) {
        for (const auto& [d, label] : truth[q]) {
            for (size_t j = 0; j < k; ++j) hit += ids[q * k + j] == label;
        }
    }
    return double(hit) / double(truth.size() * k);
}

TEST(PrincipalBasis, FindsTheDataSubspaceOrthonormal) {
    const size_t n = 4000, dim = 96, rank = 10;
    const std::vector<float> x = low_rank(n, dim, rank, 0.02f, 1);
    const PrincipalBasis b = principal_basis(x.data(), n, dim, true, 32, 0.9, 1, 7, 2);
    ASSERT_GE(b.dims, 1u);
    EXPECT_LE(b.dims, rank);  // 10 directions hold all but the noise
    EXPECT_GE(b.captured, 0.9);
    EXPECT_LE(b.captured, 1.0);
    for (size_t i = 0; i < b.dims; ++i) {
        for (size_t j = 0; j <= i; ++j) {
            double dot = 0;
            for (size_t t = 0; t < dim; ++t) dot += double(b.basis[i * dim + t]) * b.basis[j * dim + t];
            EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-4) << i << ", " << j;
        }
    }
    // The share claimed is the share of the (centred) sample's energy the basis holds.
    std::vector<double> mean(dim, 0.0);
    for (size_t i = 0; i < n; ++i) {
        for (size_t t = 0; t < dim; ++t) mean[t] += x[i * dim + t] / double(n);
    }
    double total = 0, held = 0;
    for (size_t i = 0; i < n; ++i) {
        for (size_t t = 0; t < dim; ++t) total += (x[i * dim + t] - mean[t]) * (x[i * dim + t] - mean[t]);
        for (size_t r = 0; r < b.dims; ++r) {
            double p = 0;
            for (size_t t = 0; t < dim; ++t) p += (x[i * dim + t] - mean[t]) * b.basis[r * dim + t];
            held += p * p;
        }
    }
    EXPECT_NEAR(held / total, b.captured, 2e-3);
    // Exactly max_dims when min_share <= 0; the same seed gives the same basis.
    const PrincipalBasis fixed = principal_basis(x.data(), n, dim, true, 20, 0.0, 1, 7, 2);
    EXPECT_EQ(fixed.dims, 20u);
    EXPECT_EQ(principal_basis(x.data(), n, dim, true, 20, 0.0, 1, 7, 1).basis, fixed.basis);
}

// More directions asked for than the data has (a count, not auto): the iteration's rows beyond
// the data's rank keep only rounding of the others, and must still come out orthonormal, as
// the loader checks (gram_excess at most IvfIndex::kFirstPassMaxExcess) when the index is
// saved with them. One Gram-Schmidt pass left 1e-3 there (a fuzzed index, refitted after an add).
TEST(PrincipalBasis, OrthonormalWhenMoreDirectionsAreAskedForThanTheDataHas) {
    for (const auto& [dim, rank, dims] : std::vector<std::tuple<size_t, size_t, size_t>>{{8, 2, 4}, {8, 1, 7},
                                                                                       {64, 3, 40}, {256, 5, 200}}) {
        SCOPED_TRACE(std::to_string(dim) + " " + std::to_string(rank) + " " + std::to_string(dims));
        for (uint64_t seed : {1u, 2u, 3u}) {
            const std::vector<float> x = low_rank(500, dim, rank, 0.0f, seed);
            const PrincipalBasis b = principal_basis(x.data(), 500, dim, true, dims, 0.0, 1, seed, 1);
            ASSERT_EQ(b.dims, dims);
            EXPECT_LE(gram_excess(b.basis.data(), b.dims, dim), 1e-5);
        }
    }
}

// The same data at any magnitude float32 holds (raw counts, amounts): the same share captured
// and orthonormal directions. Unscaled, values of 1e10 overflowed the iteration's squared
// norms and lost the leading direction (0.43 captured instead of 0.99995).
TEST(PrincipalBasis, TheSameAtEveryMagnitude) {
    const size_t n = 3000, dim = 16;
    std::mt19937_64 rng(5);
    std::normal_distribution<double> normal;
    std::vector<double> unit(n * dim);
    for (size_t i = 0; i < n; ++i) {
        const double z = normal(rng);  // one strong shared direction, a little noise
        for (size_t t = 0; t < dim; ++t) unit[i * dim + t] = z + 0.01 * normal(rng);
    }
    for (double scale : {1.0, 1e6, 1e10, 1e15}) {
        SCOPED_TRACE(scale);
        std::vector<float> x(n * dim);
        for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(unit[i] * scale);
        const PrincipalBasis b = principal_basis(x.data(), n, dim, true, 4, 0.0, 1, 7, 1);
        ASSERT_EQ(b.dims, 4u);
        EXPECT_GT(b.captured, 0.9999);
        EXPECT_LE(gram_excess(b.basis.data(), b.dims, dim), 1e-5);
    }
}

TEST(PrincipalBasis, DeclinesIsotropicDataAndDegenerateSamples) {
    const std::vector<float> x = test::random_vectors(3000, 64, 2);
    EXPECT_EQ(principal_basis(x.data(), 3000, 64, true, 16, 0.9, 16, 1, 2).dims, 0u);  // 16 of 64: ~25%
    // one strong direction (variance 225) over isotropic noise (1 each, the sample's largest
    // about 1.2): 16 directions hold about (225 + 15 * 1.2) / 289 = 0.84 of it, declined at 0.9
    // after the iteration (the Cauchy-Schwarz bound lets it through), kept at 0.8
    std::vector<float> strong = test::random_vectors(4000, 64, 3);
    std::mt19937_64 rng(4);
    std::normal_distribution<float> normal;
    for (size_t i = 0; i < 4000; ++i) strong[i * 64] = 15.0f * normal(rng);
    EXPECT_EQ(principal_basis(strong.data(), 4000, 64, true, 16, 0.9, 16, 1, 2).dims, 0u);
    const PrincipalBasis kept = principal_basis(strong.data(), 4000, 64, true, 16, 0.8, 16, 1, 2);
    EXPECT_EQ(kept.dims, 16u);
    EXPECT_NEAR(kept.captured, 0.84, 0.02);
    std::vector<float> same(100 * 32, 3.0f);  // no variance at all
    EXPECT_EQ(principal_basis(same.data(), 100, 32, true, 8, 0.9, 1, 1, 2).dims, 0u);
    // rank 2 data asked for 8 exact dimensions: still an orthonormal basis of 8
    std::vector<float> flat(200 * 16, 0.0f);
    for (size_t i = 0; i < 200; ++i) flat[i * 16] = float(i % 7), flat[i * 16 + 1] = float(i % 5);
    const PrincipalBasis b = principal_basis(flat.data(), 200, 16, true, 8, 0.0, 1, 1, 1);
    ASSERT_EQ(b.dims, 8u);
    EXPECT_NEAR(b.captured, 1.0, 1e-4);
    EXPECT_THROW(principal_basis(flat.data(), 200, 16, true, 16, 0.0, 1, 1, 1), InvalidArgument);
}

// The quantizer's first pass (FlatIndex::set_projected_first_pass): k + extra candidates in
// the subspace, measured exactly.
// H = Q diag(values) Q^T for a random orthogonal Q (Gram-Schmidt of Gaussian rows), in double.
std::vector<double> with_spectrum(const std::vector<double>& values, uint64_t seed) {
    const size_t m = values.size();
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal;
    std::vector<double> q(m * m);
    for (double& x : q) x = normal(rng);
    for (size_t i = 0; i < m; ++i) {
        for (size_t j = 0; j < i; ++j) {
            double dot = 0.0;
            for (size_t t = 0; t < m; ++t) dot += q[i * m + t] * q[j * m + t];
            for (size_t t = 0; t < m; ++t) q[i * m + t] -= dot * q[j * m + t];
        }
        double norm = 0.0;
        for (size_t t = 0; t < m; ++t) norm += q[i * m + t] * q[i * m + t];
        for (size_t t = 0; t < m; ++t) q[i * m + t] /= std::sqrt(norm);
    }
    std::vector<double> h(m * m, 0.0);
    for (size_t a = 0; a < m; ++a) {
        for (size_t b = 0; b < m; ++b) {
            for (size_t i = 0; i < m; ++i) h[a * m + b] += q[i * m + a] * values[i] * q[i * m + b];
        }
    }
    return h;
}

TEST(PrincipalBasis, SymmetricEigenSolvesRandomRepeatedAndDiagonalSpectra) {
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> uniform(-3.0, 5.0);
    std::vector<std::vector<double>> spectra = {{2.5}, {1.0, 1.0}, {0.0, 0.0, 0.0}, {3.0, -1.0, 2.0, 0.5, 7.0}};
    for (size_t m : {50, 196}) {
        std::vector<double> values(m);
        for (double& x : values) x = uniform(rng);
        spectra.push_back(values);
        for (size_t i = 0; i < m; ++i) values[i] = i < m / 2 ? 4.0 : (i % 3 ? 1e-9 : 2.0);  // repeated and tiny
        spectra.push_back(values);
    }
    for (size_t c = 0; c < spectra.size(); ++c) {
        const std::vector<double>& expected = spectra[c];
        const size_t m = expected.size();
        // odd cases: a diagonal matrix as it is (nothing to reduce), even: rotated
        std::vector<double> h(m * m, 0.0);
        if (c % 2) {
            for (size_t i = 0; i < m; ++i) h[i * m + i] = expected[i];
        } else {
            h = with_spectrum(expected, 100 + c);
        }
        const std::vector<double> original = h;
        double scale = 1e-300;
        for (double x : expected) scale = std::max(scale, std::abs(x));
        std::vector<double> v;
        std::vector<double> found = symmetric_eigen(h, m, v);
        ASSERT_EQ(found.size(), m);
        ASSERT_EQ(v.size(), m * m);
        for (size_t i = 0; i < m; ++i) {
            for (size_t j = 0; j < m; ++j) {  // orthonormal rows
                double dot = 0.0;
                for (size_t t = 0; t < m; ++t) dot += v[i * m + t] * v[j * m + t];
                EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-10) << "case " << c << " rows " << i << ", " << j;
            }
            double residual = 0.0;  // |H v - lambda v|
            for (size_t a = 0; a < m; ++a) {
                double hv = 0.0;
                for (size_t b = 0; b < m; ++b) hv += original[a * m + b] * v[i * m + b];
                residual += (hv - found[i] * v[i * m + a]) * (hv - found[i] * v[i * m + a]);
            }
            EXPECT_LE(std::sqrt(residual), 1e-10 * scale) << "case " << c << " vector " << i;
        }
        std::vector<double> want = expected;
        std::sort(want.begin(), want.end());
        std::sort(found.begin(), found.end());
        for (size_t i = 0; i < m; ++i) EXPECT_NEAR(found[i], want[i], 1e-10 * scale) << "case " << c;
    }
}

TEST(FlatProjectedFirstPass, FindsTheNearestRowsWithExactDistances) {
    const size_t n = 300, dim = 128, nq = 500, k = 4;
    const std::vector<float> rows = low_rank(n, dim, 8, 0.5f, 8), queries = low_rank(nq, dim, 8, 0.5f, 9);
    const PrincipalBasis b = principal_basis(rows.data(), n, dim, true, 16, 0.0, 1, 3, 1);
    FlatIndex flat(dim, Metric::L2), projected(dim, Metric::L2);
    flat.add(n, rows.data(), nullptr);
    projected.add(n, rows.data(), nullptr);
    projected.set_projected_first_pass(b.basis.data(), b.dims, 8);
    std::vector<int64_t> want(nq * k), got(nq * k);
    std::vector<float> want_d(nq * k), got_d(nq * k);
    flat.search(nq, queries.data(), k, want.data(), want_d.data());
    projected.search(nq, queries.data(), k, got.data(), got_d.data());
    size_t same = 0;
    for (size_t i = 0; i < nq * k; ++i) same += got[i] == want[i];
    EXPECT_GE(same, nq * k * 99 / 100);
    for (size_t q = 0; q < nq; ++q) {
        for (size_t j = 0; j < k; ++j) {
            const double ref = test::ref_distance(Metric::L2, &queries[q * dim], &rows[size_t(got[q * k + j]) * dim], dim);
            EXPECT_NEAR(got_d[q * k + j], ref, 1e-4 * (1 + ref));
        }
    }
    projected.set_projected_first_pass(nullptr, 0, 0);  // off: the exact search's answers
    projected.search(nq, queries.data(), k, got.data(), got_d.data());
    EXPECT_EQ(got, want);
    EXPECT_THROW(projected.set_projected_first_pass(b.basis.data(), dim, 8), InvalidArgument);
}

IvfParams first_pass_params(size_t rerank = 2) {
    IvfParams p;
    p.nlist = 32;
    p.nprobe = 4;
    p.rerank = rerank;
    return p;
}

TEST(IvfFirstPass, AnswersExactDistancesAtTheRecallOfTheFullScan) {
    const size_t n = 6000, dim = 256, k = 10, nq = 200;
    for (Metric metric : {Metric::L2, Metric::Cosine, Metric::InnerProduct}) {
        // 12 directions hold about 95% of the variance; a basis that missed them would hold ~6%
        std::vector<float> x = low_rank(n + nq, dim, 12, 3.0f, 3);
        if (metric == Metric::Cosine) test::normalise_rows(x, dim);
        const std::vector<float> base(x.begin(), x.begin() + n * dim), queries(x.begin() + n * dim, x.end());
        const auto truth = naive_knn(metric, base, queries, dim, k);
        IvfIndex ivf(dim, metric, first_pass_params());
        ivf.add(n, base.data(), nullptr);
        std::vector<int64_t> full_ids(nq * k), ids(nq * k);
        std::vector<float> full_d(nq * k), d(nq * k);
        ivf.search(nq, queries.data(), k, full_ids.data(), full_d.data());
        ivf.set_first_pass_dims(IvfIndex::kFirstPassAuto);
        const auto [dims, share] = ivf.first_pass_in_use();
        ASSERT_GE(dims, 1u) << metric_name(metric);
        EXPECT_LE(dims, 16u) << metric_name(metric);  // 12 directions hold the data
        EXPECT_GE(share, 0.9);
        ivf.search(nq, queries.data(), k, ids.data(), d.data());
        const double full = recall(full_ids, truth, k), first = recall(ids, truth, k);
        EXPECT_GE(first, full - 0.02) << metric_name(metric) << ": " << first << " against " << full;
        EXPECT_GE(first, 0.85) << metric_name(metric);
        // whatever is returned carries its exact distance (re-ranked in float32), nearest first
        for (size_t q = 0; q < nq; ++q) {
            for (size_t j = 0; j < k; ++j) {
                const int64_t id = ids[q * k + j];
                ASSERT_GE(id, 0);
                const double ref = test::ref_distance(metric, &queries[q * dim], &base[size_t(id) * dim], dim);
                EXPECT_NEAR(d[q * k + j], ref, 1e-4 * (1.0 + std::abs(ref))) << metric_name(metric);
                if (j) EXPECT_LE(d[q * k + j - 1], d[q * k + j]);
            }
        }
        // off again: the full scan's answers exactly
        ivf.set_first_pass_dims(0);
        ivf.search(nq, queries.data(), k, ids.data(), d.data());
        EXPECT_EQ(ids, full_ids);
    }
}

// Set before training: the basis comes from the training sample and k-means runs in the
// subspace; the centroids are still full rows (the means of their members).
TEST(IvfFirstPass, TrainsInTheSubspaceWhenSetFirst) {
    const size_t n = 6000, dim = 256, k = 10, nq = 200;
    const std::vector<float> x = low_rank(n + nq, dim, 12, 3.0f, 6);
    const std::vector<float> base(x.begin(), x.begin() + n * dim), queries(x.begin() + n * dim, x.end());
    const auto truth = naive_knn(Metric::L2, base, queries, dim, k);
    IvfIndex ivf(dim, Metric::L2, first_pass_params());
    ivf.set_first_pass_dims(IvfIndex::kFirstPassAuto);
    ivf.add(n, base.data(), nullptr);
    const auto [dims, share] = ivf.first_pass_in_use();
    EXPECT_GE(dims, 1u);
    EXPECT_GE(share, 0.9);
    ASSERT_EQ(ivf.centroids().size(), 32 * dim);  // full rows, as without the first pass
    std::vector<int64_t> ids(nq * k);
    std::vector<float> d(nq * k);
    ivf.search(nq, queries.data(), k, ids.data(), d.data());
    EXPECT_GE(recall(ids, truth, k), 0.95);
    IvfIndex plain(dim, Metric::L2, first_pass_params());
    plain.add(n, base.data(), nullptr);
    plain.search(nq, queries.data(), k, ids.data(), d.data());
    const double full = recall(ids, truth, k);
    ivf.set_first_pass_dims(0);  // the lists trained in the subspace, scanned in full
    ivf.search(nq, queries.data(), k, ids.data(), d.data());
    EXPECT_GE(recall(ids, truth, k), full - 0.02);
}

// The exact answer of recall tuning's scan (search_ladder_and_exact) through the first pass:
// every query it proves is the brute-force answer, most are proven, and its ladder is the
// first pass's search at each nprobe.
TEST(IvfFirstPass, ProvenExactAnswersAreBruteForcesAndTheLadderIsTheSearch) {
    const size_t n = 6000, dim = 256, k = 10, nq = 150;
    for (Metric metric : {Metric::L2, Metric::Cosine, Metric::InnerProduct}) {
        std::vector<float> x = low_rank(n + nq, dim, 12, 3.0f, 7);
        if (metric == Metric::Cosine) test::normalise_rows(x, dim);
        const std::vector<float> base(x.begin(), x.begin() + n * dim), queries(x.begin() + n * dim, x.end());
        const auto truth = naive_knn(metric, base, queries, dim, k);
        IvfIndex ivf(dim, metric, first_pass_params());
        ivf.set_first_pass_dims(IvfIndex::kFirstPassAuto);
        ivf.add(n, base.data(), nullptr);
        ASSERT_GT(ivf.first_pass_in_use().first, 0u);
        const size_t nprobes[] = {1, 2, 4, 32};
        std::vector<int64_t> ids(5 * nq * k);
        std::vector<float> d(5 * nq * k);
        std::vector<uint8_t> proven(nq);
        ivf.search_ladder_and_exact(nq, queries.data(), k, nprobes, 4, ids.data(), d.data(), proven.data());
        size_t proofs = 0;
        for (size_t q = 0; q < nq; ++q) {
            if (!proven[q]) continue;
            ++proofs;
            for (size_t j = 0; j < k; ++j) {  // the exact answer: 5th of the [5, nq, k] answers
                EXPECT_EQ(ids[4 * nq * k + q * k + j], truth[q][j].second) << metric_name(metric) << " query " << q;
                EXPECT_NEAR(d[4 * nq * k + q * k + j], truth[q][j].first, 1e-4 * (1 + std::abs(truth[q][j].first)));
            }
        }
        if (metric == Metric::InnerProduct) {
            // no lower bounds: its exact answer scanned every list in full, proven as without the first pass
            EXPECT_EQ(proofs, nq);
        } else {
            EXPECT_GE(proofs, nq * 9 / 10) << metric_name(metric);
        }
        for (size_t e = 0; e < 3; ++e) {  // the ladder: the first pass's search at each value
            std::vector<int64_t> want(nq * k);
            std::vector<float> want_d(nq * k);
            SearchParams p;
            p.nprobe = nprobes[e];
            p.widen = false;
            ivf.search(nq, queries.data(), k, want.data(), want_d.data(), p);
            EXPECT_EQ(std::vector<int64_t>(ids.begin() + e * nq * k, ids.begin() + (e + 1) * nq * k), want)
                << metric_name(metric) << " nprobe " << nprobes[e];
            // the same bits: the ladder re-ranks query by query, the search list by list
            EXPECT_EQ(std::vector<float>(d.begin() + e * nq * k, d.begin() + (e + 1) * nq * k), want_d)
                << metric_name(metric) << " nprobe " << nprobes[e];
        }
    }
}

// The search's re-rank goes list by list over blocks of queries (as many as hold
// kRerankBlockPairs candidates): with k = 1000 (4000 candidates each), 400 queries are two
// blocks, and every answer is what the ladder's re-rank, query by query, gives.
TEST(IvfFirstPass, ReRankedByListInBlocksAsQueryByQuery) {
    const size_t n = 6000, dim = 256, k = 1000, nq = 400;
    ASSERT_LT(IvfIndex::kRerankBlockPairs / (k * IvfIndex::kFirstPassRerank), nq);
    std::vector<float> x = low_rank(n + nq, dim, 12, 3.0f, 21);
    const std::vector<float> base(x.begin(), x.begin() + n * dim), queries(x.begin() + n * dim, x.end());
    IvfIndex ivf(dim, Metric::L2, first_pass_params());
    ivf.set_first_pass_dims(IvfIndex::kFirstPassAuto);
    ivf.add(n, base.data(), nullptr);
    ASSERT_GT(ivf.first_pass_in_use().first, 0u);
    const size_t nprobes[] = {3, 6, 32};  // (an exact answer's ladder ends at nlist)
    std::vector<int64_t> ids(4 * nq * k);
    std::vector<float> d(4 * nq * k);
    std::vector<uint8_t> proven(nq);
    ivf.search_ladder_and_exact(nq, queries.data(), k, nprobes, 3, ids.data(), d.data(), proven.data());
    std::vector<int64_t> want(nq * k);
    std::vector<float> want_d(nq * k);
    SearchParams p;
    p.nprobe = nprobes[0];
    p.widen = false;
    ivf.search(nq, queries.data(), k, want.data(), want_d.data(), p);
    EXPECT_EQ(std::vector<int64_t>(ids.begin(), ids.begin() + nq * k), want);
    EXPECT_EQ(std::vector<float>(d.begin(), d.begin() + nq * k), want_d);
}

// adopt_rows_nearest: each label's nearest lists as nearest_lists gives them, the rows placed
// as adopt_rows places them given those lists (rows in another order than the labels), and
// the first pass's projected lists, projected at the adoption and reordered with the rows,
// answering as those an index projects at its first search (the same basis; the products
// blocked otherwise, so a near tie may differ: 99.5% of the answers are the same).
TEST(IvfFirstPass, AdoptedWithItsNearestListsAnswersAsAdoptedWithListsGiven) {
    const size_t n = 6000, dim = 256, k = 10, nq = 200, width = 6;
    const std::vector<float> x = low_rank(n + nq, dim, 12, 3.0f, 41);
    const std::vector<float> base(x.begin(), x.begin() + n * dim), queries(x.begin() + n * dim, x.end());
    const auto [order, shuffled] = test::shuffled_rows(base, dim, 9);  // label r's vector at row order[r]
    for (Metric metric : {Metric::L2, Metric::Cosine}) {
        SCOPED_TRACE(metric_name(metric));
        IvfIndex given(dim, metric, first_pass_params()), found(dim, metric, first_pass_params());
        for (IvfIndex* ivf : {&given, &found}) {
            ivf->set_first_pass_dims(IvfIndex::kFirstPassAuto);  // trained in its subspace
            ivf->train(n, base.data());
        }
        std::vector<int64_t> want(n * width), first(n);
        given.nearest_lists(n, base.data(), width, want.data());
        for (size_t r = 0; r < n; ++r) first[r] = want[r * width];
        given.adopt_rows(test::block_of(shuffled, dim), nullptr, first.data(), order.data());
        std::vector<int64_t> got(n * width);
        found.adopt_rows_nearest(test::block_of(shuffled, dim), nullptr, order.data(), width, got.data());
        EXPECT_EQ(got, want);
        EXPECT_EQ(found.list_labels(), given.list_labels());
        ASSERT_GT(found.first_pass_in_use().first, 0u);
        const test::Results a = test::search(given, queries, k), b = test::search(found, queries, k);
        size_t same = 0;
        for (size_t i = 0; i < nq * k; ++i) {
            if (a.ids[i] != b.ids[i]) continue;
            ++same;
            EXPECT_EQ(a.dist[i], b.dist[i]);  // exact distances, re-ranked
        }
        EXPECT_GE(same, nq * k * 995 / 1000);
    }
    std::vector<int64_t> out(n * 2);
    IvfIndex ivf(dim, Metric::L2, first_pass_params());
    ivf.train(n, base.data());
    auto block = test::block_of(base, dim);
    EXPECT_THROW(ivf.adopt_rows_nearest(block, nullptr, nullptr, 33, out.data()), InvalidArgument);  // nlist 32
    EXPECT_FALSE(block->taken());
    EXPECT_EQ(ivf.size(), 0u);
}

// The exact answers of the recall tuning's scan are re-ranked list by list in blocks of queries
// holding at most kRerankBlockPairs candidates: with k = 1000 (a few thousand candidates each
// within reach of the k-th), 800 queries take several blocks. Each proven answer is the brute
// force of the same kernel (distance(): the bits the re-rank computes), ties by id.
TEST(IvfFirstPass, ExactAnswersReRankedByListInBlocksAreBruteForces) {
    const size_t n = 6000, dim = 256, k = 1000, nq = 800;
    std::vector<float> x = low_rank(n + nq, dim, 12, 3.0f, 33);
    const std::vector<float> base(x.begin(), x.begin() + n * dim), queries(x.begin() + n * dim, x.end());
    IvfIndex ivf(dim, Metric::L2, first_pass_params());
    ivf.set_first_pass_dims(IvfIndex::kFirstPassAuto);
    ivf.add(n, base.data(), nullptr);
    ASSERT_GT(ivf.first_pass_in_use().first, 0u);
    const size_t nprobes[] = {3, 6, 32};
    std::vector<int64_t> ids(4 * nq * k);
    std::vector<float> d(4 * nq * k);
    std::vector<uint8_t> proven(nq);
    ivf.search_ladder_and_exact(nq, queries.data(), k, nprobes, 3, ids.data(), d.data(), proven.data());
    const DistanceKernels& kern = kernels();
    size_t proofs = 0;
    for (size_t q = 0; q < nq; ++q) {
        if (!proven[q]) continue;
        ++proofs;
        std::vector<std::pair<float, int64_t>> all(n);
        for (size_t i = 0; i < n; ++i) {
            all[i] = {distance(Metric::L2, kern, &queries[q * dim], &base[i * dim], dim), static_cast<int64_t>(i)};
        }
        std::partial_sort(all.begin(), all.begin() + k, all.end());
        for (size_t j = 0; j < k; ++j) {  // the exact answer: 4th of the [4, nq, k] answers
            ASSERT_EQ(ids[3 * nq * k + q * k + j], all[j].second) << "query " << q << " rank " << j;
            ASSERT_EQ(d[3 * nq * k + q * k + j], all[j].first) << "query " << q << " rank " << j;
        }
    }
    EXPECT_GE(proofs, nq * 9 / 10);
}

// The first pass scanned through its panels (AVX-512) and through sgemm (the level lowered):
// the same exact answers and proofs, and the ladder's answers but for near ties, for each
// metric (ProvenExactAnswersAreBruteForces checks the panels' exact answers against brute force).
TEST(IvfFirstPass, AnswersAlikeThroughItsPanelsAndThroughSgemm) {
    if (!tile_f32::available()) GTEST_SKIP() << "no AVX-512 on this CPU";
    const size_t n = 6000, dim = 256, k = 10, nq = 120;
    for (Metric metric : {Metric::L2, Metric::Cosine, Metric::InnerProduct}) {
        // L2 rows far from the origin (offset 50): the panels keep residuals to each centroid
        std::vector<float> x = low_rank(n + nq, dim, 12, 3.0f, 5);
        if (metric == Metric::L2) {
            for (float& v : x) v += 50.0f;
        }
        if (metric == Metric::Cosine) test::normalise_rows(x, dim);
        IvfIndex ivf(dim, metric, first_pass_params());
        ivf.set_first_pass_dims(IvfIndex::kFirstPassAuto);
        ivf.add(n, x.data(), nullptr);
        ASSERT_GT(ivf.first_pass_in_use().first, 0u) << metric_name(metric);
        const float* queries = x.data() + n * dim;
        const size_t nprobes[] = {1, 3, 32};
        auto run = [&](std::vector<int64_t>& ids, std::vector<float>& d, std::vector<uint8_t>& proven) {
            ids.assign(4 * nq * k, 0);
            d.assign(4 * nq * k, 0.0f);
            proven.assign(nq, 0);
            ivf.search_ladder_and_exact(nq, queries, k, nprobes, 3, ids.data(), d.data(), proven.data());
        };
        std::vector<int64_t> with_ids, without_ids;
        std::vector<float> with_d, without_d;
        std::vector<uint8_t> with_proof, without_proof;
        run(with_ids, with_d, with_proof);
        const SimdLevel level = simd_level();
        set_simd_level(SimdLevel::Avx2);
        ASSERT_FALSE(tile_f32::available());
        run(without_ids, without_d, without_proof);
        set_simd_level(level);
        EXPECT_EQ(with_proof, without_proof) << metric_name(metric);
        // the exact answers where both proved them, and the ladder's re-ranked answers
        size_t same = 0, total = 0;
        for (size_t a = 0; a < 4; ++a) {
            if (a == 2) continue;  // nlist's plain answer: the deep selections' best, as scanned
            for (size_t q = 0; q < nq; ++q) {
                if (a == 3 && !(with_proof[q] && without_proof[q])) continue;
                for (size_t j = 0; j < k; ++j) {
                    const size_t at = (a * nq + q) * k + j;
                    if (a == 3) {  // (the lowered level's exact kernels sum in another order)
                        ASSERT_EQ(with_ids[at], without_ids[at]) << metric_name(metric) << " query " << q;
                        ASSERT_NEAR(with_d[at], without_d[at], 1e-5 * (1.0 + std::abs(without_d[at])));
                    }
                    same += with_ids[at] == without_ids[at];
                    ++total;
                }
            }
        }
        // the ladder's candidates come from scan distances rounded differently: near ties may swap
        EXPECT_GE(double(same) / double(total), 0.995) << metric_name(metric);
    }
}

TEST(IvfFirstPass, AutoDeclinesShortVectorsAndSmallIndexesExplicitDimsDoNot) {
    const size_t dim = 64;
    const std::vector<float> x = low_rank(5000, dim, 6, 0.05f, 4);
    IvfIndex ivf(dim, Metric::L2, first_pass_params());
    ivf.add(5000, x.data(), nullptr);
    ivf.set_first_pass_dims(IvfIndex::kFirstPassAuto);
    EXPECT_EQ(ivf.first_pass_in_use().first, 0u);  // dim < kFirstPassMinDim
    ivf.set_first_pass_dims(8);
    EXPECT_EQ(ivf.first_pass_in_use().first, 8u);
    EXPECT_EQ(ivf.first_pass_dims(), 8u);

    IvfIndex small(dim, Metric::L2, first_pass_params());
    small.add(1000, x.data(), nullptr);
    small.set_first_pass_dims(IvfIndex::kFirstPassAuto);
    EXPECT_EQ(small.first_pass_in_use().first, 0u);  // auto: fewer than kFirstPassMinRows (and dim < 256)
    small.set_first_pass_dims(8);
    EXPECT_EQ(small.first_pass_in_use().first, 8u);  // a count: any index with more rows than it
    // the projected lists follow every add
    small.add(4000, x.data() + 1000 * dim, nullptr);
    EXPECT_EQ(small.first_pass_in_use().first, 8u);
    std::vector<float> twin(x.begin() + 4321 * dim, x.begin() + 4322 * dim);
    small.add(1, twin.data(), nullptr);  // label 5000, a copy of label 4321
    std::vector<int64_t> ids(2);
    std::vector<float> d(2);
    small.search(1, twin.data(), 2, ids.data(), d.data());
    EXPECT_EQ(d[0], 0.0f);
    EXPECT_EQ(d[1], 0.0f);
    EXPECT_TRUE((ids[0] == 4321 && ids[1] == 5000));  // equal distances: by id
}

TEST(IvfFirstPass, RefusesStorageWithoutFloat32RowsToReRankAndBadDims) {
    IvfIndex plain(32, Metric::L2, first_pass_params(0));
    EXPECT_THROW(plain.set_first_pass_dims(8), InvalidArgument);  // rerank 0
    plain.set_first_pass_dims(0);                                  // off is always fine
    IvfParams sq8 = first_pass_params();
    sq8.storage = Storage::Sq8;
    IvfIndex coded(32, Metric::L2, sq8);
    EXPECT_THROW(coded.set_first_pass_dims(IvfIndex::kFirstPassAuto), InvalidArgument);
    IvfIndex ivf(32, Metric::L2, first_pass_params());
    EXPECT_THROW(ivf.set_first_pass_dims(32), InvalidArgument);
    EXPECT_THROW(ivf.set_first_pass_dims(100), InvalidArgument);
    EXPECT_EQ(ivf.first_pass_in_use().first, 0u);  // untrained: nothing to fit
}

// The ladder and exact answers of recall tuning's scan and a plain search, for comparing two
// indexes that must answer alike.
struct Answers {
    std::vector<int64_t> ids, ladder;
    std::vector<float> distances;
    std::vector<uint8_t> proven;
    bool operator==(const Answers& o) const {
        return ids == o.ids && ladder == o.ladder && distances == o.distances && proven == o.proven;
    }
};

Answers answers_of(const Index& index, const std::vector<float>& queries, size_t k) {
    const IvfIndex& ivf = dynamic_cast<const IvfIndex&>(index);
    const size_t nq = queries.size() / ivf.dim();
    Answers a{std::vector<int64_t>(nq * k), std::vector<int64_t>(3 * nq * k), std::vector<float>(nq * k),
              std::vector<uint8_t>(nq)};
    ivf.search(nq, queries.data(), k, a.ids.data(), a.distances.data());
    const size_t nprobes[] = {1, 32};
    std::vector<float> d(3 * nq * k);
    ivf.search_ladder_and_exact(nq, queries.data(), k, nprobes, 2, a.ladder.data(), d.data(), a.proven.data());
    return a;
}

// Saved with the index (docs/FORMAT.md): the setting, and once fitted the basis and whether the
// lists were assigned through it, so a loaded index answers as the one saved, ladder and
// proofs included, whether the basis came from training, from a first search, or not yet.
TEST(IvfFirstPass, SavedWithTheIndexTheLoadedOneAnswersAlike) {
    const size_t n = 5000, dim = 256, k = 10, nq = 100;
    const std::vector<float> x = low_rank(n + nq, dim, 12, 3.0f, 8);
    const std::vector<float> base(x.begin(), x.begin() + n * dim), queries(x.begin() + n * dim, x.end());
    const std::string path = ::testing::TempDir() + "ivf_first_pass.snn";
    for (int when : {0, 1, 2}) {  // set before training, after it (fitted by a search), set but not fitted
        SCOPED_TRACE(when);
        IvfIndex ivf(dim, Metric::L2, first_pass_params());
        if (when == 0) ivf.set_first_pass_dims(IvfIndex::kFirstPassAuto);
        ivf.add(n, base.data(), nullptr);
        if (when != 0) ivf.set_first_pass_dims(when == 1 ? 24 : IvfIndex::kFirstPassAuto);
        if (when != 2) ASSERT_GT(ivf.first_pass_in_use().first, 0u);
        ivf.save(path);
        for (bool mmap : {true, false}) {
            auto loaded = load_index(path, mmap);
            auto& back = dynamic_cast<IvfIndex&>(*loaded);
            EXPECT_EQ(back.first_pass_dims(), ivf.first_pass_dims());
            EXPECT_EQ(back.first_pass_in_use(), ivf.first_pass_in_use());
            EXPECT_TRUE(answers_of(back, queries, k) == answers_of(ivf, queries, k)) << "mmap " << mmap;
        }
    }
    // An index without a first pass writes none of it: its files stay as they were.
    IvfIndex plain(dim, Metric::L2, first_pass_params());
    plain.add(n, base.data(), nullptr);
    plain.save(path);
    const std::string bytes = test::file_bytes(path);
    const std::vector<uint8_t> raw(bytes.begin(), bytes.end());
    EXPECT_EQ(test::param_value_offset(raw, "first_pass_dims"), 0u);
    EXPECT_EQ(test::section_offset(raw, SectionType::IvfFirstPassBasis), 0u);
    EXPECT_EQ(dynamic_cast<IvfIndex&>(*load_index(path)).first_pass_dims(), 0u);
    std::remove(path.c_str());
}

// A damaged first pass is refused, never searched: its lower bounds would prove wrong answers.
TEST(IvfFirstPass, LoadRefusesADamagedBasisOrSetting) {
    const size_t n = 4500, dim = 32;
    const std::vector<float> x = low_rank(n, dim, 6, 0.05f, 9);
    IvfIndex ivf(dim, Metric::L2, first_pass_params());
    ivf.set_first_pass_dims(8);
    ivf.add(n, x.data(), nullptr);
    ASSERT_EQ(ivf.first_pass_in_use().first, 8u);
    const std::string path = ::testing::TempDir() + "ivf_first_pass_bad.snn";
    ivf.save(path);
    const std::string bytes = test::file_bytes(path);
    std::remove(path.c_str());
    const std::vector<uint8_t> good(bytes.begin(), bytes.end());
    EXPECT_NO_THROW(load_index(IndexFile::from_bytes(good, false)));
    const size_t basis = test::section_offset(good, SectionType::IvfFirstPassBasis);
    ASSERT_NE(basis, 0u);
    const auto refused = [&](const std::function<void(std::vector<uint8_t>&)>& damage, const char* what) {
        std::vector<uint8_t> bad = good;
        damage(bad);
        EXPECT_THROW(load_index(IndexFile::from_bytes(bad, false)), FileFormatError) << what;
    };
    const auto set_float = [](std::vector<uint8_t>& b, size_t at, float v) { std::memcpy(b.data() + at, &v, 4); };
    const auto set_param = [](std::vector<uint8_t>& b, const char* name, uint64_t v) {
        const size_t at = test::param_value_offset(b, name);
        ASSERT_NE(at, 0u) << name;
        std::memcpy(b.data() + at, &v, 8);
    };
    refused([&](auto& b) { set_float(b, basis + 4 * 5, std::numeric_limits<float>::quiet_NaN()); }, "NaN");
    refused([&](auto& b) {  // one row 1% too long: projected distances would exceed exact ones
        for (size_t t = 0; t < dim; ++t) {
            float v;
            std::memcpy(&v, b.data() + basis + 4 * t, 4);
            set_float(b, basis + 4 * t, v * 1.01f);
        }
    }, "not orthonormal");
    refused([&](auto& b) { set_param(b, "first_pass_basis", dim); }, "basis dims >= dim");
    refused([&](auto& b) { set_param(b, "first_pass_basis", 9); }, "basis dims not the section's");
    refused([&](auto& b) { set_param(b, "first_pass_dims", dim); }, "setting >= dim");
    refused([&](auto& b) { set_param(b, "rerank", 0); }, "no float32 rows to re-rank from");
    refused([&](auto& b) { set_param(b, "first_pass_captured", 0x7FF8000000000000ull); }, "captured NaN");
}

// Searches racing the first pass's lazy fit and projection (and each other) answer as one
// thread alone does. Runs under TSan (test.sh: *Concurren*).
TEST(IvfFirstPassConcurrency, SearchesRacingTheFitAnswerAlike) {
    const size_t n = 4500, dim = 32, k = 5, nq = 64;
    const std::vector<float> x = low_rank(n + nq, dim, 6, 0.05f, 5);
    const float* queries = x.data() + n * dim;
    IvfIndex reference(dim, Metric::L2, first_pass_params());
    reference.add(n, x.data(), nullptr);
    reference.set_first_pass_dims(8);
    std::vector<int64_t> want(nq * k);
    std::vector<float> want_d(nq * k);
    reference.search(nq, queries, k, want.data(), want_d.data());

    IvfIndex ivf(dim, Metric::L2, first_pass_params());
    ivf.add(n, x.data(), nullptr);
    ivf.set_first_pass_dims(8);
    std::vector<std::vector<int64_t>> got(4, std::vector<int64_t>(nq * k));
    std::vector<std::thread> threads;
    for (size_t t = 0; t < got.size(); ++t) {
        threads.emplace_back([&, t]() {
            std::vector<float> d(nq * k);
            SearchParams p;
            p.threads = 1;
            ivf.search(nq, queries, k, got[t].data(), d.data(), p);
        });
    }
    for (auto& th : threads) th.join();
    for (const auto& g : got) EXPECT_EQ(g, want);
    EXPECT_EQ(ivf.first_pass_in_use().first, 8u);
}

}  // namespace
}  // namespace sparknn
