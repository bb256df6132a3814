// Product quantisation (Jégou, Douze & Schmid, 2011): a vector is split into
// m sub-vectors, each replaced by the index (8 bits) of its nearest of 256
// sub-centroids. Distances to a query are sums of m lookups in a [m, 256]
// table computed once per query (asymmetric distance computation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sparknn {

class ProductQuantizer {
  public:
    static constexpr size_t kCentroids = 256;

    ProductQuantizer() = default;
    // dim must be a multiple of m.
    ProductQuantizer(size_t dim, size_t m);

    size_t m() const { return m_; }
    size_t dsub() const { return dsub_; }
    size_t code_size() const { return m_; }
    bool trained() const { return !codebooks_.empty(); }

    // k-means per sub-space on n >= 256 rows [n, dim].
    void train(size_t n, const float* x, uint64_t seed, int threads, size_t iterations);
    // Codebooks [m, 256, dsub]; set_codebooks validates they are finite.
    const std::vector<float>& codebooks() const { return codebooks_; }
    void set_codebooks(const float* codebooks);

    void encode(const float* x, uint8_t* code) const;
    // The approximation of a code: out [dim] = the chosen centroid of each sub-space.
    void decode(const uint8_t* code, float* out) const;
    // table[j * 256 + c] = |x_j - centroid_jc|^2.
    void l2_table(const float* x, float* table) const;
    // table[j * 256 + c] = -(x_j . centroid_jc).
    void ip_table(const float* x, float* table) const;

  private:
    void prepare();  // transposed codebooks and norms for the table kernels

    size_t dim_ = 0, m_ = 0, dsub_ = 0;
    std::vector<float> codebooks_;   // [m, 256, dsub]
    std::vector<float> transposed_;  // [m, dsub, 256]: tables are computed 256 lanes wide
    std::vector<float> norms_;       // [m, 256]
};

}  // namespace sparknn
