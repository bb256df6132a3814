// Inverted-file index: a coarse quantizer of nlist centroids (k-means) splits
// the vectors into lists; a query scans only its nprobe nearest lists.
//
// Search is batched per list, not per query: the queries of a batch are
// grouped by the lists they probe, and each list is scanned once for all of
// its queries with a BLAS sgemm (the same tile scan as exact search). Vectors
// are stored per list as float32, SQ8 (8-bit scalar quantisation, 4x smaller,
// decoded block by block into the scan) or PQ (pq_m bytes per vector: residuals
// to the list centroid, product-quantised; scanned with lookup tables), each
// a codec class of its own (cpp/src/ivf_codec.h). With rerank = r > 0, the
// r * k best candidates of an approximate scan are re-ranked by exact distance:
// sq8 / pq keep float32 copies in their own (memory-mapped) file section;
// float32 scans with bf16 tile products (AVX512_BF16, cpp/src/tile_bf16.h) and
// re-ranks from its own lists.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "sparknn/flat.h"
#include "sparknn/index.h"
#include "sparknn/ivf_params.h"
#include "sparknn/pq.h"
#include "sparknn/topk.h"

namespace sparknn {

class RowBlock;  // sparknn/row_block.h
struct KMeansParams;  // sparknn/kmeans.h
struct KMeansResult;
class IvfCodec;  // cpp/src/ivf_codec.h: one implementation per storage
enum class TileProducts;  // cpp/src/gemm_scan.h: float32 or bf16 tile products

// The lists each query scans, nearest first, as CSR: query q scans
// lists[offsets[q] .. offsets[q + 1]).
struct ProbePlan {
    std::vector<int64_t> offsets;  // [nq + 1], offsets[0] = 0
    std::vector<int64_t> lists;    // [offsets[nq]], each in [0, nlist)
};

class IvfIndex final : public Index {
  public:
    IvfIndex(size_t dim, Metric metric, const IvfParams& params);
    ~IvfIndex() override;
    IndexKind kind() const override { return IndexKind::Ivf; }
    Storage storage() const override { return params_.storage; }
    const float* vector_of(size_t) const override { return nullptr; }  // vectors live in lists, maybe encoded

    // Every call below takes the index's lock (see index.h) but centroid_data.
    IvfParams params() const;  // a copy: set_nprobe and train may change it
    void set_nprobe(size_t nprobe);  // waits for running calls (SearchParams::nprobe sets it per call)
    bool is_trained() const;
    size_t nlist() const;  // 0 before training
    size_t list_size(size_t list) const;
    std::vector<size_t> list_sizes() const;  // [nlist]
    // A copy of the centroids [nlist, dim] (normalised space under cosine); empty before training.
    std::vector<float> centroids() const;
    // The centroids in place, null before training; not synchronised (train sets them).
    const float* centroid_data() const { return quantizer_ ? quantizer_->vector_of(0) : nullptr; }

