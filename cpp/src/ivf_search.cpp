// IvfIndex's batched search: queries grouped by list, each list scanned once by
// the codec's scanner (ivf_codec.h) for all the queries that probe it, short rows
// widened as ivf_probe.cpp plans; the answers of a ladder of nprobe from one scan,
// and an exact answer proven against the scan's error bound (recall tuning).
#include "sparknn/ivf.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "gemm_scan.h"
#include "ivf_codec.h"
#include "list_bound.h"
#include "sparknn/error.h"
#include "sparknn/parallel.h"
#include "sparknn/topk.h"
#include "tile_f32.h"

namespace sparknn {

// Open addressing over labels (a ladder re-ranks at most kRankHeapsTop x candidates rows of a
// query); cleared by the slots it filled.
class IvfIndex::ExactDistances {
  public:
    bool find(int64_t label, float& distance) const {
        if (labels_.empty()) return false;
        for (size_t s = slot(label);; s = (s + 1) & (labels_.size() - 1)) {
            if (labels_[s] == label) return distance = distances_[s], true;
            if (labels_[s] < 0) return false;
        }
    }
    void add(int64_t label, float distance) {
        if (2 * (used_.size() + 1) > labels_.size()) grow();
        size_t s = slot(label);
        while (labels_[s] >= 0 && labels_[s] != label) s = (s + 1) & (labels_.size() - 1);
        if (labels_[s] < 0) used_.push_back(s);
        labels_[s] = label;
        distances_[s] = distance;
    }
    void clear() {
        for (size_t s : used_) labels_[s] = -1;
        used_.clear();
    }

