// HNSW sections in the index file, and the structural validation done before a
// loaded graph is trusted. Checksums catch accidents; these checks make a
// crafted file (valid checksums, hostile contents) fail cleanly instead of
// steering the search out of bounds: every size is checked against count, dim
// and M, every label against count, every degree against its capacity, every
// upper-layer neighbour against the layers it exists on.
#include <string>

#include "sparknn/error.h"
#include "sparknn/hnsw.h"
#include "sparknn/parallel.h"

namespace sparknn {
namespace {

[[noreturn]] void corrupt(const IndexFile& file, const std::string& what) {
    const std::string where = file.path().empty() ? "index image" : "'" + file.path() + "'";
    throw FileFormatError(where + " is not a valid sparknn hnsw index: " + what);
}

std::string str(uint64_t v) { return std::to_string(v); }

// Checks one link row ([degree, slots...]) of `node` at `level`.
void check_row(const IndexFile& file, const uint32_t* row, uint32_t capacity, uint64_t node, int level, uint64_t count,
               const uint8_t* levels) {
    const uint32_t deg = row[0];
    if (deg > capacity) {
        corrupt(file, "node " + str(node) + " has " + str(deg) + " links on layer " + str(level) + ", more than the " +
                          str(capacity) + " the layer allows");
    }
    for (uint32_t j = 0; j < deg; ++j) {
        const uint32_t e = row[1 + j];
        if (e >= count) {
            corrupt(file, "node " + str(node) + " links to node " + str(e) + " on layer " + str(level) +
                              ", but the index holds " + str(count) + " vectors");
        }
        if (levels[e] < level) {
            corrupt(file, "node " + str(node) + " links to node " + str(e) + " on layer " + str(level) +
                              ", which only reaches layer " + str(levels[e]));
        }
    }
}

}  // namespace

void HnswIndex::save_sections(FileWriter& writer) const {
    writer.add_param("M", params_.M);
    writer.add_param("ef_construction", params_.ef_construction);
    writer.add_param("ef_search", params_.ef_search);
    writer.add_param("seed", params_.seed);
    writer.add_param("entry_point", entry_point_);
    store_.save(writer);
    writer.add_section(SectionType::HnswLevels, levels_.data(), levels_.size());
    writer.add_section(SectionType::HnswLinks0, links0_.data(), links0_.size() * sizeof(uint32_t));
    writer.add_section(SectionType::HnswUpperOffsets, upper_offsets_.data(), upper_offsets_.size() * sizeof(uint64_t));
    writer.add_section(SectionType::HnswUpperLinks, upper_links_.data(), upper_links_.size() * sizeof(uint32_t));
}

std::unique_ptr<HnswIndex> HnswIndex::load(const std::shared_ptr<const IndexFile>& file) {
    const IndexFile& f = *file;
    const FileHeader& h = f.header();
    if (h.kind != IndexKind::Hnsw) corrupt(f, std::string("it holds a '") + kind_name(h.kind) + "' index");
    const uint64_t count = h.count;
    if (count > kHnswMaxCount) corrupt(f, "count " + str(count) + " exceeds the hnsw limit " + str(kHnswMaxCount));

    HnswParams params;
    params.M = f.param("M");
    params.ef_construction = f.param("ef_construction");
    params.ef_search = f.param("ef_search");
    params.seed = f.param("seed");
    try {
        params.validate();
    } catch (const InvalidArgument& e) {
        corrupt(f, std::string("bad parameters: ") + e.what());
    }
    auto index = std::make_unique<HnswIndex>(h.dim, h.metric, params, VectorStore::storage_in(f));
    index->load_common(file);

    const uint64_t M = params.M, stride0 = 1 + 2 * M, stride_up = 1 + M;
    index->store_.load(file, count);
    const auto* levels = f.typed_section<uint8_t>(SectionType::HnswLevels, count);
    const size_t links0_size = IndexFile::checked_mul(count, stride0);
    const auto* links0 = f.typed_section<uint32_t>(SectionType::HnswLinks0, links0_size);
    const auto* offsets = f.typed_section<uint64_t>(SectionType::HnswUpperOffsets, count + 1);

    // Levels, and upper offsets that follow from them exactly (monotone, in bounds).
    int max_level = -1;
    if (offsets[0] != 0) corrupt(f, "upper-layer offsets do not start at 0");
    for (uint64_t i = 0; i < count; ++i) {
        if (levels[i] > kHnswMaxLevel) {
            corrupt(f, "node " + str(i) + " has level " + str(levels[i]) + " (at most " + str(kHnswMaxLevel) + ")");
        }
        max_level = std::max<int>(max_level, levels[i]);
        // cannot overflow: count < 2^31, levels <= 32, stride_up <= 2049
        if (offsets[i + 1] != offsets[i] + levels[i] * stride_up) {
            corrupt(f, "upper-layer offset of node " + str(i + 1) + " does not match the levels");
        }
    }
    const size_t upper_size = static_cast<size_t>(offsets[count]);
    const auto* upper = f.typed_section<uint32_t>(SectionType::HnswUpperLinks, upper_size);

    // Links: every row of every layer (in parallel: it reads the whole graph once).
    parallel_for(count, 16384, 0, [&](size_t begin, size_t end, int) {
        for (size_t i = begin; i < end; ++i) {
            check_row(f, links0 + i * stride0, static_cast<uint32_t>(2 * M), i, 0, count, levels);
            for (int l = 1; l <= levels[i]; ++l) {
                check_row(f, upper + offsets[i] + (l - 1) * stride_up, static_cast<uint32_t>(M), i, l, count, levels);
            }
        }
    });

    const uint64_t entry = f.param("entry_point");
    if (count > 0 && (entry >= count || levels[entry] != max_level)) {
        corrupt(f, "entry point " + str(entry) + " is not a node on the top layer " + str(max_level));
    }

    index->levels_.set_view(levels, count, file);
    index->links0_.set_view(links0, links0_size, file);
    index->upper_offsets_.set_view(offsets, count + 1, file);
    index->upper_links_.set_view(upper, upper_size, file);
    index->entry_point_ = count > 0 ? static_cast<size_t>(entry) : 0;
    index->max_level_ = max_level;
    return index;
}

}  // namespace sparknn
