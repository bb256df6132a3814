#include "sparknn/row_block.h"

#include <cstring>
#include <limits>
#include <new>

#include "sparknn/buffer.h"
#include "sparknn/error.h"
#include "sparknn/parallel.h"

namespace sparknn {

namespace {
constexpr std::align_val_t kRowBlockAlign{64};
}

void RowBlock::Free::operator()(float* p) const noexcept { ::operator delete(p, kRowBlockAlign); }

RowBlock::RowBlock(size_t rows, size_t dim) : rows_(rows), dim_(dim) {
    SPARKNN_CHECK_ARG(dim > 0, "a row block needs dim > 0");
    size_t values = 0;
    SPARKNN_CHECK_ARG(!__builtin_mul_overflow(rows, dim, &values) &&
                          values <= std::numeric_limits<std::ptrdiff_t>::max() / sizeof(float),
                      "a row block of ", rows, " x ", dim, " floats is too large to address");
    if (values == 0) return;
    const double memory = physical_memory_bytes();  // beyond it is refused before it is asked for
    SPARKNN_CHECK_ARG(memory == 0.0 || static_cast<double>(values) * sizeof(float) <= memory, "a row block of ", rows,
                      " x ", dim, " floats is more than this machine's ", memory / 1e9, " GB of memory");
    try {
        data_.reset(static_cast<float*>(::operator new(values * sizeof(float), kRowBlockAlign)));
    } catch (const std::bad_alloc&) {
        throw InvalidArgument(detail::concat("a row block of ", rows, " x ", dim, " floats (",
                                             static_cast<double>(values) * sizeof(float) / 1e9,
                                             " GB) could not be allocated"));
    }
}

void permute_rows(float* x, size_t n, size_t dim, const std::vector<size_t>& to) {
    std::vector<bool> done(n, false);
    AlignedVector<float> carry(dim), swap(dim);
    const size_t bytes = dim * sizeof(float);
    for (size_t i = 0; i < n; ++i) {
        if (done[i] || to[i] == i) continue;
        std::memcpy(carry.data(), x + i * dim, bytes);
        for (size_t j = to[i]; j != i; j = to[j]) {
            __builtin_prefetch(x + to[j] * dim);
            std::memcpy(swap.data(), x + j * dim, bytes);
            std::memcpy(x + j * dim, carry.data(), bytes);
            carry.swap(swap);
            done[j] = true;
        }
        std::memcpy(x + i * dim, carry.data(), bytes);
        done[i] = true;
    }
}

std::vector<size_t> rows_into_order(const int64_t* order, size_t n) {
    std::vector<size_t> to(n);
    for (size_t r = 0; r < n; ++r) to[static_cast<size_t>(order[r])] = r;
    return to;
}

}  // namespace sparknn
