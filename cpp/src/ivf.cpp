// IvfIndex: training (the k-means quantizer, then the codec), adding vectors
// to their lists, and the batched search: queries grouped by list, each list
// scanned once by the codec's scanner (ivf_codec.h), short rows widened as
// ivf_probe.cpp plans. The file sections: ivf_io.cpp.
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

#include <unistd.h>

#include "gemm_scan.h"
#include "ivf_codec.h"
#include "sparknn/error.h"
#include "sparknn/kmeans.h"
#include "sparknn/parallel.h"
#include "sparknn/topk.h"
#include "tile_bf16.h"

namespace sparknn {
namespace {

// Queries searched together: bounds the per-thread heaps (threads x batch x k)
// while keeping enough queries per list for the sgemm to pay off.
constexpr size_t kMinQueryBatch = 16384;
constexpr size_t kMaxQueryBatch = 262144;

}  // namespace

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
    const KMeansResult km = kmeans(train_x, sample, dim_, nlist, kp);

    auto quantizer = make_quantizer(nlist, km.centroids.data());
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
    // Room beyond the machine's memory is refused before it is asked for: some allocators
    // (sanitizers, overcommitting kernels) abort or kill rather than fail such a request.
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    const double memory = pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
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
    const bool bf16 = params_.rerank > 0 && params_.storage == Storage::Float32 && bf16_tiles_available();
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

// ---------------------------------------------------------------- searching

size_t IvfIndex::ideal_query_batch(size_t nprobe) const {
    auto lock = reading();
    return batch_for(nprobe);
}

size_t IvfIndex::batch_for(size_t nprobe) const {
    const size_t nlist = std::max<size_t>(lists_.size(), 1);
    return 256 * nlist / std::clamp<size_t>(nprobe, 1, nlist);
}

void IvfIndex::search_nprobes(size_t nq, const float* queries, size_t k, const size_t* nprobes, size_t count,
                              int64_t* out_ids, float* out_distances, int threads) const {
    search_ladder(nq, queries, k, nprobes, count, out_ids, out_distances, nullptr, threads);
}

void IvfIndex::search_ladder_and_exact(size_t nq, const float* queries, size_t k, const size_t* nprobes,
                                       size_t count, int64_t* out_ids, float* out_distances, uint8_t* proven,
                                       int threads) const {
    SPARKNN_THROW_IF_NOT(params_.storage == Storage::Float32, InvalidArgument,
                         "an exact answer from the lists needs float32 storage");
    search_ladder(nq, queries, k, nprobes, count, out_ids, out_distances, proven, threads);
}

void IvfIndex::search_ladder(size_t nq, const float* queries, size_t k, const size_t* nprobes, size_t count,
                             int64_t* out_ids, float* out_distances, uint8_t* proven, int threads) const {
    SPARKNN_CHECK_ARG(count >= 1 && nprobes != nullptr, "nprobes is empty");
    // An empty index answers -1 at every value, exactly (Index::search fills the first answer only).
    const size_t answers = count + (proven != nullptr);
    std::fill_n(out_ids, answers * nq * k, int64_t{-1});
    std::fill_n(out_distances, answers * nq * k, std::numeric_limits<float>::infinity());
    if (proven != nullptr) std::fill_n(proven, nq, uint8_t{1});
    SearchParams p;
    p.nprobe = nprobes[count - 1];
    p.widen = false;
    p.nprobe_ends = nprobes;
    p.nprobe_ends_count = count;
    p.exact_proven = proven;
    p.threads = threads;
    search(nq, queries, k, out_ids, out_distances, p);
}

void IvfIndex::search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                           const SearchParams& params) const {
    SPARKNN_THROW_IF_NOT(trained(), InvalidArgument, "the IVF index is not trained");
    const size_t nlist = lists_.size();
    const size_t nprobe = std::min(nlist, params.nprobe ? params.nprobe : params_.nprobe);
    size_t batch = std::clamp<size_t>(batch_for(nprobe), kMinQueryBatch, kMaxQueryBatch);
    const size_t* ends = params.nprobe_ends;
    const size_t nends = ends ? params.nprobe_ends_count : 0;
    if (ends != nullptr) {
        SPARKNN_CHECK_ARG(!params.widen, "nprobe_ends: widen must be off");
        for (size_t e = 0; e < nends; ++e) {
            SPARKNN_CHECK_ARG(ends[e] >= 1 && ends[e] <= nlist && (e == 0 || ends[e] > ends[e - 1]),
                              "nprobes must ascend within [1, nlist=", nlist, "], got ", ends[e], " at ", e);
        }
        SPARKNN_CHECK_ARG(nends >= 1 && ends[nends - 1] == nprobe, "nprobe_ends must end at nprobe=", nprobe);
    }
    SPARKNN_CHECK_ARG(params.exact_proven == nullptr || (ends != nullptr && nprobe == nlist),
                      "an exact answer needs nprobe_ends ending at nlist=", nlist);
    if (params.exact_proven != nullptr) {  // its deep selections (kExactCandidatesPerK k each) in a bounded batch
        const size_t per_query = static_cast<size_t>(resolve_threads(params.threads)) * 2 * sizeof(TopK::Entry) *
                                 std::min(kExactCandidatesPerK * k, kMaxExactCandidates);
        batch = std::clamp<size_t>(kRankHeapsBytes / per_query, 64, batch);
    }
    if (params.lists != nullptr) {
        SPARKNN_CHECK_ARG(params.nprobe >= 1 && params.nprobe <= nlist, "lists given: nprobe must be their width, in [1, nlist=",
                          nlist, "], got ", params.nprobe);
        check_lists(nq, nprobe, params.lists, "lists");
    }
    // A query whose probed lists hold fewer than min(k, n) vectors scans
    // wider lists (widen: probe_lists' policy, keeping the whole width reached):
    // callers are promised min(k, n) neighbours, never a silently short row
    // (small or skewed lists, k near n). Its batch answer is then replaced.
    const size_t need = params.widen && nprobe < nlist ? std::min(k, size()) : 0;
    std::vector<int64_t> computed;
    std::vector<size_t> short_rows_all;
    for (size_t q0 = 0; q0 < nq; q0 += batch) {
        const size_t m = std::min(batch, nq - q0);
        const int64_t* probes = params.lists ? params.lists + q0 * nprobe : nullptr;
        if (probes == nullptr) {
            computed.resize(m * nprobe);
            assign(m, queries + q0 * dim_, nprobe, computed.data(), params.threads);
            probes = computed.data();
        }
        search_batch(m, queries + q0 * dim_, k, nprobe, probes, out_ids + q0 * k, out_distances + q0 * k,
                     params.threads, ends, nends, nq * k, params.exact_proven ? params.exact_proven + q0 : nullptr);
        for (size_t q : short_rows(m, nprobe, probes, need, nullptr)) short_rows_all.push_back(q0 + q);
    }
    if (short_rows_all.empty()) return;
    const ProbePlan wide = widen(short_rows_all, queries, nprobe, need, nullptr, /*trim=*/false, params.threads);
    // Rows widened to the same width are searched together, with their planned lists.
    std::vector<size_t> order(short_rows_all.size());
    std::iota(order.begin(), order.end(), size_t{0});
    auto width_of = [&](size_t i) { return static_cast<size_t>(wide.offsets[i + 1] - wide.offsets[i]); };
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return width_of(a) < width_of(b); });
    for (size_t g0 = 0, g1; g0 < order.size(); g0 = g1) {
        const size_t width = width_of(order[g0]);
        for (g1 = g0 + 1; g1 < order.size() && width_of(order[g1]) == width;) ++g1;
        const size_t m = g1 - g0;
        AlignedVector<float> gathered(m * dim_);
        std::vector<int64_t> lists(m * width), ids(m * k);
        std::vector<float> dist(m * k);
        for (size_t i = 0; i < m; ++i) {
            const size_t row = order[g0 + i];
            std::memcpy(&gathered[i * dim_], queries + short_rows_all[row] * dim_, dim_ * sizeof(float));
            std::copy_n(wide.lists.data() + wide.offsets[row], width, lists.data() + i * width);
        }
        search_batch(m, gathered.data(), k, width, lists.data(), ids.data(), dist.data(), params.threads);
        for (size_t i = 0; i < m; ++i) {
            const size_t q = short_rows_all[order[g0 + i]];
            std::copy_n(ids.data() + i * k, k, out_ids + q * k);
            std::copy_n(dist.data() + i * k, k, out_distances + q * k);
        }
    }
}

