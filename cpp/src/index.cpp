// The Index base class: input validation, id bookkeeping and the save/load
// steps shared by every index kind (the kinds themselves: index_factory.cpp).
#include "sparknn/index.h"

#include <sched.h>
#include <unistd.h>
#if defined(__linux__)
#include <malloc.h>  // malloc_trim (glibc)
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <limits>
#include <thread>

#include "sparknn/error.h"
#include "sparknn/parallel.h"
#include "sparknn/row_block.h"
#include "sparknn/vector_store.h"

namespace sparknn {

int available_cores() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
}

double physical_memory_bytes() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

namespace {

// The next automatic id after `id`, saturating (a later add then needs explicit ids).
int64_t next_after(int64_t id) { return id == std::numeric_limits<int64_t>::max() ? id : id + 1; }

// Validates rows (finite; non-zero under cosine) and, for cosine, writes unit
// rows to `out` (null: checks only; `out` may be `x` itself). Names the first bad
// row so the user can find it.
void validate_rows(size_t n, size_t dim, const float* x, Metric metric, float* out, int threads,
                   const char* what) {
    const DistanceKernels& k = kernels();
    parallel_for(n, 4096, threads, [&](size_t begin, size_t end, int) {
        for (size_t i = begin; i < end; ++i) {
            const float* row = x + i * dim;
            // sum of squares is inf/nan iff some element is (or it overflows, which is also unusable)
            const float sq = k.dot(row, row, dim);
            if (!std::isfinite(sq)) {
                for (size_t j = 0; j < dim; ++j) {
                    SPARKNN_CHECK_ARG(std::isfinite(row[j]), what, " row ", i, " has a non-finite value (", row[j],
                                      ") at position ", j, ": remove or impute NaN/inf before indexing");
                }
                SPARKNN_CHECK_ARG(metric == Metric::Cosine, what, " row ", i,
                                  " is too large: its squared norm overflows float32");
            }
            if (metric == Metric::Cosine) {
                if (out == nullptr) {  // checks only: a zero row cannot be normalised
                    if (std::isfinite(sq) && sq >= std::numeric_limits<float>::min()) continue;
                    bool zero = true;
                    for (size_t j = 0; j < dim && zero; ++j) zero = row[j] == 0.0f;
                    SPARKNN_CHECK_ARG(!zero, what, " row ", i,
                                      " is all zeros: cosine distance is undefined for a zero vector");
                    continue;
                }
                float* dst = out + i * dim;  // may be row itself: each value is read before it is written
                if (std::isfinite(sq) && sq >= std::numeric_limits<float>::min()) {
                    const float inv = 1.0f / std::sqrt(sq);
                    for (size_t j = 0; j < dim; ++j) dst[j] = row[j] * inv;
                    continue;
                }
                // float32's squared norm overflowed (|values| ~1e19 and up) or underflowed (~1e-19 and
                // below, not "all zeros"): such a row still has a direction, found in double.
                double sq64 = 0.0;
                for (size_t j = 0; j < dim; ++j) sq64 += static_cast<double>(row[j]) * row[j];
                SPARKNN_CHECK_ARG(sq64 > 0.0, what, " row ", i,
                                  " is all zeros: cosine distance is undefined for a zero vector");
                const double inv = 1.0 / std::sqrt(sq64);
                for (size_t j = 0; j < dim; ++j) dst[j] = static_cast<float>(row[j] * inv);
            }
        }
    });
}

}  // namespace

Index::Index(size_t dim, Metric metric) : dim_(dim), metric_(metric) {
    SPARKNN_CHECK_ARG(dim > 0, "dim must be positive, got ", dim);
    SPARKNN_CHECK_ARG(dim <= (size_t{1} << 20), "dim ", dim, " is larger than the supported 1048576");
}

void Index::set_threads(int threads) {
    SPARKNN_CHECK_ARG(threads >= 0, "threads must be >= 0 (0 = all cores), got ", threads);
    auto lock = writing();
    threads_.store(threads, std::memory_order_relaxed);
}

int Index::call_threads(int requested) const {
    SPARKNN_CHECK_ARG(requested >= -1, "threads must be >= 0 (0 = all cores) or -1 (the index's setting), got ",
                      requested);
    return requested >= 0 ? requested : threads_.load(std::memory_order_relaxed);
}

std::shared_ptr<const void> Index::pin() const {
    std::shared_ptr<std::atomic<size_t>> pins = pins_;
    pins->fetch_add(1, std::memory_order_relaxed);
    // The deleter holds the counter, not the index: releasing a pin never touches the index.
    return std::shared_ptr<const void>(pins.get(), [pins](const void*) { pins->fetch_sub(1, std::memory_order_release); });
}

