// IvfIndex's first pass in a projected space (ivf.h, set_first_pass_dims): the
// principal subspace of a sample of the rows (fitted at train when the setting
// came first, else on the first search), the training's k-means in it, the lists
// and centroids projected onto it, and the queries of each search batch. The scan
// itself is the float32 codec's, at the projected dimension (ivf_search.cpp).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>

#include "blas.h"
#include "gemm_scan.h"
#include "ivf_codec.h"
#include "principal_basis.h"
#include "sparknn/error.h"
#include "sparknn/ivf.h"
#include "sparknn/kmeans.h"
#include "sparknn/parallel.h"
#include "tile_f32.h"

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
    if (quantizer_) quantizer_->set_projected_first_pass(nullptr, 0, 0);  // its basis is gone with the rest
}

size_t IvfIndex::first_pass_dims() const {
    auto lock = reading();
    return first_pass_setting_;
}

std::pair<size_t, double> IvfIndex::first_pass_in_use(int threads) const {
    auto lock = reading();
    if (first_pass_setting_ == 0 || !trained()) return {0, 0.0};
    {
        std::lock_guard<std::mutex> guard(first_pass_mutex_);
        if (first_pass_.fitted) return {first_pass_.dims, first_pass_.dims ? first_pass_.captured : 0.0};
    }  // else fitted now (and the lists projected), as the next search would
    const FirstPass& first = first_pass(threads);
    return {first.dims, first.dims ? first.captured : 0.0};
}

bool IvfIndex::first_pass_applies(size_t rows) const {
    // "auto" judges whether the pass pays; a count is the caller's choice, given rows to fit it on
    if (first_pass_setting_ == kFirstPassAuto) return rows >= kFirstPassMinRows && dim_ >= kFirstPassMinDim;
    return first_pass_setting_ != 0 && rows > first_pass_setting_;
}

void IvfIndex::fit_first_pass(size_t n, const float* rows, int threads) const {
    // first_pass_mutex_ held (or the exclusive lock: train)
    const bool automatic = first_pass_setting_ == kFirstPassAuto;
    const size_t max_dims =
        automatic ? std::min<size_t>(256, std::max<size_t>(16, dim_ / 4 / 16 * 16)) : first_pass_setting_;
    PrincipalBasis basis = principal_basis(rows, n, dim_, metric_ != Metric::InnerProduct, max_dims,
                                           automatic ? kFirstPassShare : 0.0, 16, params_.seed, threads);
    use_first_pass_basis(basis.dims, basis.captured, std::move(basis.basis));
    // A basis the loader would refuse is not used: its projections would not bound distances
    // within the proofs' slack, and the index saved with it would not load again.
    if (!(first_pass_.excess <= kFirstPassMaxExcess)) use_first_pass_basis(0, 0.0, {});
}

void IvfIndex::use_first_pass_basis(size_t dims, double captured, std::vector<float> basis) const {
    FirstPass& first = first_pass_;
    first = FirstPass{};
    first.fitted = true;
    first.dims = dims;
    first.captured = captured;
    first.basis = std::move(basis);
    first.excess = gram_excess(first.basis.data(), dims, dim_);
    // L2 and cosine (unit rows) rank by L2 in the subspace, inner product by inner product.
    first.codec = dims ? make_float32_codec(dims, metric_ == Metric::InnerProduct ? Metric::InnerProduct : Metric::L2)
                       : nullptr;
}

bool IvfIndex::train_in_first_pass(size_t sample, const float* train_x, size_t nlist, const KMeansParams& kp,
                                   KMeansResult& km) {
    std::lock_guard<std::mutex> guard(first_pass_mutex_);
    first_pass_ = FirstPass{};
    if (!first_pass_applies(sample)) return false;
    // The basis from kFirstPassSample rows spread over the (uniform) training sample.
    const size_t s = std::min(sample, kFirstPassSample);
    std::vector<float> rows(s * dim_);
    for (size_t i = 0; i < s; ++i) std::memcpy(&rows[i * dim_], train_x + (i * sample / s) * dim_, dim_ * sizeof(float));
    fit_first_pass(s, rows.data(), kp.threads);
    rows = {};
    const size_t d = first_pass_.dims;
    if (d == 0) return false;
    // k-means in the subspace (dims / dim of the work); each centroid is then the mean of
    // its members' full rows, so the quantizer and the lists are as without the first pass.
    std::vector<float> projected(sample * d);
    gemm_abt_rows(sample, d, dim_, train_x, first_pass_.basis.data(), projected.data(), kp.threads);
    KMeansResult sub = kmeans(projected.data(), sample, d, nlist, kp);
    km.assignment = std::move(sub.assignment);
    km.inertia = sub.inertia;
    km.centroids.assign(nlist * dim_, 0.0f);
    std::vector<double> sums(nlist * dim_, 0.0);
    std::vector<size_t> counts(nlist, 0);
    for (size_t i = 0; i < sample; ++i) {
        const size_t c = km.assignment[i];
        ++counts[c];
        for (size_t t = 0; t < dim_; ++t) sums[c * dim_ + t] += train_x[i * dim_ + t];
    }
    for (size_t c = 0; c < nlist; ++c) {
        if (counts[c] == 0) {  // no member (k-means keeps none empty; kept for safety): its subspace centroid
            for (size_t r = 0; r < d; ++r) {
                for (size_t t = 0; t < dim_; ++t) {
                    km.centroids[c * dim_ + t] += sub.centroids[c * d + r] * first_pass_.basis[r * dim_ + t];
                }
            }
            continue;
        }
        for (size_t t = 0; t < dim_; ++t) {
            km.centroids[c * dim_ + t] = static_cast<float>(sums[c * dim_ + t] / double(counts[c]));
        }
    }
    return true;
}

