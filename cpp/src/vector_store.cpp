#include "sparknn/vector_store.h"

#include <cstring>
#include <string>

#include "half_convert.h"
#include "sparknn/error.h"
#include "sparknn/parallel.h"

namespace sparknn {
namespace {

// |v| at or above these (as bits of |v|) rounds to infinity in the storage.
constexpr uint32_t kFp16Overflow = 0x477FF000u;  // 65520
constexpr uint32_t kBf16Overflow = 0x7F7F8000u;  // about 3.3961e38

}  // namespace

VectorStore::VectorStore(size_t dim, Storage storage) : dim_(dim), storage_(storage) {
    SPARKNN_CHECK_ARG(is_row_storage(storage), "storage '", storage_name(storage),
                      "' compresses vectors per inverted list: only an ivf index keeps it; flat and hnsw keep "
                      "'float32', 'fp16' or 'bf16'");
}

void check_storage_range(Storage storage, size_t n, size_t dim, const float* x, const char* what, int threads) {
    if (!is_half_storage(storage)) return;
    const uint32_t limit = storage == Storage::Float16 ? kFp16Overflow : kBf16Overflow;
    parallel_for(n, 4096, threads, [&](size_t begin, size_t end, int) {
        for (size_t i = begin; i < end; ++i) {
            for (size_t j = 0; j < dim; ++j) {
                const float v = x[i * dim + j];
                SPARKNN_CHECK_ARG((half::bits_of(v) & 0x7FFFFFFFu) < limit, what, " row ", i, " has value ", v,
                                  " at position ", j, ", beyond what storage '", storage_name(storage),
                                  "' holds (", storage == Storage::Float16 ? "|v| <= 65504" : "float32's range",
                                  "): scale the vectors, or use storage ",
                                  storage == Storage::Float16 ? "'bf16' or 'float32'" : "'float32'");
            }
        }
    });
}

void VectorStore::append(size_t n, const float* x) {
    if (storage_ == Storage::Float32) {
        AlignedVector<float>& all = f32_.mutate();
        all.insert(all.end(), x, x + n * dim_);
        return;
    }
    AlignedVector<uint16_t>& all = u16_.mutate();
    const size_t old = all.size();
    all.resize(old + n * dim_);
    half_kernels(storage_).encode(x, n * dim_, all.data() + old);
}

void VectorStore::truncate(size_t rows) {
    if (storage_ == Storage::Float32) {
        f32_.mutate().resize(rows * dim_);
    } else {
        u16_.mutate().resize(rows * dim_);
    }
}

const float* VectorStore::rows(size_t begin, size_t count, float* scratch) const {
    if (storage_ == Storage::Float32) return f32_.data() + begin * dim_;
    half_kernels(storage_).decode(u16_.data() + begin * dim_, count * dim_, scratch);
    return scratch;
}

void VectorStore::decode(size_t begin, size_t count, float* out) const {
    if (storage_ == Storage::Float32) {
        std::memcpy(out, f32_.data() + begin * dim_, count * dim_ * sizeof(float));
    } else {
        half_kernels(storage_).decode(u16_.data() + begin * dim_, count * dim_, out);
    }
}

void VectorStore::gather(size_t n, const int64_t* labels, float* out) const {
    for (size_t i = 0; i < n; ++i) decode(static_cast<size_t>(labels[i]), 1, out + i * dim_);
}

void VectorStore::save(FileWriter& writer) const {
    writer.add_param("storage", static_cast<uint64_t>(storage_));
    if (storage_ == Storage::Float32) {
        writer.add_section(SectionType::Vectors, f32_.data(), f32_.size() * sizeof(float));
    } else {
        writer.add_section(SectionType::Vectors16, u16_.data(), u16_.size() * sizeof(uint16_t));
    }
}

Storage VectorStore::storage_in(const IndexFile& file) {
    const uint64_t value = file.param_or("storage", static_cast<uint64_t>(Storage::Float32));
    if (value > kMaxStorage || !is_row_storage(static_cast<Storage>(value))) {
        file.fail(std::string(kind_name(file.header().kind)) + ": storage " + std::to_string(value) +
                  " is not one this kind keeps (float32, fp16, bf16)");
    }
    return static_cast<Storage>(value);
}

void VectorStore::load(const std::shared_ptr<const IndexFile>& file, size_t count) {
    const size_t values = IndexFile::checked_mul(count, dim_);
    if (storage_ == Storage::Float32) {
        f32_.set_view(file->typed_section<float>(SectionType::Vectors, values), values, file);
    } else {
        u16_.set_view(file->typed_section<uint16_t>(SectionType::Vectors16, values), values, file);
    }
}

}  // namespace sparknn
