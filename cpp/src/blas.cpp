#include "blas.h"

#include <mutex>

#if defined(SPARKNN_OPENBLAS_SET_THREADS)
extern "C" void SPARKNN_OPENBLAS_SET_THREADS(int);
#endif

namespace sparknn {

void gemm_abt(int m, int n, int dim, const float* a, const float* b, float* c) {
    // Row-major C (m x n) is column-major C^T (n x m) = B (n x dim) * A^T.
    const char trans = 'T', notrans = 'N';
    const float one = 1.0f, zero = 0.0f;
    SPARKNN_BLAS(sgemm_)(&trans, &notrans, &n, &m, &dim, &one, b, &dim, a, &dim, &zero, c, &n);
}

void blas_use_one_thread() {
#if defined(SPARKNN_OPENBLAS_SET_THREADS)
    static std::once_flag once;
    std::call_once(once, [] { SPARKNN_OPENBLAS_SET_THREADS(1); });
#endif
}

}  // namespace sparknn
