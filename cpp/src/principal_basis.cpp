#include "principal_basis.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "blas.h"
#include "sparknn/distance.h"
#include "sparknn/error.h"
#include "sparknn/parallel.h"

namespace sparknn {
namespace {

// Subspace iterations: each multiplies the energy ratio of a direction outside the
// top max_dims to one inside by (lambda_out / lambda_in); 5 leave Fashion-MNIST's chosen 96
// dimensions holding 0.910 of the variance, where the sample's exact eigenvectors hold 0.911
// (numpy's eigh); 8 took 0.07 s more for the same. The share reported is always that of the
// basis returned (its Rayleigh quotients), however far the iteration got.
constexpr int kIterations = 5;

// Makes the rows of q [m, dim] orthonormal in place: modified Gram-Schmidt in float
// (SIMD dot products; the iteration converges through rounding, and the last call's basis
// is orthonormal within float rounding, which is all a first pass needs). A row that
// vanishes against the ones before it (rank-deficient data) is replaced by a random
// direction made orthogonal to them.
// Row i of q [m, dim] made orthogonal to rows [from, i) (the rows before `from` are out of it
// already) and of unit norm; a row left with less than 1e-4 of its norm before (`before`)
// is drawn again at random and made orthogonal to every row before it.
void orthonormalise_row(std::vector<float>& q, size_t i, size_t from, size_t dim, double before, std::mt19937_64& rng) {
    const DistanceKernels& kern = kernels();
    std::normal_distribution<float> normal;
    float* row = &q[i * dim];
    for (int attempt = 0;; ++attempt) {
        double norm = std::sqrt(static_cast<double>(kern.dot(row, row, dim)));
        for (int pass = 0; pass < 2 && norm > 0.0; ++pass) {
            const double start = norm;
            for (size_t j = from; j < i; ++j) {
                const float* other = &q[j * dim];
                const float dot = kern.dot(row, other, dim);
                for (size_t t = 0; t < dim; ++t) row[t] -= dot * other[t];
            }
            norm = std::sqrt(static_cast<double>(kern.dot(row, row, dim)));
            if (norm > 0.5 * start) break;
        }
        if (norm > 1e-4 * before && norm > 0.0) {
            const float inverse = static_cast<float>(1.0 / norm);
            for (size_t t = 0; t < dim; ++t) row[t] *= inverse;
            return;
        }
        SPARKNN_THROW_IF_NOT(attempt < 8, Error, "principal_basis: no direction orthogonal to ", i, " others");
        for (size_t t = 0; t < dim; ++t) row[t] = normal(rng);
        before = std::sqrt(static_cast<double>(kern.dot(row, row, dim)));
        from = 0;
    }
}

// Gram-Schmidt by blocks of rows (BCGS2): each block has the rows before it taken out twice
// by two matrix products (the second mends what rounding left of the first), then its own
// rows are orthonormalised one by one. Row by row against every earlier row (vector by vector)
// was a third of the basis's fit at 192 x 784 (Fashion-MNIST: 40 of 135 ms).
void orthonormalise(std::vector<float>& q, size_t m, size_t dim, std::mt19937_64& rng) {
    const DistanceKernels& kern = kernels();
    constexpr size_t kBlock = 32;
    std::vector<double> before(m);
    for (size_t i = 0; i < m; ++i) before[i] = std::sqrt(static_cast<double>(kern.dot(&q[i * dim], &q[i * dim], dim)));
    std::vector<float> products;
    for (size_t b0 = 0; b0 < m; b0 += kBlock) {
        const size_t rows = std::min(kBlock, m - b0);
        float* block = &q[b0 * dim];
        for (int pass = 0; pass < 2 && b0 > 0; ++pass) {
            products.resize(rows * b0);
            gemm_abt(static_cast<int>(rows), static_cast<int>(b0), static_cast<int>(dim), block, q.data(),
                     products.data());
            gemm_ab_subtract(static_cast<int>(rows), static_cast<int>(dim), static_cast<int>(b0), products.data(),
                             q.data(), block);
        }
        for (size_t i = b0; i < b0 + rows; ++i) orthonormalise_row(q, i, b0, dim, before[i], rng);
    }
}

}  // namespace

// Householder reduction to tridiagonal form, then the implicit QL iteration with Wilkinson's
// shift (the tred2 / tql2 pair of EISPACK, as JAMA has them): about 9 m^3 flops with the
// vectors, where cyclic Jacobi took ~8 sweeps of 9 m^3 / 2 (0.08 s at m = 196 on a Zen 1).
std::vector<double> symmetric_eigen(std::vector<double>& h, size_t m, std::vector<double>& v) {
    std::vector<double> d(m), e(m);
    if (m == 0) {
        v.clear();
        return d;
    }
    // tred2: h becomes the accumulated transformation (its rows indexed [k * m + j] = Z[k][j])
    std::vector<double>& z = h;
    const size_t n = m;
    for (size_t j = 0; j < n; ++j) d[j] = z[(n - 1) * n + j];
    for (size_t i = n - 1; i > 0; --i) {
        double scale = 0.0, hh = 0.0;
        for (size_t k = 0; k < i; ++k) scale += std::abs(d[k]);
        if (scale == 0.0) {
            e[i] = d[i - 1];
            for (size_t j = 0; j < i; ++j) {
                d[j] = z[(i - 1) * n + j];
                z[i * n + j] = 0.0;
                z[j * n + i] = 0.0;
            }
        } else {
            for (size_t k = 0; k < i; ++k) {
                d[k] /= scale;
                hh += d[k] * d[k];
            }
            double f = d[i - 1];
            double g = std::sqrt(hh);
            if (f > 0) g = -g;
            e[i] = scale * g;
            hh -= f * g;
            d[i - 1] = f - g;
            for (size_t j = 0; j < i; ++j) e[j] = 0.0;
            for (size_t j = 0; j < i; ++j) {
                f = d[j];
                z[j * n + i] = f;
                g = e[j] + z[j * n + j] * f;
                for (size_t k = j + 1; k < i; ++k) {
                    g += z[k * n + j] * d[k];
                    e[k] += z[k * n + j] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for (size_t j = 0; j < i; ++j) {
                e[j] /= hh;
                f += e[j] * d[j];
            }
            const double half = f / (hh + hh);
            for (size_t j = 0; j < i; ++j) e[j] -= half * d[j];
            for (size_t j = 0; j < i; ++j) {
                f = d[j];
                g = e[j];
                for (size_t k = j; k < i; ++k) z[k * n + j] -= f * e[k] + g * d[k];
                d[j] = z[(i - 1) * n + j];
                z[i * n + j] = 0.0;
            }
        }
        d[i] = hh;
    }
    for (size_t i = 0; i + 1 < n; ++i) {  // accumulate the transformations
        z[(n - 1) * n + i] = z[i * n + i];
        z[i * n + i] = 1.0;
        const double hh = d[i + 1];
        if (hh != 0.0) {
            for (size_t k = 0; k <= i; ++k) d[k] = z[k * n + i + 1] / hh;
            for (size_t j = 0; j <= i; ++j) {
                double g = 0.0;
                for (size_t k = 0; k <= i; ++k) g += z[k * n + i + 1] * z[k * n + j];
                for (size_t k = 0; k <= i; ++k) z[k * n + j] -= g * d[k];
            }
        }
        for (size_t k = 0; k <= i; ++k) z[k * n + i + 1] = 0.0;
    }
    for (size_t j = 0; j < n; ++j) {
        d[j] = z[(n - 1) * n + j];
        z[(n - 1) * n + j] = 0.0;
    }
    z[(n - 1) * n + n - 1] = 1.0;
    e[0] = 0.0;
    // The eigenvectors are z's columns: held as rows of v (the QL's rotations then touch two
    // contiguous rows).
    v.assign(n * n, 0.0);
    for (size_t k = 0; k < n; ++k) {
        for (size_t j = 0; j < n; ++j) v[j * n + k] = z[k * n + j];
    }
    // tql2
    for (size_t i = 1; i < n; ++i) e[i - 1] = e[i];
    e[n - 1] = 0.0;
    double f = 0.0, largest = 0.0;
    const double eps = std::numeric_limits<double>::epsilon();
    for (size_t l = 0; l < n; ++l) {
        largest = std::max(largest, std::abs(d[l]) + std::abs(e[l]));
        size_t k = l;
        while (k < n && std::abs(e[k]) > eps * largest) ++k;  // e[n - 1] is 0: stops by n - 1
        if (k > l) {
            for (int iteration = 0;; ++iteration) {
                SPARKNN_THROW_IF_NOT(iteration < 60, Error, "symmetric_eigen: the QL iteration did not converge");
                double g = d[l];
                double p = (d[l + 1] - g) / (2.0 * e[l]);
                double r = std::hypot(p, 1.0);
                if (p < 0) r = -r;
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                const double dl1 = d[l + 1];
                double shift = g - d[l];
                for (size_t i = l + 2; i < n; ++i) d[i] -= shift;
                f += shift;
                p = d[k];
                double c = 1.0, c2 = 1.0, c3 = 1.0, s = 0.0, s2 = 0.0;
                const double el1 = e[l + 1];
                for (size_t i = k; i-- > l;) {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    const double hp = c * p;
                    r = std::hypot(p, e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = hp + s * (c * g + s * d[i]);
                    double* vi = &v[i * n];
                    double* vn = &v[(i + 1) * n];
                    for (size_t t = 0; t < n; ++t) {
                        const double a = vn[t];
                        vn[t] = s * vi[t] + c * a;
                        vi[t] = c * vi[t] - s * a;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if (!(std::abs(e[l]) > eps * largest)) break;
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    return d;
}

PrincipalBasis principal_basis(const float* rows, size_t n, size_t dim, bool centred, size_t max_dims,
                               double min_share, size_t step, uint64_t seed, int threads) {
    SPARKNN_CHECK_ARG(max_dims >= 1 && max_dims < dim, "principal_basis: max_dims ", max_dims, " outside [1, ",
                      dim, ")");
    SPARKNN_CHECK_ARG(step >= 1, "principal_basis: step must be >= 1");
    PrincipalBasis out;
    if (n == 0) return out;
    std::vector<double> mean(dim, 0.0);
    if (centred) {
        for (size_t i = 0; i < n; ++i) {
            for (size_t t = 0; t < dim; ++t) mean[t] += rows[i * dim + t];
        }
        for (double& m : mean) m /= static_cast<double>(n);
    }
    // The covariance (or second moment) C [dim, dim] = X^T X of the shifted sample X, in place
    // (a transposed copy cost a third of the products: its writes stride by n).
    std::vector<float> x(n * dim);
    parallel_for(n, 256, threads, [&](size_t lo, size_t hi, int) {
        for (size_t i = lo; i < hi; ++i) {
            for (size_t t = 0; t < dim; ++t) x[i * dim + t] = static_cast<float>(rows[i * dim + t] - mean[t]);
        }
    });
    // Symmetric: each block of rows computes the columns from its first row on, mirrored after.
    std::vector<float> cov(dim * dim);
    constexpr size_t kBlock = 64;
    parallel_for((dim + kBlock - 1) / kBlock, 1, threads, [&](size_t lo, size_t hi, int) {
        for (size_t blk = lo; blk < hi; ++blk) {
            const size_t r0 = blk * kBlock, r1 = std::min(dim, r0 + kBlock);
            gemm_atb(static_cast<int>(r1 - r0), static_cast<int>(dim - r0), static_cast<int>(n), x.data() + r0,
                     x.data() + r0, static_cast<int>(dim), cov.data() + r0 * dim + r0, static_cast<int>(dim));
        }
    });
    for (size_t i = 0; i < dim; ++i) {
        for (size_t j = 0; j < i; ++j) cov[i * dim + j] = cov[j * dim + i];
    }
    x = {};
    double total = 0.0;
    for (size_t t = 0; t < dim; ++t) total += cov[t * dim + t];
    if (!(total > 0.0) || !std::isfinite(total)) return out;  // every row the same (or not finite)
    // Scaled to a unit trace: the iteration's products (Q C, whose rows orthonormalise squares in
    // float32) then stay far inside float32's range whatever the vectors' magnitude. Unscaled,
    // values of 1e10 overflowed those squares and lost the leading direction (0.43 of the
    // variance captured where it holds 0.99995). The directions are the same; eigenvalues are
    // now shares of the total.
    const double to_unit = 1.0 / total;
    for (float& c : cov) c = static_cast<float>(c * to_unit);
    total = 1.0;
    // No max_dims directions can hold more than sqrt(max_dims sum(lambda^2)) / sum(lambda) of the
    // energy (Cauchy-Schwarz over the top eigenvalues; sum(lambda^2) = |C|_F^2): isotropic data
    // (a share near sqrt(max_dims / dim)) is declined before the iteration.
    if (min_share > 0.0) {
        double frobenius = 0.0;
        for (const float c : cov) frobenius += double(c) * c;
        if (std::sqrt(double(max_dims) * frobenius) < min_share * total) return out;
    }

    // Subspace iteration: Q <- orth(Q C), from a random start.
    const size_t m = max_dims;
    std::mt19937_64 rng(seed ^ 0x5DEECE66Dull);
    std::normal_distribution<float> normal;
    std::vector<float> q(m * dim), z(m * dim);
    for (float& x : q) x = normal(rng);
    orthonormalise(q, m, dim, rng);
    for (int it = 0; it < kIterations; ++it) {
        gemm_abt_rows(m, dim, dim, q.data(), cov.data(), z.data(), threads, 64);  // Q C (C symmetric)
        q.swap(z);
        orthonormalise(q, m, dim, rng);
    }
    // Rayleigh-Ritz: H = Q C Q^T [m, m], its eigenvectors order the directions of Q.
    gemm_abt_rows(m, dim, dim, q.data(), cov.data(), z.data(), threads, 64);
    std::vector<float> hf(m * m);
    gemm_abt_rows(m, m, dim, z.data(), q.data(), hf.data(), threads, 64);
    std::vector<double> h(hf.begin(), hf.end());
    for (size_t i = 0; i < m; ++i) {  // symmetric up to rounding: make it exactly so
        for (size_t j = i + 1; j < m; ++j) h[i * m + j] = h[j * m + i] = 0.5 * (h[i * m + j] + h[j * m + i]);
    }
    std::vector<double> v;
    const std::vector<double> values = symmetric_eigen(h, m, v);
    std::vector<size_t> order(m);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return values[a] > values[b]; });

    size_t dims = 0;
    double held = 0.0, share = 0.0;
    for (size_t d = 1; d <= m; ++d) {
        held += std::max(values[order[d - 1]], 0.0);
        if (min_share <= 0.0 ? d == m : (d % step == 0 || d == m) && held >= min_share * total) {
            dims = d;
            share = held / total;
            break;
        }
    }
    if (dims == 0) return out;
    out.dims = dims;
    out.captured = std::min(share, 1.0);
    out.basis.assign(dims * dim, 0.0f);
    for (size_t i = 0; i < dims; ++i) {  // Ritz vector i: sum_j v[order[i], j] Q_j
        std::vector<double> row(dim, 0.0);
        for (size_t j = 0; j < m; ++j) {
            const double c = v[order[i] * m + j];
            for (size_t t = 0; t < dim; ++t) row[t] += c * q[j * dim + t];
        }
        for (size_t t = 0; t < dim; ++t) out.basis[i * dim + t] = static_cast<float>(row[t]);
    }
    return out;
}

double gram_excess(const float* basis, size_t dims, size_t dim) {
    // (symmetric: each product once, counted in both rows; dims^2 dim / 2 flops, ~5 ms at 96 x 784)
    std::vector<double> sums(dims, 0.0);
    for (size_t i = 0; i < dims; ++i) {
        for (size_t j = i; j < dims; ++j) {
            double dot = 0.0;
            for (size_t t = 0; t < dim; ++t) dot += double(basis[i * dim + t]) * basis[j * dim + t];
            const double off = std::fabs(dot - (i == j ? 1.0 : 0.0));
            sums[i] += off;
            if (j != i) sums[j] += off;
        }
    }
    return dims ? *std::max_element(sums.begin(), sums.end()) : 0.0;
}

}  // namespace sparknn