// Scans, for every query, its probes of rank [rank_begin, rank_end) into
// heaps[worker * nq + query], list by list: each list's vectors are read once
// for all the queries that probe it.
void IvfIndex::scan_lists(size_t nq, const float* queries, size_t nprobe, const int64_t* probes, size_t rank_begin,
                          size_t rank_end, std::vector<TopK>& heaps, size_t workers, TileProducts products,
                          bool heap_per_rank) const {
    // Invert (query -> lists) into (list -> queries); per rank: the heap's slot beside each.
    const size_t nlist = lists_.size();
    const size_t ranks = heap_per_rank ? rank_end - rank_begin : 1;
    std::vector<size_t> start(nlist + 1, 0);
    for (size_t q = 0; q < nq; ++q) {
        for (size_t r = rank_begin; r < rank_end; ++r) ++start[static_cast<size_t>(probes[q * nprobe + r]) + 1];
    }
    std::partial_sum(start.begin(), start.end(), start.begin());
    std::vector<uint32_t> members(start[nlist]);
    std::vector<uint32_t> slots(heap_per_rank ? members.size() : 0);
    {
        std::vector<size_t> fill(start.begin(), start.end() - 1);
        for (size_t q = 0; q < nq; ++q) {
            for (size_t r = rank_begin; r < rank_end; ++r) {
                const size_t at = fill[static_cast<size_t>(probes[q * nprobe + r])]++;
                members[at] = static_cast<uint32_t>(q);
                if (heap_per_rank) slots[at] = static_cast<uint32_t>(q * ranks + (r - rank_begin));
            }
        }
    }
    // Work items: up to kListQueries queries of one list, in equal pieces (264
    // queries are two items of 132, not 256 and 8: each item reads the list);
    // biggest first so large (skewed) lists do not finish last on one thread.
    struct Item {
        uint32_t list;
        uint32_t first;  // offset into the list's members
        uint32_t count;
        uint64_t cost;
    };
    std::vector<Item> items;
    for (size_t l = 0; l < nlist; ++l) {
        const size_t size = lists_[l].labels.size();
        const size_t nqueries = start[l + 1] - start[l];
        if (size == 0) continue;
        const size_t pieces = (nqueries + kListQueries - 1) / kListQueries;
        for (size_t p = 0; p < pieces; ++p) {
            const size_t f = nqueries * p / pieces, c = nqueries * (p + 1) / pieces - f;
            items.push_back({static_cast<uint32_t>(l), static_cast<uint32_t>(f), static_cast<uint32_t>(c),
                             static_cast<uint64_t>(size) * c});
        }
    }
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });

    // A scanner per worker, not per work item: a scanner's tile is 512 KiB,
    // and zero-filling one per item cost ~10% of a self-join's search.
    struct Worker {
        std::unique_ptr<IvfListScanner> scanner;
        std::vector<TopK*> heap_of;
    };
    std::vector<Worker> scratch(workers);
    const float* centroids = centroid_data();
    parallel_for(items.size(), 1, static_cast<int>(workers), [&](size_t b, size_t e, int worker) {
        Worker& w = scratch[worker];
        if (!w.scanner) {
            w.scanner = codec_->scanner(products);
            w.heap_of.resize(kListQueries);
        }
        TopK* my_heaps = heaps.data() + static_cast<size_t>(worker) * nq * ranks;
        for (size_t it = b; it < e; ++it) {
            const Item& item = items[it];
            const List& list = lists_[item.list];
            const size_t first = start[item.list] + item.first;
            const uint32_t* qs = members.data() + first;
            const uint32_t* slot = heap_per_rank ? slots.data() + first : qs;
            for (size_t i = 0; i < item.count; ++i) w.heap_of[i] = &my_heaps[slot[i]];
            const IvfListView view{list.labels.data(), list.codes.data(), list.norms.empty() ? nullptr : list.norms.data(),
                                   list.labels.size(), centroids + size_t{item.list} * dim_};
            w.scanner->scan(view, queries, qs, item.count, w.heap_of.data());
        }
    });
}

