// The Index interface every kind implements (flat, hnsw, ivf), and the factory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "sparknn/buffer.h"
#include "sparknn/distance.h"
#include "sparknn/file.h"

namespace sparknn {

// Per-call search options; 0 means "the index's default".
struct SearchParams {
    size_t ef = 0;      // hnsw: candidate list size, raised to k when smaller
    size_t nprobe = 0;  // ivf: lists scanned per query
    // ivf: each query's lists [nq, nprobe] (from IvfIndex::nearest_lists),
    // instead of asking the quantizer again; a self-join computes them once
    // for both add and search.
    const int64_t* lists = nullptr;
    // ivf: a query whose lists hold fewer than min(k, n) vectors probes twice
    // as many until it has them. Off for a search confined on purpose to some
    // lists (one part of a distributed index).
    bool widen = true;
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
    size_t size() const { return ids_.size(); }

    // Threads used by add and search; 0 = all available cores.
    int threads() const { return threads_; }
    void set_threads(int threads);

    // Adds n row-major vectors [n, dim]. `ids` may be null: ids then continue
    // from the largest id so far + 1 (0..n-1 for a new index). Rejects NaN/inf,
    // zero vectors under cosine, negative or duplicate ids, before any change.
    void add(size_t n, const float* vectors, const int64_t* ids);

    // For each of nq queries, the k nearest ids and distances, nearest first,
    // padded with (-1, +inf) when the index holds fewer than k vectors.
    void search(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                const SearchParams& params = {}) const;

    // Writes the index to `path` atomically (temporary file + rename); with
    // `sync`, flushed to disk before returning (see FileWriter::write).
    // `side_files` records the digests of files that belong beside this one
    // (written first, e.g. the user's string ids), checked by their readers.
    void save(const std::string& path, bool sync = true, const std::vector<SideFile>& side_files = {}) const;
    // The side files recorded in the file this index was loaded from.
    const std::vector<SideFile>& side_files() const { return side_files_; }

    // User id of internal label i.
    int64_t id_of(size_t label) const { return ids_[label]; }
    const int64_t* ids_data() const { return ids_.data(); }
    // The stored (for cosine: normalised) vector of label i.
    virtual const float* vector_of(size_t label) const = 0;
    // The stored vectors of any n labels, each in [0, size()), into out [n, dim]
    // (ivf: exact or decoded, as IvfIndex::reconstruct).
    void reconstruct_labels(size_t n, const int64_t* labels, float* out) const;

  protected:
    // Called with labels in range: copies vector_of(label); ivf decodes its lists.
    virtual void gather_labels(size_t n, const int64_t* labels, float* out) const;
    // Called with validated, already normalised vectors; labels start at size().
    virtual void add_impl(size_t n, const float* vectors) = 0;
    // Called with validated queries (normalised for cosine) and 1 <= k.
    virtual void search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids,
                             float* out_distances, const SearchParams& params) const = 0;
    virtual void save_sections(FileWriter& writer) const = 0;

    // add() with the storing step given: validates vectors and ids, then calls
    // store(validated vectors, normalised under cosine) and records the ids.
    void add_with(size_t n, const float* vectors, const int64_t* ids,
                  const std::function<void(const float*)>& store);
    // Loads the common sections (ids) of a validated file.
    void load_common(const std::shared_ptr<const IndexFile>& file);
    // Returns queries ready to search: validated, normalised for cosine (copied
    // only when normalisation is needed).
    const float* prepare_queries(size_t nq, const float* queries, AlignedVector<float>& scratch) const;

    size_t dim_;
    Metric metric_;
    int threads_ = 0;
    Buffer<int64_t> ids_;
    std::vector<SideFile> side_files_;

  private:
    void check_new_ids(size_t n, const int64_t* ids);
    mutable std::unordered_set<int64_t> id_set_;  // built lazily, for duplicate checks
    mutable bool id_set_built_ = false;
    int64_t next_id_ = 0;
};

// Creates an empty index. `options` holds kind parameters (M, ef_construction,
// ef_search, seed for hnsw); unknown names are rejected.
struct IndexOptions {
    size_t M = 16;
    size_t ef_construction = 200;
    size_t ef_search = 64;
    uint64_t seed = 42;
    size_t nlist = 0;              // ivf: 0 = chosen from the data when trained
    size_t nprobe = 16;            // ivf
    std::string storage = "float32";  // ivf: float32 | sq8
    size_t train_size = 0;         // ivf: k-means sample, 0 = automatic
    size_t pq_m = 0;               // ivf pq: bytes per vector, 0 = automatic
    size_t rerank = 0;             // ivf sq8/pq: exact re-ranking factor, 0 = off
};
std::unique_ptr<Index> make_index(IndexKind kind, size_t dim, Metric metric, const IndexOptions& options = {});

// Loads an index file of any kind; mmap maps it read-only and shared.
std::unique_ptr<Index> load_index(const std::string& path, bool mmap = true, bool verify_checksums = true);
std::unique_ptr<Index> load_index(const std::shared_ptr<const IndexFile>& file);

}  // namespace sparknn