    // Trains the quantizer (and SQ8 ranges) on n vectors; validated like add.
    // Optional: an untrained index trains on a sample of its first add. Exclusive.
    void train(size_t n, const float* vectors);
    // Queries per search batch that give each probed list ~256 of them (its
    // scan is then one efficient sgemm): 256 * nlist / nprobe. search() clamps it
    // to [16k, 256k]; callers that batch queries themselves start from it.
    size_t ideal_query_batch(size_t nprobe) const;
    // The nprobe nearest lists of each query [nq, nprobe], nearest first (ties
    // by list number); `threads` as SearchParams::threads.
    void nearest_lists(size_t nq, const float* queries, size_t nprobe, int64_t* out_lists, int threads = -1) const;
    // The lists each query scans to find `need` vectors: the probing policy
    // of search (SearchParams::widen), for callers that scan lists themselves
    // (a routed query, whose lists live in many part files). Per query: its
    // nprobe nearest lists (nprobe is clamped to nlist); when those hold fewer
    // than `need` vectors, the quantizer's nearest lists at twice the width,
    // then four times ... (at most nlist) until they hold `need`, trimmed to
    // the shortest prefix that does (all nlist lists when even they do not).
    //   need: vectors wanted per query, e.g. min(k, n) (one more for a
    //     self-join whose query finds itself); 0 never widens.
    //   list_sizes: [nlist] vectors per list (>= 0), or null for this index's
    //     own (a routed index's quantizer holds no vectors: its sizes come from
    //     the routing table).
    //   nearest: [nq, nearest_width] each query's nearest lists, nearest first,
    //     when already known (nearest_width >= nprobe; the first nprobe are
    //     used), or null to ask the quantizer. Widened queries always ask it.
    //   threads: as SearchParams::threads.
    // Validates queries like search; requires a trained index.
    ProbePlan probe_lists(size_t nq, const float* queries, size_t nprobe, size_t need,
                          const int64_t* list_sizes = nullptr, const int64_t* nearest = nullptr,
                          size_t nearest_width = 0, int threads = -1) const;
    // Index::search at each nprobe of `nprobes` (count values, ascending, in
    // [1, nlist]) in one scan of the largest: a query's lists are scanned
    // nearest first, and its answer at each value is written once that many are
    // done. out_ids / out_distances: [count, nq, k]. Without widening
    // (SearchParams::widen): a query whose lists hold fewer than k vectors is
    // padded with -1. For recall tuning: the answers of a whole ladder of nprobe
    // for the cost of its largest value.
    void search_nprobes(size_t nq, const float* queries, size_t k, const size_t* nprobes, size_t count,
                        int64_t* out_ids, float* out_distances, int threads = -1) const;
    // Recall tuning's scan: search_nprobes with nprobes ending at nlist, and after its
    // count answers the exact one: out [count + 1, nq, k].
    // The exact answer of an approximate scan (bf16 tiles) re-ranks 16 k candidates and
    // is proven per query: proven[i] = 1 when no row left out can be nearer than its k-th
    // (the scan's error bound), 0 when the caller must search query i exactly itself. An
    // exact scan proves every query. Requires float32 storage.
    // The lists past a query's nearest kRankHeapsTop that cannot hold one of its k nearest are
    // not scanned (ivf_exact_prune.cpp): the answer at nlist (the last of nprobes) is then that
    // of the lists scanned, not search_nprobes' at nlist (for float32 the same rows, up to
    // whether a list far from the origin was scanned less its centroid: gemm_scan.h).
    void search_ladder_and_exact(size_t nq, const float* queries, size_t k, const size_t* nprobes, size_t count,
                                 int64_t* out_ids, float* out_distances, uint8_t* proven, int threads = -1) const;
    // The ladder values of search_nprobes / search_ladder_and_exact up to this many lists come
    // from one scan with a selection per rank; each larger value costs a scan of its own.
    static constexpr size_t kRankHeapsTop = 16;
    // add() into given lists (lists[i] in [0, nlist), usually column 0 of
    // nearest_lists): skips the quantizer pass. Requires a trained index. Exclusive, as add.
    void add_to_lists(size_t n, const float* vectors, const int64_t* ids, const int64_t* lists);
    // Room for extra[l] more vectors in each list l (extra: [nlist], >= 0), so the adds that
    // follow append without growing: lists grown add by add hold up to twice their vectors
    // until shrink_to_fit, which was a build's peak. A builder that assigned every vector
    // first (nearest_lists) knows the counts. Requires a trained index. Exclusive, as add.
    // Room too large to address or allocate is an InvalidArgument, the index unchanged.
    void reserve_lists(const int64_t* extra);
    // Index::adopt_rows (float32 lists, an empty trained index) with each label's list
    // given: lists [n] (column 0 of nearest_lists), or null to assign them here (as
    // Index::adopt_rows does, which this name hides for IvfIndex callers). The rows are
    // reordered in place into list order and kept there as the lists. A bad list is
    // refused as a bad row or id is, leaving the index and the block unchanged.
    void adopt_rows(const std::shared_ptr<RowBlock>& block, const int64_t* ids, const int64_t* lists,
                    const int64_t* order = nullptr);
    // adopt_rows with the lists found here, and each label's nearest `width` lists written to
    // nearest [n, width] (what nearest_lists answers for its row; a self-join's probes). With a
    // first pass trained in its subspace, the rows are projected once: for their lists, and
    // (reordered with the rows) as the first pass's projected lists, which the first search
    // then does not compute again.
    void adopt_rows_nearest(const std::shared_ptr<RowBlock>& block, const int64_t* ids, const int64_t* order,
                            size_t width, int64_t* nearest);
    // The rows of every list as one array [size(), dim], list after list (list_labels
    // names them), pinned (Index::view_vectors): when the lists lie so in memory (an
    // index that adopted its rows or was loaded from a file, float32 storage, nothing
    // added since); Unsupported otherwise. A self-join's queries in list order, no copy.
    PinnedView<float> view_rows_in_list_order() const;
    // Index::reconstruct: exact for float32 (and for any storage with rerank,
    // from its float32 copies), decoded otherwise (sq8: within half a step per
    // value; pq: the list centroid plus the decoded residual).
    // Every stored label, list after list (list_size(l) each): a self-join that
    // takes its queries in this order gives each list all its members at once.
    std::vector<int64_t> list_labels() const;

