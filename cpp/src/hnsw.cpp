// PLACEHOLDER being replaced by the HNSW implementation (not for commit).
#include "sparknn/hnsw.h"
#include "sparknn/error.h"
namespace sparknn {
struct HnswIndex::Graph {};
HnswParams HnswParams::from(const IndexOptions& o) { return {o.M, o.ef_construction, o.ef_search, o.seed}; }
void HnswParams::validate() const {}
HnswIndex::HnswIndex(size_t dim, Metric metric, const HnswParams&) : Index(dim, metric) { throw Unsupported("hnsw not yet"); }
HnswIndex::~HnswIndex() = default;
const float* HnswIndex::vector_of(size_t) const { return nullptr; }
const HnswParams& HnswIndex::params() const { static HnswParams p; return p; }
void HnswIndex::set_ef_search(size_t) {}
std::unique_ptr<HnswIndex> HnswIndex::load(const std::shared_ptr<const IndexFile>&) { throw Unsupported("hnsw not yet"); }
void HnswIndex::add_impl(size_t, const float*) {}
void HnswIndex::search_impl(size_t, const float*, size_t, int64_t*, float*, const SearchParams&) const {}
void HnswIndex::save_sections(FileWriter&) const {}
}
