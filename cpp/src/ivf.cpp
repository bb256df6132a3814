// IvfIndex: training (the k-means quantizer, then the codec) and adding vectors
// to their lists. The batched search: ivf_search.cpp; the file sections: ivf_io.cpp.
#include "sparknn/ivf.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <numeric>
#include <random>

#include "gemm_scan.h"
#include "ivf_codec.h"
#include "sparknn/error.h"
#include "sparknn/kmeans.h"
#include "sparknn/parallel.h"
#include "sparknn/topk.h"
#include "tile_bf16.h"

namespace sparknn {

IvfParams IvfParams::from(const IndexOptions& o) {
    IvfParams p;
    p.nlist = o.nlist;
    p.nprobe = o.nprobe;
    p.storage = storage_from_string(o.storage);
    p.train_size = o.train_size;
    p.pq_m = o.pq_m;
    p.rerank = o.rerank;
    p.seed = o.seed;
    return p;
}

void IvfParams::validate() const {
    SPARKNN_CHECK_ARG(nlist <= (size_t{1} << 22), "nlist ", nlist, " is too large (at most 4194304)");
    SPARKNN_CHECK_ARG(nprobe >= 1, "nprobe must be >= 1");
    SPARKNN_CHECK_ARG(kmeans_iterations <= 1000, "kmeans_iterations must be <= 1000");
    SPARKNN_CHECK_ARG(rerank <= 1000, "rerank must be <= 1000, got ", rerank);
    SPARKNN_CHECK_ARG(rerank == 0 || !is_half_storage(storage),
                      "rerank applies to float32, sq8 and pq storage, not ", storage_name(storage));
}

IvfIndex::IvfIndex(size_t dim, Metric metric, const IvfParams& params) : Index(dim, metric), params_(params) {
    params_.validate();
    codec_ = make_ivf_codec(params_, dim, metric);
}

IvfIndex::~IvfIndex() = default;

void IvfIndex::set_nprobe(size_t nprobe) {
    SPARKNN_CHECK_ARG(nprobe >= 1, "nprobe must be >= 1, got ", nprobe);
    auto lock = writing();
    params_.nprobe = nprobe;
}

IvfParams IvfIndex::params() const {
    auto lock = reading();
    return params_;
}

bool IvfIndex::is_trained() const {
    auto lock = reading();
    return trained();
}

size_t IvfIndex::nlist() const {
    auto lock = reading();
    return lists_.size();
}

size_t IvfIndex::list_size(size_t list) const {
    auto lock = reading();
    SPARKNN_CHECK_ARG(list < lists_.size(), "list ", list, " outside [0, nlist=", lists_.size(), ")");
    return lists_[list].labels.size();
}

std::vector<size_t> IvfIndex::list_sizes() const {
    auto lock = reading();
    std::vector<size_t> out(lists_.size());
    for (size_t l = 0; l < lists_.size(); ++l) out[l] = lists_[l].labels.size();
    return out;
}

std::vector<float> IvfIndex::centroids() const {
    auto lock = reading();
    if (!trained()) return {};
    const float* c = centroid_data();
    return std::vector<float>(c, c + lists_.size() * dim_);
}

// ---------------------------------------------------------------- training

std::unique_ptr<FlatIndex> IvfIndex::make_quantizer(size_t nlist, const float* centroids) const {
    // Unit vectors (cosine) are clustered and assigned by L2, which on the
    // sphere orders like the dot product; inner product keeps its own metric.
    auto quantizer = std::make_unique<FlatIndex>(dim_, metric_ == Metric::InnerProduct ? Metric::InnerProduct : Metric::L2);
    quantizer->add(nlist, centroids, nullptr);
    // With the bf16 list scan, lists are assigned through a bf16 pass too (the nearest
    // among its best nprobe + 4, measured exactly).
    quantizer->set_bf16_first_pass(tile_products() == TileProducts::Bf16 ? kQuantizerExtra : 0);
    return quantizer;
}

void IvfIndex::train(size_t n, const float* vectors) {
    auto lock = writing();
    SPARKNN_CHECK_ARG(size() == 0, "train() must come before the first add (the index holds ", size(), " vectors)");
    SPARKNN_CHECK_ARG(n == 0 || vectors != nullptr, "training vectors is null");
    // Sample the raw rows first, then validate and normalise only the sample: k-means
    // never reads the rest, and a copy of all n normalised rows is what large inputs cannot spare.
    const size_t nlist = training_nlist(n);
    std::vector<float> rows = sample_rows(n, vectors, nlist);
    const size_t sample = rows.empty() ? n : rows.size() / dim_;
    AlignedVector<float> scratch;
    // Not "query row i": these are the vectors given (or, sampled, rows of the sample).
    const float* x = prepare_queries(sample, rows.empty() ? vectors : rows.data(), scratch, threads(),
                                     rows.empty() ? "training vector" : "training sample");
    train_on_sample(sample, x, nlist);
}

size_t ivf_default_nlist(size_t n) {
    return std::clamp<size_t>(static_cast<size_t>(std::lround(4.0 * std::sqrt(double(n)))), 1, std::max<size_t>(n, 1));
}

size_t ivf_default_train_size(size_t nlist, size_t n) { return std::min(n, std::max<size_t>(16 * nlist, 10000)); }

size_t IvfIndex::training_nlist(size_t n) const {
    const size_t nlist = params_.nlist ? params_.nlist : ivf_default_nlist(n);
    SPARKNN_CHECK_ARG(n >= nlist, "training an IVF index with nlist=", nlist, " needs at least ", nlist,
                      " vectors, got ", n, ": lower nlist (or leave it 0 to choose from the data)");
    return nlist;
}

std::vector<float> IvfIndex::sample_rows(size_t n, const float* x, size_t nlist) const {
    size_t sample = params_.train_size ? params_.train_size : ivf_default_train_size(nlist, n);
    sample = std::clamp<size_t>(sample, nlist, n);
    if (sample == n) return {};
    // A uniform sample (sorted for locality), not the first rows: input order is often not random.
    std::vector<size_t> idx(n);
    std::iota(idx.begin(), idx.end(), size_t{0});
    std::mt19937_64 rng(params_.seed ^ 0x9E3779B97F4A7C15ull);
    for (size_t i = 0; i < sample; ++i) std::swap(idx[i], idx[i + rng() % (n - i)]);
    std::sort(idx.begin(), idx.begin() + static_cast<ptrdiff_t>(sample));
    std::vector<float> rows(sample * dim_);
    for (size_t i = 0; i < sample; ++i) std::memcpy(&rows[i * dim_], x + idx[i] * dim_, dim_ * sizeof(float));
    return rows;
}

void IvfIndex::train_prepared(size_t n, const float* x) {
    const size_t nlist = training_nlist(n);
    const std::vector<float> rows = sample_rows(n, x, nlist);
    train_on_sample(rows.empty() ? n : rows.size() / dim_, rows.empty() ? x : rows.data(), nlist);
}

void IvfIndex::train_on_sample(size_t sample, const float* train_x, size_t nlist) {
    KMeansParams kp;
    kp.iterations = params_.kmeans_iterations;
    kp.seed = params_.seed;
    kp.threads = threads();
    kp.bf16_first_pass = tile_products() == TileProducts::Bf16;
    KMeansResult km;
    const bool in_subspace = train_in_first_pass(sample, train_x, nlist, kp, km);
    if (!in_subspace) km = kmeans(train_x, sample, dim_, nlist, kp);

    auto quantizer = make_quantizer(nlist, km.centroids.data());
    if (in_subspace) {  // lists assigned in the subspace too: each vector's nprobe + 8 nearest there, measured exactly
        quantizer->set_projected_first_pass(first_pass_.basis.data(), first_pass_.dims, kQuantizerProjectedExtra);
    }
    codec_->train(sample, train_x, *quantizer, km.centroids.data(), params_.seed, params_.kmeans_iterations, threads());
    params_.nlist = nlist;
    quantizer_ = std::move(quantizer);
    lists_.assign(nlist, List{});
}

// ---------------------------------------------------------------- adding

void IvfIndex::add_impl(size_t n, const float* vectors) {
    if (!trained()) train_prepared(n, vectors);
    std::vector<int64_t> assigned(n);
    assign(n, vectors, 1, assigned.data(), threads());
    add_assigned(n, vectors, assigned.data());
}

void IvfIndex::check_lists(size_t rows, size_t width, const int64_t* lists, const char* what) const {
    SPARKNN_CHECK_ARG(lists != nullptr, what, " is null");
    const int64_t nlist_ = static_cast<int64_t>(lists_.size());
    std::vector<int64_t> row(width);
    for (size_t i = 0; i < rows; ++i) {
        for (size_t j = 0; j < width; ++j) {
            const int64_t l = lists[i * width + j];
            SPARKNN_CHECK_ARG(l >= 0 && l < nlist_, what, " row ", i, " names list ", l, ", outside [0, nlist=", nlist_,
                              ")");
        }
        if (width > 1) {  // a list probed twice would report its vectors twice
            std::copy(lists + i * width, lists + (i + 1) * width, row.begin());
            std::sort(row.begin(), row.end());
            SPARKNN_CHECK_ARG(std::adjacent_find(row.begin(), row.end()) == row.end(), what, " row ", i,
                              " names a list twice");
        }
    }
}

void IvfIndex::add_to_lists(size_t n, const float* vectors, const int64_t* ids, const int64_t* lists) {
    if (n == 0) return;
    auto lock = writing();
    SPARKNN_THROW_IF_NOT(trained(), InvalidArgument, "add_to_lists needs a trained IVF index: call train() first");
    check_unpinned("add");
    check_lists(n, 1, lists, "lists");
    add_with(n, vectors, ids, [&](const float* stored) { add_assigned(n, stored, lists); });
}

void IvfIndex::reserve_lists(const int64_t* extra) {
    auto lock = writing();
    SPARKNN_THROW_IF_NOT(trained(), InvalidArgument, "reserve_lists needs a trained IVF index: call train() first");
    check_unpinned("reserve_lists");
    // What the room costs per vector: its label and code in its list (and norm), its id,
    // and its float32 copy when rerank keeps one. Counted overflow-checked, so absurd
    // requests (2^62 vectors) are refused before anything is allocated.
    const size_t cs = codec_->code_size();
    const bool keep_norms = codec_->keeps_norms();
    const size_t per_vector = 2 * sizeof(int64_t) + cs + (keep_norms ? sizeof(float) : 0) +
                              (params_.keeps_float_copies() ? dim_ * sizeof(float) : 0);
    constexpr size_t kMaxBytes = static_cast<size_t>(std::numeric_limits<std::ptrdiff_t>::max());
    size_t total = 0, bytes = 0;
    for (size_t l = 0; l < lists_.size(); ++l) {
        SPARKNN_CHECK_ARG(extra[l] >= 0, "reserve_lists: list ", l, " is given ", extra[l], " vectors (< 0)");
        SPARKNN_CHECK_ARG(!__builtin_add_overflow(total, static_cast<size_t>(extra[l]), &total) &&
                              !__builtin_mul_overflow(total, per_vector, &bytes) && bytes <= kMaxBytes &&
                              total <= kMaxBytes - size(),
                          "reserve_lists: room for list ", l, "'s ", extra[l], " vectors (", total,
                          " or more in all) is too large to address: give the counts the next adds need");
    }
    const double memory = physical_memory_bytes();  // room beyond it is refused before it is asked for
    SPARKNN_CHECK_ARG(memory == 0.0 || static_cast<double>(bytes) <= memory, "reserve_lists: room for ", total,
                      " more vectors (", static_cast<double>(bytes) / 1e9, " GB) is more than this machine's ",
                      memory / 1e9, " GB of memory: give the counts the next adds need");
    const auto too_large = [&]() {
        return InvalidArgument(detail::concat(
            "reserve_lists: room for ", total, " more vectors (", static_cast<double>(bytes) / 1e9,
            " GB) could not be allocated: give the counts the next adds need; the index is unchanged"));
    };
    try {
        parallel_for(lists_.size(), 16, threads(), [&](size_t b, size_t e, int) {
            for (size_t l = b; l < e; ++l) {
                if (extra[l] == 0) continue;
                List& list = lists_[l];
                const size_t want = list.labels.size() + static_cast<size_t>(extra[l]);
                list.labels.mutate().reserve(want);
                list.codes.mutate().reserve(want * cs);
                if (keep_norms) list.norms.reserve(want);
            }
        });
        ids_.mutate().reserve(size() + total);
        if (params_.keeps_float_copies()) rerank_vectors_.mutate().reserve((size() + total) * dim_);
    } catch (const std::bad_alloc&) {
        release_reserved(extra);
        throw too_large();
    } catch (const std::length_error&) {
        release_reserved(extra);
        throw too_large();
    }
}

// After a failed reserve_lists: hands back the room the lists it reached were given
// (their vectors stay as they are; a later add grows them again).
void IvfIndex::release_reserved(const int64_t* extra) {
    for (size_t l = 0; l < lists_.size(); ++l) {
        if (extra[l] == 0) continue;
        lists_[l].labels.shrink_to_fit();
        lists_[l].codes.shrink_to_fit();
        lists_[l].norms.shrink_to_fit();
    }
    ids_.shrink_to_fit();
    rerank_vectors_.shrink_to_fit();
}

void IvfIndex::reconstruct_impl(size_t begin, size_t count, float* out) const {
    if (params_.keeps_float_copies()) {  // exact float32 copies in label order
        std::memcpy(out, rerank_vectors_.data() + begin * dim_, count * dim_ * sizeof(float));
        return;
    }
    gather(count, [begin](size_t i) { return begin + i; }, out);
}

void IvfIndex::gather_labels(size_t n, const int64_t* labels, float* out) const {
    gather(n, [labels](size_t i) { return static_cast<size_t>(labels[i]); }, out);
}

std::vector<int64_t> IvfIndex::list_labels() const {
    auto lock = reading();
    std::vector<int64_t> out;
    out.reserve(size());
    for (const List& list : lists_) out.insert(out.end(), list.labels.data(), list.labels.data() + list.labels.size());
    return out;
}

template <class LabelAt>
void IvfIndex::gather(size_t count, LabelAt&& label_at, float* out) const {
    if (count == 0) return;
    index_places();
    const size_t cs = codec_->code_size();
    const float* centroids = centroid_data();
    parallel_for(count, 4096, threads(), [&](size_t b, size_t e, int) {
        for (size_t i = b; i < e; ++i) {
            const size_t label = label_at(i);
            float* o = out + i * dim_;
            if (params_.keeps_float_copies()) {  // exact float32 copies in label order
                std::memcpy(o, rerank_vectors_.data() + label * dim_, dim_ * sizeof(float));
                continue;
            }
            const auto [l, r] = place_of(label);
            codec_->decode(lists_[l].codes.data() + r * cs, centroids + l * dim_, o);
        }
    });
}

void IvfIndex::index_places() const {
    std::lock_guard<std::mutex> lock(where_mutex_);
    if (where_.size() == size()) return;  // sizes change only under the exclusive lock
    where_.assign(size(), ~uint64_t{0});
    for (size_t l = 0; l < lists_.size(); ++l) {
        const Buffer<int64_t>& labels = lists_[l].labels;
        for (size_t r = 0; r < labels.size(); ++r) {
            where_[static_cast<size_t>(labels.data()[r])] = (uint64_t{l} << 42) | r;  // nlist <= 2^22
        }
    }
}

std::pair<size_t, size_t> IvfIndex::place_of(size_t label) const {
    const uint64_t w = where_[label];
    SPARKNN_THROW_IF_NOT(w != ~uint64_t{0}, FileFormatError, "label ", label, " is in no list (corrupt lists)");
    return {static_cast<size_t>(w >> 42), static_cast<size_t>(w & ((uint64_t{1} << 42) - 1))};
}

TileProducts IvfIndex::tile_products() const {
    const bool bf16 = params_.rerank > 0 && params_.storage == Storage::Float32 && bf16_tiles_preferred();
    return bf16 ? TileProducts::Bf16 : TileProducts::Float32;
}

void IvfIndex::shrink_to_fit_impl() {
    parallel_for(lists_.size(), 16, threads(), [&](size_t b, size_t e, int) {
        for (size_t l = b; l < e; ++l) {
            lists_[l].labels.shrink_to_fit();
            lists_[l].codes.shrink_to_fit();
            lists_[l].norms.shrink_to_fit();
        }
    });
    rerank_vectors_.shrink_to_fit();
}

void IvfIndex::add_assigned(size_t n, const float* vectors, const int64_t* assigned) {
    // Group rows by list (counting sort) so each list is appended by one thread.
    const size_t nlist = lists_.size();
    std::vector<size_t> start(nlist + 1, 0);
    for (size_t i = 0; i < n; ++i) ++start[static_cast<size_t>(assigned[i]) + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    std::vector<size_t> order(n);
    {
        std::vector<size_t> fill(start.begin(), start.end() - 1);
        for (size_t i = 0; i < n; ++i) order[fill[static_cast<size_t>(assigned[i])]++] = i;
    }
    const int64_t first_label = static_cast<int64_t>(size());
    const size_t cs = codec_->code_size();
    const bool keep_norms = codec_->keeps_norms();
    const float* centroids = centroid_data();
    parallel_for(nlist, 16, threads(), [&](size_t b, size_t e, int) {
        for (size_t l = b; l < e; ++l) {
            const size_t count = start[l + 1] - start[l];
            if (count == 0) continue;
            List& list = lists_[l];
            AlignedVector<int64_t>& labels = list.labels.mutate();
            AlignedVector<uint8_t>& codes = list.codes.mutate();
            const size_t old = labels.size();
            labels.resize(old + count);
            codes.resize((old + count) * cs);
            if (keep_norms) list.norms.resize(old + count);
            for (size_t t = 0; t < count; ++t) {
                const size_t row = order[start[l] + t];
                labels[old + t] = first_label + static_cast<int64_t>(row);
                codec_->encode(vectors + row * dim_, centroids + l * dim_, codes.data() + (old + t) * cs);
                if (keep_norms) squared_norms(vectors + row * dim_, 1, dim_, &list.norms[old + t]);
            }
        }
    });
    if (params_.keeps_float_copies()) {
        AlignedVector<float>& kept = rerank_vectors_.mutate();
        kept.insert(kept.end(), vectors, vectors + n * dim_);
    }
}

}  // namespace sparknn