void Index::check_unpinned(const char* what) const {
    const size_t pins = pins_->load(std::memory_order_acquire);
    SPARKNN_CHECK_ARG(pins == 0, what, " would move this index's arrays, but ", pins,
                      " zero-copy view(s) of them are alive (Python: arrays from Index.ids, vectors or rows_in_list_order()): "
                      "delete them, or take copies (np.array(view)), before adding");
}

PinnedView<int64_t> Index::view_ids() const {
    auto lock = reading();
    return {ids_.data(), size(), 1, pin()};
}

PinnedView<float> Index::view_vectors() const {
    SPARKNN_THROW_IF_NOT(kind() != IndexKind::Ivf, Unsupported,
                         "an ivf index stores vectors per list (maybe compressed), not as one array: use reconstruct");
    SPARKNN_THROW_IF_NOT(storage() == Storage::Float32, Unsupported, "this index stores its vectors as ",
                         storage_name(storage()), ", not float32: use reconstruct (it decodes them)");
    auto lock = reading();
    return {size() ? vector_of(0) : nullptr, size(), dim_, pin()};
}

void Index::check_new_ids(size_t n, const int64_t* ids) {
    if (!id_set_built_) {
        id_set_.reserve(size() + n);
        for (size_t i = 0; i < size(); ++i) id_set_.insert(ids_[i]);
        id_set_built_ = true;
    }
    size_t inserted = 0;
    try {
        for (size_t i = 0; i < n; ++i) {
            SPARKNN_CHECK_ARG(ids[i] >= 0, "ids must be non-negative (-1 marks a missing neighbour); ids[", i,
                              "] = ", ids[i]);
            SPARKNN_CHECK_ARG(id_set_.insert(ids[i]).second, "duplicate id ", ids[i], " (ids[", i,
                              "]): every vector needs a distinct id");
            ++inserted;
        }
    } catch (...) {
        for (size_t i = 0; i < inserted; ++i) id_set_.erase(ids[i]);  // leave the index as it was
        throw;
    }
}

void Index::add(size_t n, const float* vectors, const int64_t* ids) {
    if (n == 0) return;
    auto lock = writing();
    check_unpinned("add");
    add_with(n, vectors, ids, [&](const float* stored) { add_impl(n, stored); });
}

void Index::shrink_to_fit() {
    auto lock = writing();
    check_unpinned("shrink_to_fit");
    ids_.shrink_to_fit();
    shrink_to_fit_impl();
#if defined(__GLIBC__)
    // glibc keeps freed heap memory for reuse; hand what is free back to the system.
    malloc_trim(0);
#endif
}

void Index::add_with(size_t n, const float* vectors, const int64_t* ids,
                     const std::function<void(const float*)>& store, float* in_place) {
    if (n == 0) return;
    SPARKNN_CHECK_ARG(vectors != nullptr, "vectors is null");
    AlignedVector<float> normalised;
    const float* stored = vectors;
    const bool normalise_in_place = metric_ == Metric::Cosine && in_place != nullptr;
    if (metric_ == Metric::Cosine && !normalise_in_place) {
        normalised.resize(n * dim_);
        validate_rows(n, dim_, vectors, metric_, normalised.data(), threads(), "vector");
        stored = normalised.data();
    } else {  // in place: every row and id is checked before the first row changes
        validate_rows(n, dim_, vectors, metric_, nullptr, threads(), "vector");
    }
    if (!normalise_in_place) check_storage_range(storage(), n, dim_, stored, "vector", threads());  // unit rows fit any

    std::vector<int64_t> generated;
    if (ids == nullptr) {
        SPARKNN_CHECK_ARG(n <= static_cast<size_t>(std::numeric_limits<int64_t>::max() - next_id_),
                          "automatic ids from ", next_id_, " on would overflow int64 for ", n,
                          " vectors: pass ids explicitly");
        generated.resize(n);
        for (size_t i = 0; i < n; ++i) generated[i] = next_id_ + static_cast<int64_t>(i);
        ids = generated.data();
    }
    check_new_ids(n, ids);
    try {
        if (normalise_in_place) validate_rows(n, dim_, vectors, metric_, in_place, threads(), "vector");
        store(stored);
    } catch (...) {
        for (size_t i = 0; i < n; ++i) id_set_.erase(ids[i]);
        throw;
    }
    AlignedVector<int64_t>& all = ids_.mutate();
    all.insert(all.end(), ids, ids + n);
    for (size_t i = 0; i < n; ++i) next_id_ = std::max(next_id_, next_after(ids[i]));
    count_.store(all.size(), std::memory_order_release);
}