const IvfIndex::FirstPass& IvfIndex::first_pass(int threads) const {
    std::lock_guard<std::mutex> guard(first_pass_mutex_);
    FirstPass& first = first_pass_;
    // sizes (and the setting) change only under the exclusive lock, as for list_extents; the
    // lists are packed again when the SIMD level was changed since (set_simd_level)
    const bool panels = tile_f32::available();
    if (first.projected == size() && (first.dims == 0 || first.packed() == panels)) return first;
    const size_t n = size();
    if (!first.fitted) {
        if (!first_pass_applies(n)) {
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
        fit_first_pass(taken, sample.data(), threads);
    }
    if (first.dims == 0) {
        first.projected = n;
        return first;
    }
    const size_t nlist = lists_.size(), d = first.dims;
    const bool norms = first.codec->keeps_norms();
    first.centroids.assign(nlist * d, 0.0f);
    gemm_abt_rows(nlist, d, dim_, centroid_data(), first.basis.data(), first.centroids.data(), threads);
    // Every list's projected rows in one array, list after list; when the lists' own rows lie
    // so too (adopted in list order), a batch of them as queries is projected already.
    first.offsets.assign(nlist + 1, 0);
    for (size_t l = 0; l < nlist; ++l) first.offsets[l + 1] = first.offsets[l] + lists_[l].labels.size();
    // (addresses as integers: the lists may be separate arrays, which pointers may not span)
    const auto address = [&](size_t l) { return reinterpret_cast<uintptr_t>(lists_[l].codes.data()); };
    const uintptr_t row_bytes = dim_ * sizeof(float);
    first.rows_base = 0;
    bool contiguous = true;
    for (size_t l = 0; l < nlist; ++l) {
        if (lists_[l].labels.size() == 0) continue;
        if (first.rows_base == 0) first.rows_base = address(l) - first.offsets[l] * row_bytes;
        contiguous = contiguous && address(l) == first.rows_base + first.offsets[l] * row_bytes;
    }
    if (!contiguous) first.rows_base = 0;
    // On AVX-512 the scans read the panels (less each list's centroid under L2): the rows as
    // they are stay only for queries that are the lists' own rows (project_queries), and their
    // norms (the sgemm scan's) are not needed.
    const bool l2 = metric_ != Metric::InnerProduct;  // the subspace's metric (use_first_pass_basis)
    const bool keep_rows = !panels || first.rows_base != 0;
    const bool row_norms = norms && !panels;
    // the rows projected at their adoption (adopt_rows_nearest), already in list order
    const bool given = keep_rows && first.given.size() == n * d;
    if (given) {
        first.rows = std::move(first.given);
    } else {
        first.rows.assign(keep_rows ? n * d : 0, 0.0f);
    }
    first.given = {};
    first.norms.assign(row_norms ? n : 0, 0.0f);
    first.panel_offsets.assign(panels ? nlist + 1 : 0, 0);
    for (size_t l = 0; panels && l < nlist; ++l) {
        first.panel_offsets[l + 1] = first.panel_offsets[l] + tile_f32::panel_rows(lists_[l].labels.size());
    }
    first.panels.assign(panels ? first.panel_offsets.back() * d : 0, 0.0f);
    first.panel_norms.assign(panels && l2 ? n : 0, 0.0f);
    parallel_for(nlist, 1, threads, [&](size_t b, size_t e, int) {
        std::vector<float> scratch;  // a list's projected rows, when they are not kept
        for (size_t l = b; l < e; ++l) {
            const size_t size = lists_[l].labels.size();
            if (!keep_rows) scratch.resize(size * d);
            float* out = keep_rows ? first.rows.data() + first.offsets[l] * d : scratch.data();
            const float* rows = reinterpret_cast<const float*>(lists_[l].codes.data());
            for (size_t r0 = 0; r0 < size && !given; r0 += 4096) {  // sgemm's m is an int
                const size_t count = std::min<size_t>(4096, size - r0);
                gemm_abt(static_cast<int>(count), static_cast<int>(d), static_cast<int>(dim_), rows + r0 * dim_,
                         first.basis.data(), out + r0 * d);
            }
            if (row_norms) squared_norms(out, size, d, first.norms.data() + first.offsets[l]);
            if (panels) {
                tile_f32::pack_panels(out, size, d, l2 ? first.centroids.data() + l * d : nullptr,
                                      first.panels.data() + first.panel_offsets[l] * d,
                                      l2 ? first.panel_norms.data() + first.offsets[l] : nullptr);
            }
        }
    });
    first.projected = n;
    return first;
}

const float* IvfIndex::project_queries(const FirstPass& first, size_t nq, const float* queries,
                                       AlignedVector<float>& scratch, int threads) const {
    // Queries that are the lists' own rows in place (a self-join over adopted lists): their
    // projections are the lists'.
    const uintptr_t base = first.rows_base, at = reinterpret_cast<uintptr_t>(queries);
    const uintptr_t row_bytes = dim_ * sizeof(float);
    if (base != 0 && at >= base && (at - base) % row_bytes == 0 && (at - base) / row_bytes + nq <= first.offsets.back()) {
        return first.rows.data() + (at - base) / row_bytes * first.dims;
    }
    scratch.resize(nq * first.dims);
    gemm_abt_rows(nq, first.dims, dim_, queries, first.basis.data(), scratch.data(), threads);
    return scratch.data();
}

}  // namespace sparknn