  private:
    size_t slot(int64_t label) const {
        return static_cast<size_t>(static_cast<uint64_t>(label) * 0x9E3779B97F4A7C15ull >> 40) & (labels_.size() - 1);
    }
    void grow() {
        std::vector<std::pair<int64_t, float>> kept;
        for (size_t s : used_) kept.emplace_back(labels_[s], distances_[s]);
        labels_.assign(std::max<size_t>(1024, 2 * labels_.size()), -1);
        distances_.assign(labels_.size(), 0.0f);
        used_.clear();
        for (const auto& [label, distance] : kept) add(label, distance);
    }
    std::vector<int64_t> labels_;
    std::vector<float> distances_;
    std::vector<size_t> used_;
};
namespace {

// Queries searched together: bounds the per-thread heaps (threads x batch x k)
// while keeping enough queries per list for the sgemm to pay off.
constexpr size_t kMinQueryBatch = 16384;
constexpr size_t kMaxQueryBatch = 262144;

}  // namespace

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
    if (proven == nullptr || first_pass_dims() == 0) return;
    // The first pass proves most exact answers (its lower bounds); the others are searched
    // again in full, here, as an exact scan of the lists proves them.
    std::vector<size_t> doubtful;
    for (size_t q = 0; q < nq; ++q) {
        if (!proven[q]) doubtful.push_back(q);
    }
    if (doubtful.empty()) return;
    const size_t m = doubtful.size();
    std::vector<float> again(m * dim_);
    for (size_t i = 0; i < m; ++i) std::memcpy(&again[i * dim_], queries + doubtful[i] * dim_, dim_ * sizeof(float));
    std::vector<int64_t> ids(answers * m * k);
    std::vector<float> distances(answers * m * k);
    std::vector<uint8_t> proofs(m, 1);
    p.exact_proven = proofs.data();
    p.first_pass = false;
    search(m, again.data(), k, ids.data(), distances.data(), p);
    for (size_t i = 0; i < m; ++i) {  // its exact answer only: the ladder's stay the first pass's
        std::copy_n(ids.data() + (count * m + i) * k, k, out_ids + (count * nq + doubtful[i]) * k);
        std::copy_n(distances.data() + (count * m + i) * k, k, out_distances + (count * nq + doubtful[i]) * k);
        proven[doubtful[i]] = proofs[i];
    }
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
    // its proof reads the lists' rows as float32 (list_extents)
    SPARKNN_THROW_IF_NOT(params.exact_proven == nullptr || params_.storage == Storage::Float32, InvalidArgument,
                         "an exact answer from the lists needs float32 storage");
    if (params.exact_proven != nullptr) {  // its deep selections (exact_candidates each) in a bounded batch
        const bool lower_bounds = params.first_pass && first_pass_setting_ != 0 && metric_ != Metric::InnerProduct &&
                                  first_pass(params.threads).dims > 0;
        const size_t per_query = static_cast<size_t>(resolve_threads(params.threads)) * 2 * sizeof(TopK::Entry) *
                                 exact_candidates(k, lower_bounds);
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
                     params.threads, ends, nends, nq * k, params.exact_proven ? params.exact_proven + q0 : nullptr,
                     params.first_pass);
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
        search_batch(m, gathered.data(), k, width, lists.data(), ids.data(), dist.data(), params.threads, nullptr, 0,
                     0, nullptr, params.first_pass);
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
                          bool heap_per_rank, const FirstPass* projected) const {
    // Invert (query -> lists) into (list -> queries); per rank: the heap's slot beside each.
    const size_t nlist = lists_.size();
    const size_t ranks = heap_per_rank ? rank_end - rank_begin : 1;
    std::vector<size_t> start(nlist + 1, 0);
    for (size_t q = 0; q < nq; ++q) {
        for (size_t r = rank_begin; r < rank_end; ++r) {
            if (probes[q * nprobe + r] >= 0) ++start[static_cast<size_t>(probes[q * nprobe + r]) + 1];
        }
    }
    std::partial_sum(start.begin(), start.end(), start.begin());
    std::vector<uint32_t> members(start[nlist]);
    std::vector<uint32_t> slots(heap_per_rank ? members.size() : 0);
    {
        std::vector<size_t> fill(start.begin(), start.end() - 1);
        for (size_t q = 0; q < nq; ++q) {
            for (size_t r = rank_begin; r < rank_end; ++r) {
                if (probes[q * nprobe + r] < 0) continue;  // skipped (without_far_lists)
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

    // A scanner per worker, not per work item: a scanner keeps its tile (up to
    // 2 MiB) and buffers; a fresh (zero-filled) one per item cost ~10% of a
    // self-join's search.
    struct Worker {
        std::unique_ptr<IvfListScanner> scanner;
        std::vector<TopK*> heap_of;
    };
    std::vector<Worker> scratch(workers);
    // The first pass scans the projected lists (queries projected too) with the float32 codec of their dims.
    const float* centroids = projected ? projected->centroids.data() : centroid_data();
    const bool packed = projected != nullptr && projected->packed();  // its lists in panels (AVX-512)
    const size_t centroid_dim = projected ? projected->dims : dim_;
    parallel_for(items.size(), 1, static_cast<int>(workers), [&](size_t b, size_t e, int worker) {
        Worker& w = scratch[worker];
        if (!w.scanner) {
            w.scanner = projected ? projected->codec->scanner(TileProducts::Float32) : codec_->scanner(products);
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
            const size_t at = projected ? projected->offsets[item.list] : 0;  // its first row of the projected
            const bool has_norms = projected ? !projected->norms.empty() : !list.norms.empty();
            const float* norms = !has_norms ? nullptr : projected ? projected->norms.data() + at : list.norms.data();
            const uint8_t* codes = !projected ? list.codes.data()
                                   : projected->rows.empty()
                                       ? nullptr  // packed and not kept: read from the panels alone
                                       : reinterpret_cast<const uint8_t*>(projected->rows.data() + at * projected->dims);
            IvfListView view{list.labels.data(), codes, norms, list.labels.size(),
                             centroids + size_t{item.list} * centroid_dim};
            if (packed) {
                view.panels = projected->panels.data() + projected->panel_offsets[item.list] * projected->dims;
                view.panel_norms = projected->panel_norms.empty() ? nullptr : projected->panel_norms.data() + at;
            }
            w.scanner->scan(view, queries, qs, item.count, w.heap_of.data());
        }
    });
}

void IvfIndex::search_batch(size_t nq, const float* queries, size_t k, size_t nprobe, const int64_t* probes,
                            int64_t* out_ids, float* out_distances, int threads, const size_t* ends, size_t nends,
                            size_t out_stride, uint8_t* proven, bool allow_first_pass) const {
    const size_t workers = static_cast<size_t>(resolve_threads(threads));
    // Re-rank after an approximate scan: codes (sq8, pq) or bf16 tiles (float32). A float32
    // sgemm scan asked to re-rank (rerank > 0) is too: sgemm rounds a product differently by
    // the row's place in the matrix, so its distances (and near ties' order) would depend on
    // which queries share a batch, and a retried Spark task could answer otherwise.
    const TileProducts products = tile_products();
    // The projected first pass (set_first_pass_dims): its scan distances are those of the
    // queries and rows projected (scan_queries), re-ranked after. Under L2 and cosine they are
    // lower bounds of the exact ones (a projection shortens every difference), which is what
    // an exact answer's proof needs of them (inner product has no such bound: scanned in full).
    const bool first_here =
        allow_first_pass && first_pass_setting_ != 0 && (proven == nullptr || metric_ != Metric::InnerProduct);
    const FirstPass* first = first_here ? &first_pass(threads) : nullptr;
    if (first != nullptr && first->dims == 0) first = nullptr;
    AlignedVector<float> projected;
    const float* scan_queries = first ? project_queries(*first, nq, queries, projected, threads) : queries;
    const bool approximate = first != nullptr || params_.keeps_float_copies() || products == TileProducts::Bf16;
    const bool rerank = approximate || (params_.rerank > 0 && params_.storage == Storage::Float32);
    const size_t candidates = !rerank ? k : k * (first ? std::max(params_.rerank, kFirstPassRerank) : params_.rerank);
    // An exact answer from an approximate scan keeps more candidates (the ends'
    // answers take the best `candidates` of them: what search keeps) and proves
    // itself against the scan's error bound.
    const bool deep = proven != nullptr && approximate;
    const size_t kept = deep ? std::max(candidates, exact_candidates(k, first != nullptr)) : candidates;
    // An exact answer (proven asked for, bf16 or float32 scan) skips the lists that cannot
    // hold a neighbour, allowing for how far a scan distance may be from the exact one. The
    // first pass scans them all instead: in its subspace that is dims / dim of the work, and
    // its deep selections hold lower bounds, not a k-th a list could be judged by.
    const bool prune = proven != nullptr && nprobe > kRankHeapsTop && first == nullptr;
    std::vector<float> error_bound = deep || prune ? scan_error_bounds(nq, queries, first ? TileProducts::Float32 : products,
                                                                       threads)
                                                   : std::vector<float>{};
    // The first pass's exact answer compares its k-th (cosine: as an L2 distance of unit
    // vectors, twice it) with scan distances in the subspace. Its bound (float32 sgemm at the
    // full dim, and at the full norms and radii, which the projection only shortens) is
    // doubled for the rounding of the projection itself, and the k-th taken 1e-5 larger. A
    // projected squared distance is at most 1 + excess times the exact one (the basis is
    // orthonormal only within float rounding, or a loaded file's tolerance): the k-th is
    // scaled by that too.
    const double to_scan =
        first == nullptr ? 1.0 : (metric_ == Metric::Cosine ? 2.0 : 1.0) * (1.0 + first->excess);
    if (first != nullptr) {
        for (float& b : error_bound) b *= 2.0f;
    }
    const auto as_scan = [&](double kth) { return first != nullptr ? to_scan * kth * (1.0 + 1e-5) : kth; };
    // per query, the least lower bound of a list the exact answer skipped (infinity: none)
    std::vector<double> least_skipped(proven != nullptr ? nq : 0, std::numeric_limits<double>::infinity());
    if (rerank && !params_.keeps_float_copies()) index_places();  // the re-rank reads float32 rows from the lists
    std::vector<TopK> heaps(workers * nq);
    for (TopK& h : heaps) {
        h.reset(kept);
        h.order_ties_by(ids_.data());  // ties by user id: the answer does not depend on the order of adds
    }
    const auto to_id = [&](int64_t label) { return ids_[static_cast<size_t>(label)]; };
    // Query q's answer from a selection of its candidates, at ids / distances + q * k:
    // re-ranked exactly, or written as it is.
    const auto answer = [&](size_t q, TopK& selection, int64_t* ids, float* distances,
                            ExactDistances* known = nullptr) {
        if (rerank) {
            rerank_candidates(queries + q * dim_, selection, k, ids + q * k, distances + q * k, -1.0, 1.0, known);
        } else {
            selection.write_sorted(ids + q * k, distances + q * k, to_id);
        }
    };
    // The answer after `scanned` lists of each query: the workers' selections
    // merged (into a copy while more lists are to come), re-ranked or written;
    // after the last, the exact answer too when asked for.
    // Queries per chunk of the answers' work (each a merge and a re-rank, an exact answer's a
    // deep one): 256 at most, and at least four chunks per worker, so a tuning's 250-query
    // stage is not one chunk on one core (it was: its deep re-ranks ran alone).
    const size_t answer_chunk = std::clamp<size_t>(nq / (4 * workers), 1, 256);
    // A plain answer (no proof, nothing measured before) re-ranks by list (rerank_by_list), in
    // blocks of queries whose candidates' labels take at most kRerankBlockPairs entries (its
    // pairs name a row of a list in 32 bits: a list longer than that re-ranks query by query).
    const bool rows_in_32_bits = std::all_of(lists_.begin(), lists_.end(), [](const List& list) {
        return list.labels.size() <= std::numeric_limits<uint32_t>::max();
    });
    const bool by_list = rerank && !deep && proven == nullptr && !params_.keeps_float_copies() && rows_in_32_bits;
    // The first pass's exact answers (a tuning's truth: a few hundred candidates per query, each
    // provably within reach of the k-th) re-rank by list too, once every query is selected.
    const bool deep_by_list = deep && first != nullptr && !params_.keeps_float_copies() && rows_in_32_bits;
    const size_t block_queries =
        std::clamp<size_t>(kRerankBlockPairs / std::max<size_t>(candidates, 1), 1, size_t{1} << 31);
    std::vector<int64_t> block_labels(by_list ? std::min(nq, block_queries) * candidates : 0);
    std::vector<uint32_t> block_counts(by_list ? std::min(nq, block_queries) : 0);
    std::vector<size_t> block_begins(by_list ? std::min(nq, block_queries) : 0);
    for (size_t i = 0; i < block_begins.size(); ++i) block_begins[i] = i * candidates;
    // per query, for the deep answers' proof: whether its selection was full, and its worst scan distance
    std::vector<uint8_t> deep_full(deep_by_list ? nq : 0);
    std::vector<float> deep_worst(deep_by_list ? nq : 0);
    // Query q's selection with the other workers' merged in: its own (the last answer), or
    // `copy` while more lists are to come.
    auto merged = [&](size_t q, bool last, TopK& copy) -> TopK& {
        TopK& h = last ? heaps[q] : (copy = heaps[q]);
        for (size_t w = 1; w < workers; ++w) h.merge(heaps[w * nq + q]);
        return h;
    };
    auto write_by_list = [&](bool last, int64_t* ids, float* distances) {
        for (size_t q0 = 0; q0 < nq; q0 += block_queries) {
            const size_t m = std::min(block_queries, nq - q0);
            parallel_for(m, answer_chunk, threads, [&](size_t b, size_t e, int) {
                for (size_t i = b; i < e; ++i) {
                    const size_t q = q0 + i;
                    TopK copy;
                    const std::vector<TopK::Entry>& entries = merged(q, last, copy).entries();
                    block_counts[i] = static_cast<uint32_t>(entries.size());
                    for (size_t j = 0; j < entries.size(); ++j) block_labels[i * candidates + j] = entries[j].second;
                }
            });
            rerank_by_list(m, queries + q0 * dim_, block_begins.data(), block_counts.data(), block_labels.data(), k,
                           ids + q0 * k, distances + q0 * k, threads);
        }
    };
    // A query's exact answer is proven when its selection was not full or its k-th (as a scan
    // distance) lies below the worst kept less the error bound, and every list skipped
    // unscanned is farther than the k-th (its bound is an exact distance's, as the k-th is before as_scan).
    auto prove = [&](size_t q, bool full, float worst, const float* distances) {
        const double exact_kth = distances[out_stride + q * k + k - 1];
        const double kth = as_scan(exact_kth);
        const bool skipped_farther = std::isinf(least_skipped[q]) || exact_kth < least_skipped[q];
        proven[q] = (!full || kth < worst - error_bound[q]) && skipped_farther;
    };
    // The deep selections' exact answers, list by list, in blocks of at most kRerankBlockPairs
    // candidates (a query's alone when it holds more).
    auto exact_by_list = [&](int64_t* ids, float* distances) {
        std::vector<size_t> begins;
        std::vector<uint32_t> counts;
        std::vector<int64_t> labels;
        for (size_t q0 = 0, q1; q0 < nq; q0 = q1) {
            size_t pairs = 0;
            for (q1 = q0; q1 < nq && (q1 == q0 || pairs + heaps[q1].entries().size() <= kRerankBlockPairs); ++q1) {
                pairs += heaps[q1].entries().size();
            }
            begins.assign(q1 - q0, 0);
            counts.assign(q1 - q0, 0);
            for (size_t q = q0, at = 0; q < q1; ++q) {
                begins[q - q0] = at;
                counts[q - q0] = static_cast<uint32_t>(heaps[q].entries().size());
                at += counts[q - q0];
            }
            labels.resize(pairs);
            parallel_for(q1 - q0, 64, threads, [&](size_t b, size_t e, int) {
                for (size_t i = b; i < e; ++i) {
                    const std::vector<TopK::Entry>& entries = heaps[q0 + i].entries();
                    for (size_t j = 0; j < entries.size(); ++j) labels[begins[i] + j] = entries[j].second;
                }
            });
            rerank_by_list(q1 - q0, queries + q0 * dim_, begins.data(), counts.data(), labels.data(), k,
                           ids + out_stride + q0 * k, distances + out_stride + q0 * k, threads);
        }
        for (size_t q = 0; q < nq; ++q) prove(q, deep_full[q] != 0, deep_worst[q], distances);
    };
    auto write = [&](size_t scanned, int64_t* ids, float* distances) {
        const bool last = scanned == nprobe;
        if (by_list) {
            write_by_list(last, ids, distances);
            return;
        }
        parallel_for(nq, answer_chunk, threads, [&](size_t b, size_t e, int) {
            for (size_t q = b; q < e; ++q) {
                TopK copy;
                TopK& h = merged(q, last, copy);
                if (!deep) {
                    if (last && proven != nullptr) {  // an exact scan: its answer is the exact one ...
                        TopK same = h;
                        answer(q, same, ids + out_stride, distances + out_stride);
                        // ... when every list it skipped lies beyond its k-th, as the skip made sure:
                        // the lists' bounds are exact distances, the k-th within the error bound of one
                        const double kth = distances[out_stride + q * k + k - 1];
                        proven[q] = !prune || std::isinf(least_skipped[q]) || kth + error_bound[q] < least_skipped[q];
                    }
                    answer(q, h, ids, distances);
                    continue;
                }
                TopK searched(candidates);  // what search keeps: the best `candidates` of the deep ones
                searched.order_ties_by(ids_.data());
                const std::vector<TopK::Entry>& all = h.entries();
                for (const TopK::Entry& entry : all) searched.push(entry.first, entry.second);
                answer(q, searched, ids, distances);
                if (last) {
                    // Every row left out is at least the worst kept's scan distance away by
                    // the scan, so at least that less the error bound in truth.
                    const bool full = all.size() >= kept;
                    float worst = -std::numeric_limits<float>::infinity();
                    for (const TopK::Entry& entry : all) worst = std::max(worst, entry.first);
                    if (deep_by_list) {  // measured by list once every query is here (exact_by_list)
                        deep_full[q] = full;
                        deep_worst[q] = worst;
                        continue;
                    }
                    if (first != nullptr) {  // nearest first, only those that may beat the k-th
                        rerank_candidates(queries + q * dim_, h, k, ids + out_stride + q * k,
                                          distances + out_stride + q * k, error_bound[q], to_scan);
                    } else {
                        answer(q, h, ids + out_stride, distances + out_stride);
                    }
                    prove(q, full, worst, distances);
                }
            }
        });
        if (deep_by_list && last) exact_by_list(ids, distances);
    };
    const size_t single_end[] = {nprobe};
    if (ends == nullptr) ends = single_end, nends = 1;
    // Answers at a ladder's first values (up to kRankHeapsTop lists) come from one scan
    // of those ranks into a selection per (query, rank): a scan per value would give
    // each list a handful of queries (tiles too thin to pay), and a selection merged
    // from per-list selections of `candidates` keeps the same best `candidates`.
    size_t e = 0;
    size_t scanned = 0;  // every query's first `scanned` lists are in its selections (heaps)
    size_t low = 0;  // ends[0, low) answered from per-rank selections
    bool ladder_answered = false;  // ... once they are
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
        scan_lists(nq, scan_queries, nprobe, probes, 0, ranks, per_rank, workers, products, /*heap_per_rank=*/true,
                   first);
        parallel_for(nq, 64, threads, [&](size_t b, size_t end, int) {
            ExactDistances known;  // a query's rows measured by the re-ranks of its values
            for (size_t q = b; q < end; ++q) {
                known.clear();
                TopK merged(candidates);
                merged.order_ties_by(ids_.data());
                size_t r = 0;
                for (size_t i = 0; i < low; ++i) {
                    for (; r < ends[i]; ++r) {
                        for (size_t w = 0; w < workers; ++w) merged.merge(per_rank[(w * nq + q) * ranks + r]);
                    }
                    TopK copy = merged;
                    answer(q, copy, out_ids + i * out_stride, out_distances + i * out_stride, &known);
                }
                // Selections as large as the per-rank ones (no deep answer): the ranks' merged
                // selection is the query's after them, without scanning them again.
                if (!deep) heaps[q] = std::move(merged);
            }
        });
        e = low;
        if (!deep) scanned = ranks;
        ladder_answered = true;
        if (deep && first != nullptr) {
            // The ladder's last answer holds exact distances of k rows: its k-th is at least the
            // query's exact k-th. A row whose scan distance exceeds that (as a scan distance, plus
            // the error bound) is provably farther, as the proof below judges the rows left out,
            // so the deep selections refuse it at once: they keep the few hundred rows that may
            // be neighbours instead of filling and cutting back to their nearest 1024 (on
            // Fashion-MNIST the cuts were a seventh of the tuning).
            for (size_t q = 0; q < nq; ++q) {
                const double kth = static_cast<double>(out_distances[(low - 1) * out_stride + q * k + k - 1]);
                if (!std::isfinite(kth)) continue;
                const double bound = as_scan(kth) + static_cast<double>(error_bound[q]);
                // rounded up: a scan distance at the bound itself must still enter
                const float limit = std::nextafter(static_cast<float>(bound), std::numeric_limits<float>::infinity());
                for (size_t w = 0; w < workers; ++w) heaps[w * nq + q].limit(limit);
            }
        }
    }
    // Two passes: every query's nearest list first (or its first ranks, merged above), then
    // the others. After the first pass a query's k-th distance bounds what can still enter,
    // so the second pass rejects almost every candidate in the SIMD compare instead of
    // paying a selection for it. Answers asked for at fewer lists (ends) are written as the
    // scan passes them.
    if (scanned == 0) {
        scan_lists(nq, scan_queries, nprobe, probes, 0, 1, heaps, workers, products, false, first);
        scanned = 1;
    }
    bool limited = false;
    for (; e < nends; ++e) {
        if (ends[e] > scanned) {
            if (!limited) {
                limited = true;
                for (size_t q = 0; q < nq; ++q) {
                    float bound = std::numeric_limits<float>::infinity();
                    for (size_t w = 0; w < workers; ++w) bound = std::min(bound, heaps[w * nq + q].tighten());
                    for (size_t w = 0; w < workers; ++w) heaps[w * nq + q].limit(bound);
                }
            }
            if (prune && ends[e] == nprobe) {
                // The exact answer: each query's nearest lists first, then only the lists that
                // may still hold one of its k nearest (without_far_lists).
                const size_t nearest = std::min(ends[e], std::max(scanned, kRankHeapsTop));
                if (nearest > scanned) scan_lists(nq, queries, nprobe, probes, scanned, nearest, heaps, workers, products);
                if (nearest < ends[e]) {
                    const std::vector<int64_t> near = without_far_lists(nq, queries, k, nprobe, probes, nearest, heaps,
                                                                        workers, error_bound, least_skipped, threads);
                    scan_lists(nq, queries, nprobe, near.data(), nearest, ends[e], heaps, workers, products);
                }
            } else if (first != nullptr && proven != nullptr && ladder_answered && ends[e] == nprobe &&
                       ends[low - 1] < nprobe) {
                // The first pass's exact answer: its selections hold lower bounds, but the ladder's
                // last answer (exact distances of k rows, after its first ends[low - 1] lists) bounds
                // each query's k-th from above; past those lists, only the lists whose rows may
                // come nearer are scanned (on Fashion-MNIST 40% of them lie beyond).
                const size_t nearest = ends[low - 1];
                if (nearest > scanned) {
                    scan_lists(nq, scan_queries, nprobe, probes, scanned, nearest, heaps, workers, products, false, first);
                }
                std::vector<double> kth(nq);
                for (size_t q = 0; q < nq; ++q) {
                    kth[q] = static_cast<double>(out_distances[(low - 1) * out_stride + q * k + k - 1]);
                }
                const std::vector<int64_t> near =
                    without_far_lists(nq, queries, nprobe, probes, nearest, kth, least_skipped, threads);
                scan_lists(nq, scan_queries, nprobe, near.data(), nearest, ends[e], heaps, workers, products, false,
                           first);
            } else {
                scan_lists(nq, scan_queries, nprobe, probes, scanned, ends[e], heaps, workers, products, false, first);
            }
            scanned = ends[e];
        }
        write(scanned, out_ids + e * out_stride, out_distances + e * out_stride);
    }
}

const IvfIndex::ListExtents& IvfIndex::list_extents(int threads) const {
    std::lock_guard<std::mutex> lock(extents_mutex_);
    const size_t nlist = lists_.size();
    // sizes (and centroids: train needs an empty index) change only under the exclusive lock
    if (extents_.rows == size() && extents_.radius.size() == nlist) return extents_;
    const DistanceKernels& kern = kernels();
    const float* centroids = centroid_data();
    std::vector<double> radius(nlist, 0.0), row_norm(nlist, 0.0);
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
    extents_.radius.swap(radius);
    extents_.row_norm.swap(row_norm);
    extents_.rows = size();
    return extents_;
}

// How far a scan distance can be from the exact one, per query. bf16 tiles: the
// product of residuals (q - c) . (x - c) in bf16 is within beta |q - c| |x - c|
// of the exact (each factor rounded within 2^-9, Cauchy-Schwarz; float32 sums
// within dim 2^-24), taken at the worst list (its widest member), twice for L2
// (-2 q . x), plus the float32 terms' rounding (|q|^2 + |x|^2 and the centroid
// products, within (dim + 8) 2^-23 (|q| + max |x|)^2). float32 sgemm: that rounding
// alone, of the terms as a list is scanned: |q|^2 + |x|^2 - 2 q . x, or for L2 lists
// scanned less their centroid (GemmScanner's Centring::Auto) the residuals' terms,
// within (dim + 8) 2^-23 (|q - c| + |x - c|)^2; cosine and inner product are never centred.
std::vector<float> IvfIndex::scan_error_bounds(size_t nq, const float* queries, TileProducts products,
                                               int threads) const {
    const DistanceKernels& kern = kernels();
    const float* centroids = centroid_data();
    const size_t nlist = lists_.size();
    const ListExtents& extents = list_extents(threads);
    const std::vector<double>& radius = extents.radius;    // per list: max |x - c|
    const std::vector<double>& row_norm = extents.row_norm;  // and max |x|
    const double max_row = nlist ? *std::max_element(row_norm.begin(), row_norm.end()) : 0.0;
    const double rounding = float32_sum_rounding(dim_);
    const bool bf16 = products == TileProducts::Bf16;
    const double beta = 1.01 * std::ldexp(1.0, -8) + rounding;
    const double factor = metric_ == Metric::L2 ? 2.0 : 1.0;
    std::vector<float> bound(nq);
    parallel_for(nq, 16, threads, [&](size_t b, size_t e, int) {
        for (size_t q = b; q < e; ++q) {
            const float* query = queries + q * dim_;
            double worst = 0.0;    // bf16: max |q - c| |x - c|
            double centred = 0.0;  // float32 L2 scans of lists less their centroid: max (|q - c| + |x - c|)^2
            for (size_t l = 0; l < nlist && (bf16 || metric_ == Metric::L2); ++l) {
                if (lists_[l].labels.size() == 0) continue;
                const double to_centre = std::sqrt(static_cast<double>(kern.l2sq(query, centroids + l * dim_, dim_)));
                worst = std::max(worst, 1.001 * to_centre * radius[l]);
                centred = std::max(centred, 1.001 * (to_centre + radius[l]) * (to_centre + radius[l]));
            }
            const double qn = std::sqrt(static_cast<double>(kern.dot(query, query, dim_)));
            double span = (qn + max_row) * (qn + max_row);
            if (!bf16) {  // float32 sgemm: its rounding alone, of the terms as the list was scanned
                if (metric_ == Metric::L2) span = std::max(span, centred);
                bound[q] = static_cast<float>(1.01 * factor * rounding * span);
                continue;
            }
            bound[q] = static_cast<float>(1.01 * (factor * beta * worst + factor * rounding * span));
        }
    });
    return bound;
}

size_t IvfIndex::exact_candidates(size_t k, bool lower_bounds) {
    return lower_bounds ? kFirstPassExactCandidates : std::min(kExactCandidatesPerK * k, kMaxExactCandidates);
}

void IvfIndex::rerank_candidates(const float* query, TopK& candidates, size_t k, int64_t* out_ids,
                                 float* out_distances, double stop_slack, double to_scan,
                                 ExactDistances* known) const {
    const DistanceKernels& kern = kernels();
    const bool stop = stop_slack >= 0.0;
    // Room for every candidate: one selection at the end rather than a cut per 2k measured (a
    // re-rank measures 4k or more). A stopping re-rank cuts when it asks for the k-th anyway.
    TopK exact;
    exact.reset_for(k, candidates.entries().size());
    exact.order_ties_by(ids_.data());
    std::vector<TopK::Entry> sorted;
    if (stop) {  // nearest first by scan distance, which bounds the exact one from below
        sorted = candidates.entries();
        std::sort(sorted.begin(), sorted.end());
    } else if (known != nullptr) {  // those measured before, as they were; the others below
        for (const TopK::Entry& entry : candidates.entries()) {
            float d;
            if (known->find(entry.second, d)) {
                exact.push(d, entry.second);
            } else {
                sorted.push_back(entry);
            }
        }
    }
    const std::vector<TopK::Entry>& entries = stop || known != nullptr ? sorted : candidates.entries();
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
    auto keep = [&](float d, int64_t label) {
        exact.push(d, label);
        if (known != nullptr) known->add(label, d);
    };
    fetch(0, group[0]);
    for (size_t i = 0, g = 0; i < n; i += 4, g ^= 1) {
        if (stop && i >= k) {  // the rest lie beyond the exact k-th: none can enter
            const double kth = static_cast<double>(exact.tighten());
            if (std::isfinite(kth) && static_cast<double>(entries[i].first) - stop_slack > to_scan * kth * (1.0 + 1e-5)) {
                break;
            }
        }
        fetch(i + 4, group[g ^ 1]);
        if (i + 4 <= n) {
            float d[4];
            distance_x4(metric_, kern, query, group[g], dim_, d);
            for (size_t t = 0; t < 4; ++t) keep(d[t], entries[i + t].second);
        } else {
            for (size_t t = 0; i + t < n; ++t) keep(distance(metric_, kern, query, group[g][t], dim_), entries[i + t].second);
        }
    }
    exact.write_sorted(out_ids, out_distances, [&](int64_t label) { return ids_[static_cast<size_t>(label)]; });
}

}  // namespace sparknn
