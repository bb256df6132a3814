#include "sparknn/vector_store.h"

#include <algorithm>
#include <cmath>
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
// |v| below this (2^-14, as bits) is an fp16 subnormal or zero: a fixed step of 2^-24, so
// the relative error grows as |v| shrinks (normal values: at most 2^-11 of |v|).
constexpr uint32_t kFp16Normal = 0x38800000u;
// The most fp16 rounding may change a row, relative to its norm, before adding refuses it.
constexpr double kFp16MaxLoss = 1e-2;

}  // namespace

VectorStore::VectorStore(size_t dim, Storage storage) : dim_(dim), storage_(storage) {
    SPARKNN_CHECK_ARG(is_row_storage(storage), "storage '", storage_name(storage),
                      "' compresses vectors per inverted list: only an ivf index keeps it; flat and hnsw keep "
                      "'float32', 'fp16' or 'bf16'");
}

void check_storage_range(Storage storage, size_t n, size_t dim, const float* x, const char* what, int threads) {
    if (!is_half_storage(storage)) return;
    const bool fp16 = storage == Storage::Float16;
    const uint32_t limit = fp16 ? kFp16Overflow : kBf16Overflow;
    // fp16 rounds a value below its normal range (2^-14) to a multiple of 2^-24, so each moves by
    // at most 2^-25 and a row by at most sqrt(dim) 2^-25: a row whose largest |value| is 100 times
    // that (8.3e-5 at dim 768, 3.1e-3 at 2^20) cannot lose 1%; only tinier rows are measured exactly.
    const double sure = std::sqrt(static_cast<double>(dim)) * 0x1p-25 / kFp16MaxLoss;
    parallel_for(n, 4096, threads, [&](size_t begin, size_t end, int) {
        for (size_t i = begin; i < end; ++i) {
            const float* row = x + i * dim;
            uint32_t top = 0;  // the largest |value|, as bits (a loop the compiler vectorises)
            for (size_t j = 0; j < dim; ++j) top = std::max(top, half::bits_of(row[j]) & 0x7FFFFFFFu);
            if (top >= limit) {
                size_t j = 0;
                while ((half::bits_of(row[j]) & 0x7FFFFFFFu) < limit) ++j;
                SPARKNN_CHECK_ARG(false, what, " row ", i, " has value ", row[j], " at position ", j,
                                  ", beyond what storage '", storage_name(storage), "' holds (",
                                  fp16 ? "|v| <= 65504" : "float32's range", "): scale the vectors, or use storage ",
                                  fp16 ? "'bf16' or 'float32'" : "'float32'");
            }
            if (!fp16 || half::float_of(top) >= sure) continue;
            // What rounding the values below 2^-14 costs the row, against its norm (in double:
            // a float32 square can underflow).
            double sq = 0.0, lost = 0.0;
            for (size_t j = 0; j < dim; ++j) {
                const float v = row[j];
                sq += static_cast<double>(v) * v;
                if ((half::bits_of(v) & 0x7FFFFFFFu) < kFp16Normal) {
                    const double e = static_cast<double>(v) - half::fp16_to_float(half::fp16_from_float(v));
                    lost += e * e;
                }
            }
            SPARKNN_CHECK_ARG(!(lost > kFp16MaxLoss * kFp16MaxLoss * sq), what, " row ", i,
                              " is too small for storage 'fp16' (largest |value| ", half::float_of(top),
                              "): fp16 keeps few digits below 6.1e-5 and none below 6e-8, so storing it would "
                              "move it by ",
                              100.0 * std::sqrt(lost / sq), "% of its norm (more than ", 100.0 * kFp16MaxLoss,
                              "%): scale the vectors up, or use storage 'bf16' or 'float32'");
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

void VectorStore::adopt(const std::shared_ptr<RowBlock>& block) {
    SPARKNN_CHECK_ARG(storage_ == Storage::Float32 && this->rows() == 0 && block->dim() == dim_,
                      "a store keeps a block's rows only when it is empty and float32, of the same dimension");
    f32_.set_view(block->data(), block->rows() * dim_, block);
}

void VectorStore::truncate(size_t rows) {
    if (rows == 0) {  // nothing kept: a view (an adopted block) is let go, not copied first
        f32_ = Buffer<float>();
        u16_ = Buffer<uint16_t>();
        return;
    }
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