const float* Index::prepare_queries(size_t nq, const float* queries, AlignedVector<float>& scratch,
                                    int threads, const char* what) const {
    if (const std::shared_ptr<const RowBlock> block = adopted_.lock(); block != nullptr && nq != 0) {
        // Whole rows of the adopted block are checked and normalised already (its memory is the
        // index's while the index holds it): a 500k x 768 cosine self-join copied and normalised
        // every row again. A pointer elsewhere in the block (not on a row's start) is checked.
        const auto at = reinterpret_cast<uintptr_t>(queries), begin = reinterpret_cast<uintptr_t>(block->data());
        const uintptr_t bytes = block->rows() * block->dim() * sizeof(float), row = dim_ * sizeof(float);
        if (block->dim() == dim_ && at >= begin && at - begin <= bytes && (at - begin) % row == 0 &&
            nq <= (bytes - (at - begin)) / row) {
            return queries;
        }
    }
    if (metric_ == Metric::Cosine) scratch.resize(nq * dim_);
    validate_rows(nq, dim_, queries, metric_, scratch.data(), threads, what);
    return metric_ == Metric::Cosine ? scratch.data() : queries;
}

void Index::search(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                   const SearchParams& params) const {
    SPARKNN_CHECK_ARG(k >= 1, "k must be >= 1, got ", k);
    SearchParams p = params;
    p.threads = call_threads(params.threads);
    if (nq == 0) return;
    SPARKNN_CHECK_ARG(queries != nullptr, "queries is null");
    auto lock = reading();
    AlignedVector<float> scratch;
    const float* q = prepare_queries(nq, queries, scratch, p.threads);
    if (size() == 0) {
        for (size_t i = 0; i < nq * k; ++i) {
            out_ids[i] = -1;
            out_distances[i] = std::numeric_limits<float>::infinity();
        }
        return;
    }
    search_impl(nq, q, k, out_ids, out_distances, p);
}

void Index::reconstruct(size_t begin, size_t count, float* out) const {
    auto lock = reading();
    SPARKNN_CHECK_ARG(begin <= size() && count <= size() - begin, "reconstruct: labels [", begin, ", ",
                      begin + count, ") outside [0, ", size(), ")");
    if (count == 0) return;
    reconstruct_impl(begin, count, out);
}

void Index::reconstruct_impl(size_t begin, size_t count, float* out) const {
    std::memcpy(out, vector_of(begin), count * dim_ * sizeof(float));
}

void Index::reconstruct_labels(size_t n, const int64_t* labels, float* out) const {
    auto lock = reading();
    for (size_t i = 0; i < n; ++i) {
        SPARKNN_CHECK_ARG(labels[i] >= 0 && static_cast<size_t>(labels[i]) < size(), "reconstruct: row ", i,
                          " asks for label ", labels[i], ", outside [0, ", size(), ")");
    }
    gather_labels(n, labels, out);
}

void Index::gather_labels(size_t n, const int64_t* labels, float* out) const {
    for (size_t i = 0; i < n; ++i) {
        std::memcpy(out + i * dim_, vector_of(static_cast<size_t>(labels[i])), dim_ * sizeof(float));
    }
}

void Index::save(const std::string& path, bool sync, const std::vector<SideFile>& side_files) const {
    auto lock = reading();
    FileHeader header;
    header.kind = kind();
    header.metric = metric_;
    header.dim = dim_;
    header.count = size();
    FileWriter writer(header);
    writer.add_section(SectionType::Ids, ids_.data(), ids_.size() * sizeof(int64_t));
    save_sections(writer);
    for (const SideFile& f : side_files) writer.add_side_file(f);
    writer.write(path, sync);
}

void Index::load_common(const std::shared_ptr<const IndexFile>& file) {
    const size_t count = file->header().count;
    const auto* ids = file->typed_section<int64_t>(SectionType::Ids, count);
    for (size_t i = 0; i < count; ++i) {
        if (ids[i] < 0) file->fail(detail::concat("id ", ids[i], " at position ", i, " is negative"));
        next_id_ = std::max(next_id_, next_after(ids[i]));
    }
    ids_.set_view(ids, count, file);
    count_.store(count, std::memory_order_release);
    side_files_ = file->side_files();
}

}  // namespace sparknn