    static std::unique_ptr<IvfIndex> load(const std::shared_ptr<const IndexFile>& file);

    // A first pass in a projected space, for long vectors searched by large batches (a
    // self-join): the lists' rows and the queries projected onto the principal subspace
    // of a sample of the rows (principal_basis.h), scanned there (dims / dim of the work),
    // and the best max(rerank, kFirstPassRerank) * k candidates of each query re-ranked
    // by exact float32 distance from the lists. The basis is fitted and the lists
    // projected on the first search that uses it (a pass over the rows, kept until the
    // next add: n * dims floats more memory). An exact answer (search_ladder_and_exact's)
    // scans every list in the subspace too: under L2 and cosine a projected distance is a
    // lower bound of the exact one, so the candidates below the exact k-th are all there is
    // to re-rank, and the rows left out are proven farther. Requires float32 storage and
    // rerank >= 1.
    //   dims: 0 = off (the default); kFirstPassAuto = the least multiple of 16 up to
    //   dim / 4 (at most 256) whose subspace holds kFirstPassShare of the sample's
    //   variance, off when none does or dim < kFirstPassMinDim; else exactly dims (< dim).
    // Saved with the index: the setting, and once fitted the basis (docs/FORMAT.md), so a
    // loaded index searches in the subspace it was trained and tuned in. Waits for running
    // calls, as set_nprobe.
    static constexpr size_t kFirstPassAuto = ~size_t{0};
    static constexpr size_t kFirstPassMinDim = 256;
    static constexpr double kFirstPassShare = 0.9;
    static constexpr size_t kFirstPassRerank = 4;
    // Candidates a search re-ranks at once, list by list (rerank_by_list): a block of queries'
    // worth, each candidate a 16-byte pair and its place (~24 MB).
    static constexpr size_t kRerankBlockPairs = size_t{1} << 20;
    void set_first_pass_dims(size_t dims);
    size_t first_pass_dims() const;  // the setting
    // The dimensions the first pass scans in (fitting it now if it is not fitted yet), and the share
    // of the variance they hold; {0, 0} when it is off, declined, or the index holds too few
    // vectors to fit it on (auto: fewer than kFirstPassMinRows; a count: not more than it).
    std::pair<size_t, double> first_pass_in_use(int threads = -1) const;
    static constexpr size_t kFirstPassMinRows = 4096;
    // A loaded basis further than this from orthonormal (gram_excess) is refused.
    static constexpr double kFirstPassMaxExcess = 1e-3;

  protected:
    void add_impl(size_t n, const float* vectors) override;
    void shrink_to_fit_impl() override;
    void search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                     const SearchParams& params) const override;
    void save_sections(FileWriter& writer) const override;
    void gather_labels(size_t n, const int64_t* labels, float* out) const override;
    void reconstruct_impl(size_t begin, size_t count, float* out) const override;

