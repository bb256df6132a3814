// IVF sections in the index file (docs/FORMAT.md): the parameters, then for a
// trained index the centroids and the lists as CSR (offsets, labels, codes),
// the storage's own sections and the re-ranking copies. Load validates every
// size and label before the lists are used in place (mapped, not copied).
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gemm_scan.h"
#include "ivf_codec.h"
#include "sparknn/error.h"
#include "sparknn/ivf.h"

namespace sparknn {

void IvfIndex::save_sections(FileWriter& writer) const {
    // Lists are concatenated (CSR: offsets, labels, codes) so a loaded file is
    // used in place. The writer streams each list from where it lives: no
    // second copy of the index is built to save it.
    auto offsets = std::make_shared<std::vector<uint64_t>>(1, 0);
    std::vector<FileWriter::Part> labels, codes;
    for (const List& list : lists_) {
        offsets->push_back(offsets->back() + list.labels.size());
        if (list.labels.size() == 0) continue;
        labels.emplace_back(list.labels.data(), list.labels.size() * sizeof(int64_t));
        codes.emplace_back(list.codes.data(), list.codes.size());
    }
    // Trained: the lists in the file; untrained: the configured nlist (0 = automatic).
    writer.add_param("nlist", trained() ? lists_.size() : params_.nlist);
    writer.add_param("nprobe", params_.nprobe);
    writer.add_param("storage", static_cast<uint64_t>(params_.storage));
    writer.add_param("train_size", params_.train_size);
    writer.add_param("kmeans_iterations", params_.kmeans_iterations);
    writer.add_param("pq_m", params_.pq_m);
    writer.add_param("rerank", params_.rerank);
    writer.add_param("seed", params_.seed);
    writer.keep_alive(offsets);
    if (trained()) {
        writer.add_section(SectionType::IvfCentroids, centroid_data(), lists_.size() * dim_ * sizeof(float));
        writer.add_section(SectionType::IvfListOffsets, offsets->data(), offsets->size() * sizeof(uint64_t));
        writer.add_section_parts(SectionType::IvfLabels, std::move(labels));
        writer.add_section_parts(SectionType::IvfCodes, std::move(codes));
        codec_->save(writer);  // its own sections (sq8 ranges, pq code books)
        if (params_.keeps_float_copies()) {
            writer.add_section(SectionType::IvfRerankVectors, rerank_vectors_.data(),
                               rerank_vectors_.size() * sizeof(float));
        }
    }
    save_first_pass(writer);
}

void IvfIndex::save_first_pass(FileWriter& writer) const {
    // Written only when set: files of indexes without a first pass stay byte for byte as before.
    if (first_pass_setting_ == 0) return;
    writer.add_param("first_pass_dims", first_pass_setting_);
    std::lock_guard<std::mutex> guard(first_pass_mutex_);
    const FirstPass& first = first_pass_;
    if (!trained() || !first.fitted) return;  // fitted again on the loaded index's first search
    writer.add_param("first_pass_basis", first.dims);  // 0: declined
    uint64_t captured = 0;
    std::memcpy(&captured, &first.captured, sizeof captured);
    writer.add_param("first_pass_captured", captured);
    writer.add_param("first_pass_quantizer", quantizer_->projected_first_pass_dims() != 0 ? 1 : 0);
    if (first.dims == 0) return;
    auto basis = std::make_shared<std::vector<float>>(first.basis);  // first_pass_ may change before the write
    writer.keep_alive(basis);
    writer.add_section(SectionType::IvfFirstPassBasis, basis->data(), basis->size() * sizeof(float));
}

void IvfIndex::load_first_pass(const IndexFile& file) {
    auto fail = [&](const std::string& what) { file.fail("ivf: first pass: " + what); };
    const uint64_t setting = file.param_or("first_pass_dims", 0);
    if (setting == 0) return;
    if (params_.storage != Storage::Float32 || params_.rerank == 0 || (setting != kFirstPassAuto && setting >= dim_)) {
        fail("dims " + std::to_string(setting) + " out of range for this index");
    }
    first_pass_setting_ = setting;
    const uint64_t none = ~uint64_t{0};
    const uint64_t dims = file.param_or("first_pass_basis", none);
    if (!trained() || dims == none) return;
    if (dims >= dim_) fail("a basis of " + std::to_string(dims) + " rows for dim " + std::to_string(dim_));
    const uint64_t captured_bits = file.param_or("first_pass_captured", 0);
    double captured = 0.0;
    std::memcpy(&captured, &captured_bits, sizeof captured);
    if (!(captured >= 0.0 && captured <= 1.0)) fail("captured share out of [0, 1]");
    std::vector<float> basis;
    if (dims > 0) {
        const float* rows = file.typed_section<float>(SectionType::IvfFirstPassBasis, IndexFile::checked_mul(dims, dim_));
        basis.assign(rows, rows + dims * dim_);
        for (const float v : basis) {
            if (!std::isfinite(v)) fail("non-finite basis value");
        }
    }
    std::lock_guard<std::mutex> guard(first_pass_mutex_);
    use_first_pass_basis(dims, captured, std::move(basis));
    // Lower bounds prove exact answers (search_ladder_and_exact) only as far as the rows are
    // orthonormal (the slack allows for rounding): a basis far from that is not ours.
    if (!(first_pass_.excess <= kFirstPassMaxExcess)) fail("the basis is not orthonormal");
    if (file.param_or("first_pass_quantizer", 0) != 0 && dims > 0) {
        quantizer_->set_projected_first_pass(first_pass_.basis.data(), first_pass_.dims, kQuantizerProjectedExtra);
    }
}

std::unique_ptr<IvfIndex> IvfIndex::load(const std::shared_ptr<const IndexFile>& file) {
    const FileHeader& h = file->header();
    auto fail = [&](const std::string& what) { file->fail("ivf: " + what); };
    IvfParams p;
    p.nlist = file->param("nlist");
    p.nprobe = file->param("nprobe");
    const uint64_t storage = file->param("storage");
    if (storage > kMaxStorage) fail("unknown storage " + std::to_string(storage));
    p.storage = static_cast<Storage>(storage);
    p.train_size = file->param("train_size");
    p.kmeans_iterations = file->param("kmeans_iterations");
    p.pq_m = file->param("pq_m");
    p.rerank = file->param("rerank");
    p.seed = file->param("seed");
    if (p.nprobe == 0 || p.nlist > (size_t{1} << 22) || p.kmeans_iterations > 1000 || p.rerank > 1000 ||
        (p.rerank > 0 && is_half_storage(p.storage)) ||
        (p.storage == Storage::Pq && (p.pq_m == 0 || p.pq_m > h.dim || h.dim % p.pq_m != 0))) {
        fail("parameters out of range");
    }
    auto index = std::make_unique<IvfIndex>(h.dim, h.metric, p);
    index->load_common(file);
    // A trained index has centroids; an untrained one has neither centroids nor vectors.
    if (!file->has_section(SectionType::IvfCentroids)) {
        if (h.count != 0) fail("vectors without a trained quantizer");
        index->load_first_pass(*file);  // its setting
        return index;
    }
    if (p.nlist == 0) fail("a trained index with nlist = 0");
    const size_t nlist = p.nlist, dim = h.dim, n = h.count;
    const float* centroids = file->typed_section<float>(SectionType::IvfCentroids, IndexFile::checked_mul(nlist, dim));
    for (size_t i = 0; i < nlist * dim; ++i) {
        if (!std::isfinite(centroids[i])) fail("non-finite centroid value");
    }
    const uint64_t* offsets = file->typed_section<uint64_t>(SectionType::IvfListOffsets, nlist + 1);
    if (offsets[0] != 0 || offsets[nlist] != n) fail("list offsets do not cover the vectors");
    for (size_t l = 0; l < nlist; ++l) {
        if (offsets[l + 1] < offsets[l]) fail("list offsets are not increasing");
    }
    const int64_t* labels = file->typed_section<int64_t>(SectionType::IvfLabels, n);
    {
        std::vector<bool> seen(n, false);
        for (size_t i = 0; i < n; ++i) {
            if (labels[i] < 0 || static_cast<uint64_t>(labels[i]) >= n || seen[static_cast<size_t>(labels[i])]) {
                fail("list labels are out of range or repeated");
            }
            seen[static_cast<size_t>(labels[i])] = true;
        }
    }
    const size_t cs = index->codec_->code_size();
    const uint8_t* codes = file->section_exact(SectionType::IvfCodes, IndexFile::checked_mul(n, cs));
    index->codec_->load(*file);
    if (p.keeps_float_copies()) {
        const size_t values = IndexFile::checked_mul(n, dim);
        index->rerank_vectors_.set_view(file->typed_section<float>(SectionType::IvfRerankVectors, values), values,
                                        file);
    }
    std::unique_ptr<FlatIndex> quantizer;
    try {
        quantizer = index->make_quantizer(nlist, centroids);
    } catch (const InvalidArgument& e) {  // finite but unusable, e.g. a squared norm that overflows
        fail(std::string("invalid centroids: ") + e.what());
    }
    index->quantizer_ = std::move(quantizer);
    index->lists_.assign(nlist, List{});
    const bool keep_norms = index->codec_->keeps_norms();
    for (size_t l = 0; l < nlist; ++l) {
        List& list = index->lists_[l];
        const size_t b = offsets[l], count = offsets[l + 1] - offsets[l];
        list.labels.set_view(labels + b, count, file);
        list.codes.set_view(codes + b * cs, count * cs, file);
        if (keep_norms) {
            list.norms.resize(count);
            squared_norms(reinterpret_cast<const float*>(codes + b * cs), count, dim, list.norms.data());
        }
    }
    index->load_first_pass(*file);
    return index;
}

}  // namespace sparknn
