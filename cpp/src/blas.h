// The one BLAS routine we need (sgemm), declared here so any OpenBLAS-compatible
// library links: scipy-openblas32 (symbols prefixed "scipy_", the PyPI wheel
// numpy and scipy build against) or a system BLAS. CMake defines the prefix.
#pragma once

#include <cstddef>

#ifndef SPARKNN_BLAS_PREFIX
#define SPARKNN_BLAS_PREFIX
#endif
#define SPARKNN_CAT_(a, b) a##b
#define SPARKNN_CAT(a, b) SPARKNN_CAT_(a, b)
#define SPARKNN_BLAS(name) SPARKNN_CAT(SPARKNN_BLAS_PREFIX, name)

extern "C" {
// Fortran sgemm (column-major): C = alpha * op(A) * op(B) + beta * C.
void SPARKNN_BLAS(sgemm_)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                          const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                          const float* beta, float* c, const int* ldc);
}

namespace sparknn {

// Row-major C[m, n] = A[m, dim] * B[n, dim]^T, single-threaded BLAS call.
void gemm_abt(int m, int n, int dim, const float* a, const float* b, float* c);
// Row-major C[m, n] (row stride ldc) = A^T * B for row-major A[k, m] and B[k, n] that share the
// row stride ld (columns of one matrix: a second moment X^T X without transposing X).
void gemm_atb(int m, int n, int k, const float* a, const float* b, int ld, float* c, int ldc);
// Row-major C[m, n] -= A[m, k] * B[k, n] (a projection taken out: Gram-Schmidt by blocks).
void gemm_ab_subtract(int m, int n, int k, const float* a, const float* b, float* c);
// The same for any m, in blocks of `block` rows of A across `threads` (SearchParams' meaning).
void gemm_abt_rows(size_t m, size_t n, size_t dim, const float* a, const float* b, float* c, int threads,
                   size_t block = 512);

// Once per process: keeps BLAS single-threaded (sparknn parallelises around it, so
// BLAS threads would only oversubscribe the cores) and warms OpenBLAS's work
// buffers (blas.cpp: short blocks ran at a third of the speed before).
void prepare_blas();

}  // namespace sparknn
