// make_index and load_index: the one place that knows every index kind.
#include <memory>
#include <string>

#include "sparknn/error.h"
#include "sparknn/flat.h"
#include "sparknn/hnsw.h"
#include "sparknn/index.h"
#include "sparknn/ivf.h"

namespace sparknn {

std::unique_ptr<Index> make_index(IndexKind kind, size_t dim, Metric metric, const IndexOptions& options) {
    switch (kind) {
        case IndexKind::Flat:
            return std::make_unique<FlatIndex>(dim, metric, storage_from_string(options.storage));
        case IndexKind::Hnsw:
            return std::make_unique<HnswIndex>(dim, metric, HnswParams::from(options),
                                               storage_from_string(options.storage));
        case IndexKind::Ivf:
            return std::make_unique<IvfIndex>(dim, metric, IvfParams::from(options));
        default:
            throw Unsupported(std::string("index kind '") + kind_name(kind) + "' is not available in this build");
    }
}

std::unique_ptr<Index> load_index(const std::shared_ptr<const IndexFile>& file) {
    switch (file->header().kind) {
        case IndexKind::Flat:
            return FlatIndex::load(file);
        case IndexKind::Hnsw:
            return HnswIndex::load(file);
        case IndexKind::Ivf:
            return IvfIndex::load(file);
        default:
            throw Unsupported(std::string("index kind '") + kind_name(file->header().kind) +
                              "' is not available in this build");
    }
}

std::unique_ptr<Index> load_index(const std::string& path, bool mmap, bool verify_checksums) {
    return load_index(IndexFile::open(path, mmap, verify_checksums));
}

}  // namespace sparknn
