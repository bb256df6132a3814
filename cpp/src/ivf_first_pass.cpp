// IvfIndex's first pass in a projected space (ivf.h, set_first_pass_dims): the
// principal subspace of a sample of the lists' rows, the lists and centroids
// projected onto it, and the queries of each search batch. The scan itself is
// the float32 codec's, at the projected dimension (ivf_search.cpp).
#include <algorithm>
#include <cstring>
#include <random>

#include "blas.h"
#include "gemm_scan.h"
#include "ivf_codec.h"
#include "principal_basis.h"
#include "sparknn/error.h"
#include "sparknn/ivf.h"
#include "sparknn/parallel.h"

namespace sparknn {
namespace {

// Rows the basis is fitted on: the covariance of 8192 rows costs 8192 dim^2 flops
// (0.1 s at 784 dimensions) and settles the leading directions' shares within 1%.
constexpr size_t kFirstPassSample = 8192;

}  // namespace

void IvfIndex::set_first_pass_dims(size_t dims) {
    auto lock = writing();
    if (dims != 0) {
        SPARKNN_CHECK_ARG(params_.storage == Storage::Float32 && params_.rerank >= 1,
                          "the projected first pass re-ranks its candidates from float32 lists: it needs storage "
                          "float32 and rerank >= 1 (this index: ",
                          storage_name(params_.storage), ", rerank ", params_.rerank, ")");
        SPARKNN_CHECK_ARG(dims == kFirstPassAuto || dims < dim_, "first pass dims must be below the index's dim=",
                          dim_, " (or auto), got ", dims);
    }
    std::lock_guard<std::mutex> guard(first_pass_mutex_);
    first_pass_setting_ = dims;
    first_pass_ = FirstPass{};
}

size_t IvfIndex::first_pass_dims() const {
    auto lock = reading();
    return first_pass_setting_;
}

std::pair<size_t, double> IvfIndex::first_pass_in_use(int threads) const {
    auto lock = reading();
    if (first_pass_setting_ == 0 || !trained()) return {0, 0.0};
    const FirstPass& first = first_pass(threads);
    return {first.dims, first.dims ? first.captured : 0.0};
}

const IvfIndex::FirstPass& IvfIndex::first_pass(int threads) const {
    std::lock_guard<std::mutex> guard(first_pass_mutex_);
    FirstPass& first = first_pass_;
    // sizes (and the setting) change only under the exclusive lock, as for list_extents
    if (first.projected == size()) return first;
    const size_t n = size();
    if (!first.fitted) {
        const bool automatic = first_pass_setting_ == kFirstPassAuto;
        if (n < kFirstPassMinRows || (automatic && dim_ < kFirstPassMinDim)) {
            first.dims = 0;  // not worth it (yet: a later add may change that)
            first.projected = n;
            return first;
        }
        // A uniform sample of the rows, in list order (selection sampling: no index of n).
        const size_t s = std::min(n, kFirstPassSample);
        std::vector<float> sample(s * dim_);
        std::mt19937_64 rng(params_.seed ^ 0xF1257A55ull);
        size_t taken = 0, seen = 0;
        for (const List& list : lists_) {
            const float* rows = reinterpret_cast<const float*>(list.codes.data());
            for (size_t r = 0; r < list.labels.size() && taken < s; ++r, ++seen) {
                if (rng() % (n - seen) < s - taken) {
                    std::memcpy(&sample[taken * dim_], rows + r * dim_, dim_ * sizeof(float));
                    ++taken;
                }
            }
        }
        const size_t max_dims = automatic ? std::min<size_t>(256, std::max<size_t>(16, dim_ / 4 / 16 * 16))
                                          : first_pass_setting_;
        const PrincipalBasis basis = principal_basis(sample.data(), taken, dim_, metric_ != Metric::InnerProduct,
                                                     max_dims, automatic ? kFirstPassShare : 0.0, 16, params_.seed,
                                                     threads);
        first.fitted = true;
        first.dims = basis.dims;
        first.captured = basis.captured;
        first.basis = basis.basis;
        if (first.dims) {
            // L2 and cosine (unit rows) rank by L2 in the subspace, inner product by inner product.
            first.codec = make_float32_codec(first.dims, metric_ == Metric::InnerProduct ? Metric::InnerProduct : Metric::L2);
        }
    }
    if (first.dims == 0) {
        first.projected = n;
        return first;
    }
    const size_t nlist = lists_.size(), d = first.dims;
    const bool norms = first.codec->keeps_norms();
    first.centroids.assign(nlist * d, 0.0f);
    gemm_abt(static_cast<int>(nlist), static_cast<int>(d), static_cast<int>(dim_), centroid_data(),
             first.basis.data(), first.centroids.data());
    first.rows.resize(nlist);
    first.norms.resize(nlist);
    parallel_for(nlist, 1, threads, [&](size_t b, size_t e, int) {
        for (size_t l = b; l < e; ++l) {
            const size_t size = lists_[l].labels.size();
            const float* rows = reinterpret_cast<const float*>(lists_[l].codes.data());
            AlignedVector<float>& out = first.rows[l];
            out.assign(size * d, 0.0f);
            for (size_t r0 = 0; r0 < size; r0 += 4096) {  // sgemm's m is an int
                const size_t count = std::min<size_t>(4096, size - r0);
                gemm_abt(static_cast<int>(count), static_cast<int>(d), static_cast<int>(dim_), rows + r0 * dim_,
                         first.basis.data(), out.data() + r0 * d);
            }
            first.norms[l].assign(norms ? size : 0, 0.0f);
            if (norms) squared_norms(out.data(), size, d, first.norms[l].data());
        }
    });
    first.projected = n;
    return first;
}

void IvfIndex::project_queries(const FirstPass& first, size_t nq, const float* queries, float* out,
                               int threads) const {
    parallel_for(nq, 256, threads, [&](size_t b, size_t e, int) {
        gemm_abt(static_cast<int>(e - b), static_cast<int>(first.dims), static_cast<int>(dim_), queries + b * dim_,
                 first.basis.data(), out + b * first.dims);
    });
}

}  // namespace sparknn
