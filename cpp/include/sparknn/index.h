// The Index interface every kind implements (flat, hnsw, ivf), and the factory.
//
// Thread safety: one Index may be shared by any number of threads. Searches
// (and save, reconstruct, nearest_lists and the other const calls) run
// concurrently; add, train and the setters (set_threads, set_nprobe,
// set_ef_search) wait for them and run alone. A std::shared_mutex in Index,
// taken by every public entry point, does it (writers first: a waiting add
// holds back searches that arrive after it). Pointer accessors (ids_data,
// vector_of, IvfIndex::centroid_data) are not synchronised: their memory moves
// on add. To read stored arrays in place while other threads may add, take a
// pinned view (view_ids, view_vectors): while one lives, add refuses to run.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "sparknn/buffer.h"
#include "sparknn/distance.h"
#include "sparknn/file.h"
#include "sparknn/storage.h"

namespace sparknn {

class RowBlock;  // sparknn/row_block.h

// Per-call search options; 0 means "the index's default".
struct SearchParams {
    size_t ef = 0;      // hnsw: candidate list size, raised to k when smaller
    size_t nprobe = 0;  // ivf: lists scanned per query
    // ivf: each query's lists [nq, nprobe] (from IvfIndex::nearest_lists),
    // instead of asking the quantizer again; a self-join computes them once
    // for both add and search.
    const int64_t* lists = nullptr;
    // ivf: a query whose lists hold fewer than min(k, n) vectors probes twice
    // as many until it has them (IvfIndex::probe_lists' policy; search scans
    // the whole width reached). Off for a search confined on purpose to some
    // lists (one part of a distributed index).
    bool widen = true;
    // ivf: answers at each of these nprobe values too, from the one scan
    // (nprobe_ends_count values, ascending in [1, nlist], the last the scan's
    // nprobe): out_ids / out_distances are then [count, nq, k]. Requires widen
    // off (a widened query would scan other lists than the ladder's).
    const size_t* nprobe_ends = nullptr;
    size_t nprobe_ends_count = 0;
    // ivf, with nprobe_ends ending at nlist (IvfIndex::search_ladder_and_exact):
    // also the exact answer, after the ends' (out row nprobe_ends_count), and
    // here [nq] whether each query's is proven exact.
    uint8_t* exact_proven = nullptr;
    // ivf: false scans every dimension even where IvfIndex::set_first_pass_dims set a first pass.
    bool first_pass = true;
    // Threads for this call: 0 = all available cores, -1 = the index's
    // threads(). Concurrent callers that want different counts pass them here
    // rather than setting the shared index's threads.
    int threads = -1;
};

// A zero-copy view of an index's stored array (ids, or flat/hnsw vectors),
// row-major [rows, cols]. While `pin` (or a copy of it) lives, add() on the
// index throws InvalidArgument instead of moving the memory: drop the view (or
// copy the data) before adding. The index itself must outlive `data`.
template <class T>
struct PinnedView {
    const T* data = nullptr;
    size_t rows = 0;
    size_t cols = 1;
    std::shared_ptr<const void> pin;
};

class Index {
  public:
    Index(size_t dim, Metric metric);
    virtual ~Index() = default;
    Index(const Index&) = delete;
    Index& operator=(const Index&) = delete;

    size_t dim() const { return dim_; }
    Metric metric() const { return metric_; }
    virtual IndexKind kind() const = 0;
    // How the vectors are kept (flat, hnsw: float32 / fp16 / bf16; ivf: any).
    virtual Storage storage() const = 0;
    // Vectors held; during a concurrent add, the count before it.
    size_t size() const { return count_.load(std::memory_order_acquire); }

    // Threads used by add and search; 0 = all available cores. Setting waits
    // for running calls (SearchParams::threads sets it for one call instead).
    int threads() const { return threads_.load(std::memory_order_relaxed); }
    void set_threads(int threads);

    // Adds n row-major vectors [n, dim]. `ids` may be null: ids then continue
    // from the largest id so far + 1 (0..n-1 for a new index). Rejects NaN/inf,
    // zero vectors under cosine, negative or duplicate ids, before any change;
    // refuses to run while a pinned view (view_ids, view_vectors) lives.
    // Exclusive: waits for running searches, and they for it.
    void add(size_t n, const float* vectors, const int64_t* ids);

    // Returns the memory reserved for growth and freed by the adds, after the
    // last add of a build: ivf lists appended batch by batch hold up to twice
    // their rows, and glibc keeps freed heap memory (300k x 768 added 4096 at a
    // time: the process grew by 1.21 GB for 0.88 GB of vectors, 0.90 GB after
    // this). Answers are unchanged. Exclusive, like add.
    void shrink_to_fit();