  private:
    struct FirstPass;  // below
    // One query's exact distances by label, kept across the re-ranks of its ladder's answers
    // (ivf_search.cpp): their candidates overlap, each row measured once.
    class ExactDistances;
    struct List {
        Buffer<int64_t> labels;      // internal labels (positions in ids_)
        Buffer<uint8_t> codes;       // [size, code_size]
        AlignedVector<float> norms;  // [size] |x|^2 when the codec keeps_norms (float32 under L2), rebuilt on load
    };
    // Returns the room a failed reserve_lists gave the lists it names.
    void release_reserved(const int64_t* extra);
    // The unlocked forms of the public calls, for callers holding the lock.
    bool trained() const { return quantizer_ != nullptr; }
    size_t batch_for(size_t nprobe) const;  // ideal_query_batch
    // The lists of each query: the quantizer's k-nearest centroids.
    void assign(size_t nq, const float* queries, size_t nprobe, int64_t* out_lists, int threads) const;
    // Rows of probes [nq, nprobe] whose lists hold fewer than `need` vectors
    // (sizes: [nlist], or null for the lists' own), ascending.
    std::vector<size_t> short_rows(size_t nq, size_t nprobe, const int64_t* probes, size_t need,
                                   const int64_t* sizes) const;
    // The lists of `rows` of queries (prepared) widened as probe_lists says, as
    // CSR in the order of rows. trim = false keeps the whole width reached
    // instead of the shortest prefix that holds `need`.
    ProbePlan widen(const std::vector<size_t>& rows, const float* queries, size_t nprobe, size_t need,
                    const int64_t* sizes, bool trim, int threads) const;
    // The coarse quantizer over nlist centroids [nlist, dim] (train and load).
    std::unique_ptr<FlatIndex> make_quantizer(size_t nlist, const float* centroids) const;
    static constexpr size_t kQuantizerExtra = 4;  // a bf16 quantizer pass's candidates beyond nprobe
    static constexpr size_t kQuantizerProjectedExtra = 8;  // the first pass's (trained in its subspace)
    // nlist as set, or the default for n vectors; checks n >= nlist.
    size_t training_nlist(size_t n) const;
    // The k-means sample of rows [n, dim] (train_size, else the default for nlist), copied;
    // empty when the sample is every row.
    std::vector<float> sample_rows(size_t n, const float* x, size_t nlist) const;
    void train_prepared(size_t n, const float* x);  // x validated (normalised under cosine)
    void train_on_sample(size_t sample, const float* train_x, size_t nlist);
    void add_assigned(size_t n, const float* vectors, const int64_t* assigned);
    void check_adoptable(size_t rows) const override;
    void adopt_impl(const std::shared_ptr<RowBlock>& block, const int64_t* order) override;
    // adopt_rows' storing step: the block's rows into their lists (assigned: per label) in place.
    // projected (optional): the rows' projections [n, dims] in the block's order, reordered with
    // them and kept as the first pass's projected lists (FirstPass::given).
    // adopt_rows' step that finds the lists (each label's nearest `width` into nearest) and places the rows.
    void place_nearest(const std::shared_ptr<RowBlock>& block, const int64_t* order, size_t width, int64_t* nearest);
    void place_rows(const std::shared_ptr<RowBlock>& block, const int64_t* assigned, const int64_t* order,
                    AlignedVector<float>* projected = nullptr, size_t dims = 0);
    // Rejects lists outside [0, nlist) and, per row of `width`, repeated lists.
    void check_lists(size_t rows, size_t width, const int64_t* lists, const char* what) const;
    template <class LabelAt>
    void gather(size_t count, LabelAt&& label_at, float* out) const;  // reconstruct's rows: label_at(i)
    // search_nprobes, and search_ladder_and_exact when proven is not null.
    void search_ladder(size_t nq, const float* queries, size_t k, const size_t* nprobes, size_t count,
                       int64_t* out_ids, float* out_distances, uint8_t* proven, int threads) const;
    // heaps: [workers][nq], or with heap_per_rank [workers][nq][rank_end - rank_begin] (a
    // selection per query and rank).
    void scan_lists(size_t nq, const float* queries, size_t nprobe, const int64_t* probes, size_t rank_begin,
                    size_t rank_end, std::vector<TopK>& heaps, size_t workers, TileProducts products,
                    bool heap_per_rank = false, const FirstPass* projected = nullptr) const;
    // Memory for those selections, and for an exact answer's deep ones, per batch.
    static constexpr size_t kRankHeapsBytes = size_t{256} << 20;
    // bf16 tiles for float32 lists with rerank on CPUs that have them (ivf_params.h).
    TileProducts tile_products() const;
    // Builds where_ if stale; place_of(label) then gives its (list, row).
    void index_places() const;
    std::pair<size_t, size_t> place_of(size_t label) const;
    // known (not with stop_slack): distances measured before are taken from it, new ones added.
    // stop_slack >= 0: the candidates' scan distances, less it, are lower bounds of their exact
    // distances times to_scan (the first pass's): taken nearest first, and the rest dropped
    // once they lie beyond the exact k-th.
    void rerank_candidates(const float* query, TopK& candidates, size_t k, int64_t* out_ids, float* out_distances,
                           double stop_slack = -1.0, double to_scan = 1.0, ExactDistances* known = nullptr) const;
    // The exact answers of nq queries from their candidates (labels[begins[q], + counts[q])),
    // re-ranked list by list (ivf_rerank.cpp): what rerank_candidates answers for each, without
    // known, read as each list's rows for all queries at once (with stop_slack it stops early
    // only among candidates provably beyond the k-th: measuring those too answers the same).
    void rerank_by_list(size_t nq, const float* queries, const size_t* begins, const uint32_t* counts,
                        const int64_t* labels, size_t k, int64_t* out_ids, float* out_distances, int threads) const;
    // The candidates an exact answer from an approximate scan keeps per query (lower_bounds:
    // the first pass's scan, under L2 or cosine): the first pass's lower bounds keep kFirstPassExactCandidates and re-rank only those below the
    // exact k-th (on Fashion-MNIST at 96 of 784 dimensions, 200 for the median query; 1024
    // proved 97% of a 1000-query sample; the others are searched again in full (search_ladder),
    // list by list for a handful of queries, which took a quarter of the tuning: 4096 keeps the
    // few wide queries in the first pass, whose selections hold only the rows below the bound).
    static size_t exact_candidates(size_t k, bool lower_bounds);
    static constexpr size_t kFirstPassExactCandidates = 4096;
    // probes: the batch's lists [nq, nprobe]. ends (ascending, the last nprobe;
    // null: {nprobe}): the answer after each query's first ends[e] lists goes
    // to out + e * out_stride.
    // proven (not null; nprobe = nlist): the exact answer too, at out + nends * out_stride,
    // and proven[i] whether query i's is proven exact (SearchParams::exact_proven).
    void search_batch(size_t nq, const float* queries, size_t k, size_t nprobe, const int64_t* probes,
                      int64_t* out_ids, float* out_distances, int threads, const size_t* ends = nullptr,
                      size_t nends = 0, size_t out_stride = 0, uint8_t* proven = nullptr,
                      bool allow_first_pass = true) const;
    // Per query: how far a scan distance (bf16 tiles, or float32 sgemm) can be from the exact
    // one (float32 lists).
    std::vector<float> scan_error_bounds(size_t nq, const float* queries, TileProducts products, int threads) const;
    // The exact answer's pruning (ivf_exact_prune.cpp): probes [nq, nprobe] with -1 for the
    // lists of rank >= from_rank that cannot hold one of a query's k nearest, judged by the
    // selections in heaps (workers per query) and the scan's error bounds; least_skipped[q]: the
    // least lower bound of a skipped list (infinity when none), which the proof must beat.
    std::vector<int64_t> without_far_lists(size_t nq, const float* queries, size_t k, size_t nprobe,
                                           const int64_t* probes, size_t from_rank, const std::vector<TopK>& heaps,
                                           size_t workers, const std::vector<float>& error_bound,
                                           std::vector<double>& least_skipped, int threads) const;
    // The same judged by kth[q], a bound from above of query q's exact k-th distance (not finite:
    // nothing skipped): the first pass's exact answer takes the k-th of its ladder's last answer
    // (k rows measured exactly), as its selections hold lower bounds.
    std::vector<int64_t> without_far_lists(size_t nq, const float* queries, size_t nprobe, const int64_t* probes,
                                           size_t from_rank, const std::vector<double>& kth,
                                           std::vector<double>& least_skipped, int threads) const;
    // An exact answer from the bf16 scan re-ranks this many candidates per neighbour: on
    // Fashion-MNIST and tight 768-d clusters 8 k proved 99% of queries exact, 16 k all.
    // At most this many (a large k's selections would hold 16k each; fewer proofs then succeed).
    static constexpr size_t kExactCandidatesPerK = 16;
    static constexpr size_t kMaxExactCandidates = 2048;