void IvfIndex::search_batch(size_t nq, const float* queries, size_t k, size_t nprobe, const int64_t* probes,
                            int64_t* out_ids, float* out_distances, int threads, const size_t* ends, size_t nends,
                            size_t out_stride, uint8_t* proven) const {
    const size_t workers = static_cast<size_t>(resolve_threads(threads));
    // Re-rank after an approximate scan: codes (sq8, pq) or bf16 tiles (float32).
    const TileProducts products = tile_products();
    const bool rerank = params_.keeps_float_copies() || products == TileProducts::Bf16;
    const size_t candidates = rerank ? k * params_.rerank : k;
    // An exact answer from an approximate scan keeps more candidates (the ends'
    // answers take the best `candidates` of them: what search keeps) and proves
    // itself against the scan's error bound.
    const bool deep = proven != nullptr && rerank;
    const size_t kept = deep ? std::max(candidates, std::min(kExactCandidatesPerK * k, kMaxExactCandidates)) : candidates;
    const std::vector<float> error_bound = deep ? scan_error_bounds(nq, queries, threads) : std::vector<float>{};
    if (products == TileProducts::Bf16) index_places();  // the re-rank reads float32 rows from the lists
    std::vector<TopK> heaps(workers * nq);
    for (TopK& h : heaps) {
        h.reset(kept);
        h.order_ties_by(ids_.data());  // ties by user id: the answer does not depend on the order of adds
    }
    const auto to_id = [&](int64_t label) { return ids_[static_cast<size_t>(label)]; };
    // The answer after `scanned` lists of each query: the workers' selections
    // merged (into a copy while more lists are to come), re-ranked or written;
    // after the last, the exact answer too when asked for.
    auto write = [&](size_t scanned, int64_t* ids, float* distances) {
        const bool last = scanned == nprobe;
        parallel_for(nq, 256, threads, [&](size_t b, size_t e, int) {
            for (size_t q = b; q < e; ++q) {
                TopK copy;
                TopK& h = last ? heaps[q] : (copy = heaps[q]);
                for (size_t w = 1; w < workers; ++w) h.merge(heaps[w * nq + q]);
                const float* query = queries + q * dim_;
                if (!rerank) {
                    if (last && proven != nullptr) {  // an exact scan: its answer is the exact one
                        TopK same = h;
                        same.write_sorted(ids + out_stride + q * k, distances + out_stride + q * k, to_id);
                        proven[q] = 1;
                    }
                    h.write_sorted(ids + q * k, distances + q * k, to_id);
                    continue;
                }
                if (!deep) {
                    rerank_candidates(query, h, k, ids + q * k, distances + q * k);
                    continue;
                }
                TopK searched(candidates);  // what search keeps: the best `candidates` of the deep ones
                searched.order_ties_by(ids_.data());
                const std::vector<TopK::Entry>& all = h.entries();
                for (const TopK::Entry& entry : all) searched.push(entry.first, entry.second);
                rerank_candidates(query, searched, k, ids + q * k, distances + q * k);
                if (last) {
                    // Every row left out is at least the worst kept's scan distance away by
                    // the scan, so at least that less the error bound in truth.
                    const bool full = all.size() >= kept;
                    float worst = -std::numeric_limits<float>::infinity();
                    for (const TopK::Entry& entry : all) worst = std::max(worst, entry.first);
                    int64_t* exact_ids = ids + out_stride + q * k;
                    float* exact_distances = distances + out_stride + q * k;
                    rerank_candidates(query, h, k, exact_ids, exact_distances);
                    proven[q] = !full || exact_distances[k - 1] < worst - error_bound[q];
                }
            }
        });
    };
    const size_t single_end[] = {nprobe};
    if (ends == nullptr) ends = single_end, nends = 1;
    // Answers at a ladder's first values (up to kRankHeapsTop lists) come from one scan
    // of those ranks into a selection per (query, rank): a scan per value would give
    // each list a handful of queries (tiles too thin to pay), and a selection merged
    // from per-list selections of `candidates` keeps the same best `candidates`.
    size_t e = 0;
    size_t low = 0;  // ends[0, low) answered from per-rank selections
    while (low + 1 < nends && ends[low] <= kRankHeapsTop) ++low;
    // ... when their selections fit kRankHeapsBytes (a tuning's sample; not a huge batch)
    const size_t per_query = low ? workers * ends[low - 1] * (sizeof(TopK) + 2 * candidates * sizeof(TopK::Entry)) : 0;
    if (low >= 2 && nq * per_query <= kRankHeapsBytes) {
        const size_t ranks = ends[low - 1];
        std::vector<TopK> per_rank(workers * nq * ranks);
        for (TopK& h : per_rank) {
            h.reset(candidates);
            h.order_ties_by(ids_.data());
        }
        scan_lists(nq, queries, nprobe, probes, 0, ranks, per_rank, workers, products, /*heap_per_rank=*/true);
        parallel_for(nq, 64, threads, [&](size_t b, size_t end, int) {
            for (size_t q = b; q < end; ++q) {
                TopK merged(candidates);
                merged.order_ties_by(ids_.data());
                size_t r = 0;
                for (size_t i = 0; i < low; ++i) {
                    for (; r < ends[i]; ++r) {
                        for (size_t w = 0; w < workers; ++w) merged.merge(per_rank[(w * nq + q) * ranks + r]);
                    }
                    TopK copy = merged;
                    int64_t* ids = out_ids + i * out_stride + q * k;
                    float* distances = out_distances + i * out_stride + q * k;
                    if (rerank) {
                        rerank_candidates(queries + q * dim_, copy, k, ids, distances);
                    } else {
                        copy.write_sorted(ids, distances, to_id);
                    }
                }
            }
        });
        e = low;
    }
    // Two passes: every query's nearest list first, then the others. After the
    // first pass a query's k-th distance bounds what can still enter, so the
    // second pass (nprobe - 1 lists) rejects almost every candidate in the SIMD
    // compare instead of paying a selection for it. Answers asked for at fewer
    // lists (ends) are written as the scan passes them.
    scan_lists(nq, queries, nprobe, probes, 0, 1, heaps, workers, products);
    size_t scanned = 1;
    for (; e < nends; ++e) {
        if (ends[e] > scanned) {
            if (scanned == 1) {
                for (size_t q = 0; q < nq; ++q) {
                    float bound = std::numeric_limits<float>::infinity();
                    for (size_t w = 0; w < workers; ++w) bound = std::min(bound, heaps[w * nq + q].tighten());
                    for (size_t w = 0; w < workers; ++w) heaps[w * nq + q].limit(bound);
                }
            }
            scan_lists(nq, queries, nprobe, probes, scanned, ends[e], heaps, workers, products);
            scanned = ends[e];
        }
        write(scanned, out_ids + e * out_stride, out_distances + e * out_stride);
    }
}