    // For each of nq queries, the k nearest ids and distances, nearest first,
    // padded with (-1, +inf) when the index holds fewer than k vectors. Equal
    // distances are ordered by id, and where the k-th distance is shared the
    // smaller ids are kept: the same vectors with the same ids give the same
    // answer whatever order they were added in (flat; ivf trained alike; hnsw orders what
    // its graph search found so). Concurrent searches run in parallel.
    void search(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                const SearchParams& params = {}) const;

    // Writes the index to `path` atomically (temporary file + rename); with
    // `sync`, flushed to disk before returning (see FileWriter::write). Runs
    // beside searches; an add waits for it, so the file is one consistent state.
    // `side_files` records the digests of files that belong beside this one
    // (written first, e.g. the user's string ids), checked by their readers.
    void save(const std::string& path, bool sync = true, const std::vector<SideFile>& side_files = {}) const;
    // The side files recorded in the file this index was loaded from.
    const std::vector<SideFile>& side_files() const { return side_files_; }

    // Not synchronised (see the top of this file): valid until the next add.
    // User id of internal label i.
    int64_t id_of(size_t label) const { return ids_[label]; }
    const int64_t* ids_data() const { return ids_.data(); }
    // The stored (for cosine: normalised) vector of label i; null for ivf and
    // for 16-bit storage (reconstruct decodes those).
    virtual const float* vector_of(size_t label) const = 0;

    // The ids [size()] in place, pinned (see PinnedView).
    PinnedView<int64_t> view_ids() const;
    // flat, hnsw: the stored float32 vectors [size(), dim] in place, pinned;
    // ivf and 16-bit storage throw Unsupported (use reconstruct).
    PinnedView<float> view_vectors() const;

    // add() of a block's rows without a copy (an empty index whose rows are float32:
    // flat, hnsw, ivf with float32 lists): the rows are validated as add validates them
    // (cosine: normalised in place), reordered in place into the index's order and kept
    // there as its vectors; the index shares the block and marks it taken. A build that
    // held its input then needs its memory once, not twice. order: [n] the block's row
    // that gets label r (each row once), or null for row r: the index is then the one
    // add() builds from the rows in that order. ids [n] per label, or null. Exclusive, as
    // add. A bad row, id or order leaves the index and the block unchanged; a failure of
    // the build itself (out of memory) leaves the index empty, the block's rows possibly
    // reordered (and normalised, under cosine) and the block free to be taken again.
    void adopt_rows(const std::shared_ptr<RowBlock>& block, const int64_t* ids, const int64_t* order = nullptr);

    // The stored vectors of labels [begin, begin + count) into out [count, dim]:
    // exact for flat, hnsw and ivf float32 (and any ivf with rerank), decoded
    // otherwise (see IvfIndex). Cosine vectors are normalised.
    void reconstruct(size_t begin, size_t count, float* out) const;
    // The stored vectors of any n labels, each in [0, size()), into out [n, dim]
    // (exact or decoded as reconstruct).
    void reconstruct_labels(size_t n, const int64_t* labels, float* out) const;

  protected:
    // Locks: shared for readers, exclusive for writers. Public entry points take
    // one (never two: not re-entrant); the helpers below assume it is held.
    // A writer waits at the gate, so readers arriving after it queue behind it:
    // libstdc++'s shared_mutex (a glibc rwlock) prefers readers, and a steady
    // stream of searches would otherwise keep an add waiting forever.
    std::shared_lock<std::shared_mutex> reading() const {
        std::lock_guard<std::mutex> gate(gate_);
        return std::shared_lock<std::shared_mutex>(mutex_);
    }
    std::unique_lock<std::shared_mutex> writing() const {
        std::lock_guard<std::mutex> gate(gate_);
        return std::unique_lock<std::shared_mutex>(mutex_);
    }
    // Throws InvalidArgument naming `what` while a pinned view lives (call writing() first).
    void check_unpinned(const char* what) const;
    // A pin for a PinnedView of this index's arrays (counted until released).
    std::shared_ptr<const void> pin() const;

    // Called with labels in range: copies vector_of(label); ivf decodes its lists.
    virtual void gather_labels(size_t n, const int64_t* labels, float* out) const;
    // Called with [begin, begin + count) in range: copies vector_of rows; ivf decodes.
    virtual void reconstruct_impl(size_t begin, size_t count, float* out) const;
    // Called with validated, already normalised vectors; labels start at size().
    virtual void add_impl(size_t n, const float* vectors) = 0;
    // Called with the write lock held: frees the kind's reserved growth.
    virtual void shrink_to_fit_impl() {}
    // Called with validated queries (normalised for cosine), 1 <= k and
    // params.threads resolved (>= 0).
    virtual void search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids,
                             float* out_distances, const SearchParams& params) const = 0;
    virtual void save_sections(FileWriter& writer) const = 0;

