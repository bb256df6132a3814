// Graph index: Hierarchical Navigable Small World (Malkov & Yashunin, 2016).
//
// Layout (one array per concern, so a loaded file maps without copies):
//   vectors_     float [n, dim], 64-byte aligned rows
//   levels_      uint8 [n], top layer of each node
//   links0_      uint32 [n, 1 + M0]: degree, then up to M0 = 2M neighbours
//   upper_*      per node with level >= 1: for each level 1..L, degree + M slots
// Build is parallel (per-node locks); with threads = 1 and a fixed seed it is
// deterministic.
#pragma once

#include <cstdint>
#include <memory>

#include "sparknn/index.h"

namespace sparknn {

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
    HnswIndex(size_t dim, Metric metric, const HnswParams& params);
    ~HnswIndex() override;
    IndexKind kind() const override { return IndexKind::Hnsw; }
    const float* vector_of(size_t label) const override;

    const HnswParams& params() const;
    void set_ef_search(size_t ef);

    static std::unique_ptr<HnswIndex> load(const std::shared_ptr<const IndexFile>& file);

  protected:
    void add_impl(size_t n, const float* vectors) override;
    void search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                     const SearchParams& params) const override;
    void save_sections(FileWriter& writer) const override;

  private:
    struct Graph;  // defined in hnsw.cpp
    std::unique_ptr<Graph> graph_;
};

}  // namespace sparknn