    IvfParams params_;
    std::unique_ptr<FlatIndex> quantizer_;  // centroids; ids 0..nlist-1
    std::vector<List> lists_;
    std::unique_ptr<IvfCodec> codec_;  // the storage: trains, encodes, decodes and scans the lists' codes
    Buffer<float> rerank_vectors_;  // [n, dim] in label order, when rerank > 0
    // label -> (list << 42 | row), built on the first reconstruct after a change.
    mutable std::vector<uint64_t> where_;
    mutable std::mutex where_mutex_;
    // Per list, max |x - c| and max |x| (float32 lists), for scan_error_bounds: a pass over every
    // row, so kept until the next change (list_extents rebuilds them when sizes changed).
    struct ListExtents {
        std::vector<double> radius, row_norm;
        size_t rows = ~size_t{0};
    };
    const ListExtents& list_extents(int threads) const;
    mutable ListExtents extents_;
    mutable std::mutex extents_mutex_;
    // The first pass's basis and the lists projected onto it (ivf_first_pass.cpp): fitted on
    // the first search after set_first_pass_dims, projected again after adds (list_extents' rule).
    struct FirstPass {
        bool fitted = false;
        size_t dims = 0;  // of the basis; 0: none
        double captured = 0.0;
        double excess = 0.0;           // gram_excess(basis): projected distances are at most 1 + it times exact
        std::vector<float> basis;      // [dims, dim]
        std::vector<float> centroids;  // [nlist, dims]
        std::vector<size_t> offsets;   // [nlist + 1]: list l's rows are rows[offsets[l], offsets[l + 1])
        AlignedVector<float> rows, norms;  // [size(), dims] list after list; [size()] under L2
        // On AVX-512 (tile_f32, packed()): each list's rows packed into panels, less its
        // projected centroid under L2 (panel_norms [size()]: their |x - c|^2); list l's panels
        // start at row panel_offsets[l] (a multiple of 16). Scanned without sgemm's packing on
        // every call; rows are then kept only when rows_base is set (queries in place), norms not.
        AlignedVector<float> panels, panel_norms;
        std::vector<size_t> panel_offsets;  // [nlist + 1], empty when not packed
        bool packed() const { return !panel_offsets.empty(); }
        uintptr_t rows_base = 0;  // where row 0 of the lists' own rows would lie when they lie
                                  // list after list in one array (adopted), else 0
        std::unique_ptr<IvfCodec> codec;  // float32 of dims: scans the projected lists
        size_t projected = ~size_t{0};    // size() when the lists were projected
        // The lists' rows projected already (adopt_rows_nearest), [size(), dims] list after list:
        // taken as rows by the next projection of the lists when the sizes still match.
        AlignedVector<float> given;
    };
    const FirstPass& first_pass(int threads) const;
    // Whether the setting asks for a first pass of an index (or training sample) of this many rows.
    bool first_pass_applies(size_t rows) const;
    // Fits the basis on rows [n, dim] into first_pass_ (its mutex held, or the exclusive lock).
    void fit_first_pass(size_t n, const float* rows, int threads) const;
    // first_pass_ fitted with this basis [dims, dim] (none: dims = 0, declined), lists not projected.
    void use_first_pass_basis(size_t dims, double captured, std::vector<float> basis) const;
    // The first pass's parameters and basis (save_sections), and back (load).
    void save_first_pass(FileWriter& writer) const;
    void load_first_pass(const IndexFile& file);
    // train's k-means in the first pass's subspace, fitted on the training sample (the
    // centroids then the means of their members' full rows): false when none applies.
    bool train_in_first_pass(size_t sample, const float* train_x, size_t nlist, const KMeansParams& kp,
                             KMeansResult& km);
    // queries [nq, dim] projected onto the first pass's basis [nq, dims]: the lists' own
    // projected rows when the queries are those rows in place, else computed into scratch.
    const float* project_queries(const FirstPass& first, size_t nq, const float* queries,
                                 AlignedVector<float>& scratch, int threads) const;
    size_t first_pass_setting_ = 0;
    mutable FirstPass first_pass_;
    mutable std::mutex first_pass_mutex_;
};

}  // namespace sparknn