// How far a bf16 scan distance can be from the exact one, per query: the
// product of residuals (q - c) . (x - c) in bf16 is within beta |q - c| |x - c|
// of the exact (each factor rounded within 2^-9, Cauchy-Schwarz; float32 sums
// within dim 2^-24), taken at the worst list (its widest member), twice for L2
// (-2 q . x), plus the float32 terms' rounding (|q|^2 + |x|^2 and the centroid
// products, within (dim + 8) 2^-23 (|q| + max |x|)^2).
std::vector<float> IvfIndex::scan_error_bounds(size_t nq, const float* queries, int threads) const {
    const DistanceKernels& kern = kernels();
    const float* centroids = centroid_data();
    const size_t nlist = lists_.size();
    std::vector<double> radius(nlist, 0.0), row_norm(nlist, 0.0);  // per list: max |x - c|, max |x|
    parallel_for(nlist, 1, threads, [&](size_t b, size_t e, int) {
        for (size_t l = b; l < e; ++l) {
            const float* rows = reinterpret_cast<const float*>(lists_[l].codes.data());
            double r = 0.0, x = 0.0;
            for (size_t i = 0; i < lists_[l].labels.size(); ++i) {
                r = std::max(r, static_cast<double>(kern.l2sq(rows + i * dim_, centroids + l * dim_, dim_)));
                x = std::max(x, static_cast<double>(kern.dot(rows + i * dim_, rows + i * dim_, dim_)));
            }
            radius[l] = std::sqrt(r) * 1.001;
            row_norm[l] = std::sqrt(x) * 1.001;
        }
    });
    const double max_row = nlist ? *std::max_element(row_norm.begin(), row_norm.end()) : 0.0;
    const double beta = 1.01 * std::ldexp(1.0, -8) + static_cast<double>(dim_ + 8) * std::ldexp(1.0, -23);
    const double rounding = static_cast<double>(dim_ + 8) * std::ldexp(1.0, -23);
    const double factor = metric_ == Metric::L2 ? 2.0 : 1.0;
    std::vector<float> bound(nq);
    parallel_for(nq, 16, threads, [&](size_t b, size_t e, int) {
        for (size_t q = b; q < e; ++q) {
            const float* query = queries + q * dim_;
            double worst = 0.0;
            for (size_t l = 0; l < nlist; ++l) {
                if (lists_[l].labels.size() == 0) continue;
                const double to_centre = std::sqrt(static_cast<double>(kern.l2sq(query, centroids + l * dim_, dim_)));
                worst = std::max(worst, 1.001 * to_centre * radius[l]);
            }
            const double qn = std::sqrt(static_cast<double>(kern.dot(query, query, dim_)));
            const double span = (qn + max_row) * (qn + max_row);
            bound[q] = static_cast<float>(1.01 * (factor * beta * worst + factor * rounding * span));
        }
    });
    return bound;
}