    // Throws unless adopt_rows can take `rows` rows into this index now (the write lock
    // held), before any row changes: InvalidArgument naming what is missing (float32 rows,
    // training, room), Unsupported for a kind that cannot keep a block's rows.
    virtual void check_adoptable(size_t rows) const;
    // check_adoptable's check for kinds that keep the block as their rows (flat, hnsw): float32 storage.
    void check_adoptable_storage() const;
    // adopt_rows' storing step, called with the block claimed and its rows validated (and
    // normalised): the rows become the index's, row order[r] (or r) as label r.
    virtual void adopt_impl(const std::shared_ptr<RowBlock>& block, const int64_t* order);
    // adopt_rows with the storing step given: the lock, every check, the claim, then
    // add_with in place; `check` (or null) runs after the claim, before any row changes.
    void adopt_with(const std::shared_ptr<RowBlock>& block, const int64_t* ids, const int64_t* order,
                    const std::function<void()>& check, const std::function<void()>& place);
    // add() with the storing step given (the write lock held): validates
    // vectors and ids, then calls store(validated vectors, normalised under
    // cosine) and records the ids. `in_place` (= vectors, writable): cosine
    // normalises the rows there, after every row passed, instead of in a copy.
    void add_with(size_t n, const float* vectors, const int64_t* ids,
                  const std::function<void(const float*)>& store, float* in_place = nullptr);
    // Loads the common sections (ids) of a validated file.
    void load_common(const std::shared_ptr<const IndexFile>& file);
    // Returns queries ready to search: validated, normalised for cosine (copied
    // only when normalisation is needed).
    // `what` names a row in errors ("query row 3 ...").
    const float* prepare_queries(size_t nq, const float* queries, AlignedVector<float>& scratch,
                                 int threads, const char* what = "query") const;
    // The threads a call runs on: `requested` (>= 0) or the index's setting (-1).
    int call_threads(int requested) const;

    size_t dim_;
    Metric metric_;
    std::atomic<int> threads_{0};
    Buffer<int64_t> ids_;
    std::atomic<size_t> count_{0};  // ids_.size(), readable without the lock
    std::vector<SideFile> side_files_;
    // The block adopt_rows took: its rows were validated (and normalised under cosine) then and
    // are the index's own, so queries that are whole rows of it (a self-join searching its rows
    // in place) skip prepare_queries' check and copy.
    std::weak_ptr<const RowBlock> adopted_;

  private:
    void check_new_ids(size_t n, const int64_t* ids);
    mutable std::shared_mutex mutex_;
    mutable std::mutex gate_;  // see reading()
    // Live pinned views; shared so a pin outliving the index (a misuse) stays harmless.
    std::shared_ptr<std::atomic<size_t>> pins_ = std::make_shared<std::atomic<size_t>>(0);
    mutable std::unordered_set<int64_t> id_set_;  // built lazily, for duplicate checks
    mutable bool id_set_built_ = false;
    int64_t next_id_ = 0;
};

// Creates an empty index. `options` holds the parameters of every kind; each
// kind reads its own (hnsw: M, ef_construction, ef_search, seed; ivf: the rest
// and seed) and ignores the others.
struct IndexOptions {
    size_t M = 16;
    size_t ef_construction = 200;
    size_t ef_search = 64;
    uint64_t seed = 42;
    size_t nlist = 0;              // ivf: 0 = chosen from the data when trained
    size_t nprobe = 16;            // ivf
    std::string storage = "float32";  // float32 | fp16 | bf16; ivf also sq8 | pq
    size_t train_size = 0;         // ivf: k-means sample, 0 = automatic
    size_t pq_m = 0;               // ivf pq: bytes per vector, 0 = automatic
    size_t rerank = 0;             // ivf sq8/pq: exact re-ranking factor, 0 = off
};
std::unique_ptr<Index> make_index(IndexKind kind, size_t dim, Metric metric, const IndexOptions& options = {});

// Loads an index file of any kind; mmap maps it read-only and shared.
std::unique_ptr<Index> load_index(const std::string& path, bool mmap = true, bool verify_checksums = true);
std::unique_ptr<Index> load_index(const std::shared_ptr<const IndexFile>& file);

}  // namespace sparknn
