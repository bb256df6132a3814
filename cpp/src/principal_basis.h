// The principal subspace of a sample of vectors: an orthonormal basis of the
// directions that hold most of its energy (PCA without a LAPACK: the sample's
// covariance by sgemm, subspace iteration, and a symmetric eigensolver on the
// small projected matrix). Long vectors projected onto it keep their distances
// closely enough for a first pass whose candidates are re-ranked exactly
// (the IVF first pass, ivf_first_pass.cpp); as faiss' PCAMatrix does for its
// pre-transforms.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sparknn {

struct PrincipalBasis {
    size_t dims = 0;           // rows of basis; 0 when no basis was chosen
    std::vector<float> basis;  // [dims, dim]: orthonormal rows, strongest direction first
    double captured = 0.0;     // the share of the sample's energy the basis holds, in [0, 1]
};

// How far the rows of basis [dims, dim] are from orthonormal: the largest row sum of
// |B B^T - I|, in double. By Gershgorin it bounds the squared spectral norm of B by 1 + it,
// so a projected squared distance is at most (1 + excess) times the exact one: the slack a
// proof by projected lower bounds allows (float rounding leaves ~1e-6 at 96 x 784).
double gram_excess(const float* basis, size_t dims, size_t dim);

// rows: the sample [n, dim]. centred: the energy about the sample's mean (what L2 distances
// see: they do not depend on a shift), else about the origin (inner products).
// The least multiple of `step` dimensions (at most max_dims, < dim) whose basis holds at
// least min_share of the energy; dims = 0 when even max_dims holds less. min_share <= 0:
// exactly max_dims. seed: the subspace iteration's random start (deterministic).
PrincipalBasis principal_basis(const float* rows, size_t n, size_t dim, bool centred, size_t max_dims,
                               double min_share, size_t step, uint64_t seed, int threads);

// The eigenvalues (returned, unordered) and eigenvectors (rows of v [m, m], orthonormal, in the
// same order) of the symmetric h [m, m], which it destroys.
std::vector<double> symmetric_eigen(std::vector<double>& h, size_t m, std::vector<double>& v);

}  // namespace sparknn