void IvfIndex::rerank_candidates(const float* query, TopK& candidates, size_t k, int64_t* out_ids,
                                 float* out_distances) const {
    const DistanceKernels& kern = kernels();
    const std::vector<TopK::Entry>& entries = candidates.entries();
    auto row_of = [&](size_t i) -> const float* {
        const size_t label = static_cast<size_t>(entries[i].second);
        if (params_.keeps_float_copies()) return rerank_vectors_.data() + label * dim_;
        const auto [l, r] = place_of(label);  // float32 lists: the row itself (index_places ran first)
        return reinterpret_cast<const float*>(lists_[l].codes.data()) + r * dim_;
    };
    // The rows are scattered (a cache miss per line): four at a time through the
    // x4 kernels (their misses overlap; the same bits as one at a time), the next
    // four fetched meanwhile.
    auto prefetch = [&](const float* row) {
        for (size_t b = 0; b < dim_ * sizeof(float); b += 64) __builtin_prefetch(reinterpret_cast<const char*>(row) + b);
    };
    const size_t n = entries.size();
    const float* group[2][4];
    auto fetch = [&](size_t first, const float** rows) {
        for (size_t t = 0; t < 4 && first + t < n; ++t) prefetch(rows[t] = row_of(first + t));
    };
    const DistanceX4Fn x4 = metric_ == Metric::L2 ? kern.l2sq_x4 : kern.dot_x4;
    auto finish = [&](float raw) {  // as distance(): the kernels' raw value to the metric's distance
        return metric_ == Metric::L2 ? raw : metric_ == Metric::Cosine ? 1.0f - raw : -raw;
    };
    TopK exact(k);
    exact.order_ties_by(ids_.data());
    fetch(0, group[0]);
    for (size_t i = 0, g = 0; i < n; i += 4, g ^= 1) {
        fetch(i + 4, group[g ^ 1]);
        if (i + 4 <= n) {
            float raw[4];
            x4(query, group[g], dim_, raw);
            for (size_t t = 0; t < 4; ++t) exact.push(finish(raw[t]), entries[i + t].second);
        } else {
            for (size_t t = 0; i + t < n; ++t) {
                exact.push(distance(metric_, kern, query, group[g][t], dim_), entries[i + t].second);
            }
        }
    }
    exact.write_sorted(out_ids, out_distances, [&](int64_t label) { return ids_[static_cast<size_t>(label)]; });
}

}  // namespace sparknn
