// IVF 16-bit storage (fp16, bf16): each value rounded to nearest even, half
// the bytes of float32; a list is widened block by block into the sgemm scan,
// so distances are exact on the stored values. Squared norms (L2) are those
// of the widened rows, computed per block as sq8 does.
#include "gemm_scan.h"
#include "ivf_codec.h"
#include "sparknn/vector_store.h"

namespace sparknn {
namespace {

class HalfCodec final : public BlockCodec {
  public:
    HalfCodec(size_t dim, Metric metric, Storage storage) : BlockCodec(dim, metric), storage_(storage) {}
    size_t code_size() const override { return dim_ * sizeof(uint16_t); }
    bool needs_scratch() const override { return true; }

    void encode(const float* x, const float*, uint8_t* code) const override {
        half().encode(x, dim_, reinterpret_cast<uint16_t*>(code));
    }
    void decode(const uint8_t* code, const float*, float* out) const override {
        half().decode(reinterpret_cast<const uint16_t*>(code), dim_, out);
    }
    const float* rows(const IvfListView& list, size_t begin, size_t count, float* scratch, const float** norms,
                      float* norm_scratch) const override {
        half().decode(reinterpret_cast<const uint16_t*>(list.codes) + begin * dim_, count * dim_, scratch);
        if (metric_ == Metric::L2) {
            squared_norms(scratch, count, dim_, norm_scratch);
            *norms = norm_scratch;
        } else {
            *norms = nullptr;
        }
        return scratch;
    }

  private:
    const HalfKernels& half() const { return half_kernels(storage_); }

    Storage storage_;
};

}  // namespace

std::unique_ptr<IvfCodec> make_half_codec(size_t dim, Metric metric, Storage storage) {
    return std::make_unique<HalfCodec>(dim, metric, storage);
}

}  // namespace sparknn
