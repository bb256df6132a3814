// Graph index: Hierarchical Navigable Small World (Malkov & Yashunin, 2016).
//
// Layout (one array per concern, so a loaded file maps without copies):
//   store_          [n, dim] float32, fp16 or bf16 rows in insertion (label) order
//   levels_         uint8  [n], top layer of each node (0..kHnswMaxLevel)
//   links0_         uint32 [n, 1 + M0]: degree, then up to M0 = 2M neighbours
//   upper_offsets_  uint64 [n + 1]: where each node's upper rows start in upper_links_
//   upper_links_    uint32: per node, per layer 1..level: degree, then M slots
// Every row has the same shape (degree, slots), so one search loop serves all
// layers. In a file these are the Vectors (or Vectors16) and Hnsw* sections, byte for byte,
// with parameters M, ef_construction, ef_search, seed and entry_point (the
// label search starts from; it lies on the top layer).
//
// Build is parallel (per-node locks for writers, atomic loads for readers);
// with threads = 1 and a fixed seed it is deterministic, because a node's
// level is a hash of (seed, label) rather than a draw from a shared RNG.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "sparknn/index.h"
#include "sparknn/vector_store.h"

namespace sparknn {
namespace hnsw {
template <class T>
struct GraphView;
class CandidatePool;
}

// Levels above this are clamped when drawn and rejected when loaded (a node
// reaches it with probability M^-32).
inline constexpr int kHnswMaxLevel = 32;
inline constexpr size_t kHnswMaxM = 2048;
// Labels are uint32 with the top bit free (the search marks expanded candidates with it).
inline constexpr uint64_t kHnswMaxCount = (uint64_t{1} << 31) - 1;

struct HnswParams {
    size_t M = 16;                 // neighbours per node on upper layers; 2M on layer 0
    size_t ef_construction = 200;  // candidate list size while building
    size_t ef_search = 64;         // default candidate list size while searching
    uint64_t seed = 42;            // level generator seed

    static HnswParams from(const IndexOptions& options);
    void validate() const;  // throws InvalidArgument with what to fix
};

class HnswIndex final : public Index {
  public:
    HnswIndex(size_t dim, Metric metric, const HnswParams& params, Storage storage = Storage::Float32);
    ~HnswIndex() override;
    IndexKind kind() const override { return IndexKind::Hnsw; }
    Storage storage() const override { return store_.storage(); }
    const float* vector_of(size_t label) const override;

    HnswParams params() const;  // a copy: set_ef_search may change it
    void set_ef_search(size_t ef);  // waits for running calls (SearchParams::ef sets it per call)

    // Top layer of the graph (-1 when empty) and its entry node's label.
    int max_level() const;
    size_t entry_point() const;

    // Validates the graph structurally before trusting any of it: a crafted
    // file raises FileFormatError, never reads out of bounds.
    static std::unique_ptr<HnswIndex> load(const std::shared_ptr<const IndexFile>& file);

  protected:
    void add_impl(size_t n, const float* vectors) override;
    void check_adoptable(size_t rows) const override;
    void adopt_impl(const std::shared_ptr<RowBlock>& block, const int64_t* order) override;
    void search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                     const SearchParams& params) const override;
    void save_sections(FileWriter& writer) const override;
    void reconstruct_impl(size_t begin, size_t count, float* out) const override { store_.decode(begin, count, out); }
    void gather_labels(size_t n, const int64_t* labels, float* out) const override { store_.gather(n, labels, out); }

  private:
    struct ScratchPool;  // per-thread search buffers reused across calls (hnsw.cpp)
    template <class T>
    hnsw::GraphView<T> view() const;
    template <class Dist>
    void build(size_t first, size_t n, const Dist& dist);
    // add_impl and adopt_impl: the n new rows into the store (`store`), then into the graph;
    // a failure leaves the index as it was.
    void grow(size_t n, const std::function<void()>& store);
    template <class Dist>
    void search_graph(size_t nq, const float* queries, size_t k, size_t ef, int64_t* out_ids, float* out_distances,
                      const Dist& dist, int threads) const;
    void write_results(const hnsw::CandidatePool& pool, size_t found, std::vector<std::pair<float, int64_t>>& ranked,
                       int64_t* ids, float* dists) const;
    template <class Dist>
    void search_exact(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                      const Dist& dist, int threads) const;

    HnswParams params_;
    double level_mult_;  // 1 / ln(M): expected layer sizes shrink by M per layer

    VectorStore store_;
    Buffer<uint8_t> levels_;
    Buffer<uint32_t> links0_;
    Buffer<uint64_t> upper_offsets_;
    Buffer<uint32_t> upper_links_;
    size_t entry_point_ = 0;
    int max_level_ = -1;

    std::unique_ptr<ScratchPool> scratch_;
};

}  // namespace sparknn
