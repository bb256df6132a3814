#include "sparknn/pq.h"

#include <algorithm>
#include <cmath>

#include "sparknn/error.h"
#include "sparknn/kmeans.h"
#include "sparknn/parallel.h"

namespace sparknn {

ProductQuantizer::ProductQuantizer(size_t dim, size_t m) : dim_(dim), m_(m), dsub_(m ? dim / m : 0) {
    SPARKNN_CHECK_ARG(m >= 1 && m <= dim && dim % m == 0, "pq_m=", m, " must divide dim=", dim,
                      " (each of the pq_m sub-vectors has dim/pq_m values)");
}

void ProductQuantizer::train(size_t n, const float* x, uint64_t seed, int threads, size_t iterations) {
    SPARKNN_CHECK_ARG(n >= kCentroids, "product quantisation needs at least ", kCentroids,
                      " training vectors, got ", n);
    std::vector<float> codebooks(m_ * kCentroids * dsub_);
    std::vector<float> sub(n * dsub_);
    for (size_t j = 0; j < m_; ++j) {
        for (size_t i = 0; i < n; ++i) std::copy_n(x + i * dim_ + j * dsub_, dsub_, sub.begin() + i * dsub_);
        KMeansParams kp;
        kp.iterations = iterations;
        kp.seed = seed + j;
        kp.threads = threads;
        const KMeansResult km = kmeans(sub.data(), n, dsub_, kCentroids, kp);
        std::copy(km.centroids.begin(), km.centroids.end(), codebooks.begin() + j * kCentroids * dsub_);
    }
    codebooks_ = std::move(codebooks);
    prepare();
}

void ProductQuantizer::set_codebooks(const float* codebooks) {
    const size_t count = m_ * kCentroids * dsub_;
    for (size_t i = 0; i < count; ++i) {
        SPARKNN_THROW_IF_NOT(std::isfinite(codebooks[i]), FileFormatError, "non-finite PQ codebook value");
    }
    codebooks_.assign(codebooks, codebooks + count);
    prepare();
}

void ProductQuantizer::prepare() {
    transposed_.assign(m_ * dsub_ * kCentroids, 0.0f);
    norms_.assign(m_ * kCentroids, 0.0f);
    for (size_t j = 0; j < m_; ++j) {
        for (size_t c = 0; c < kCentroids; ++c) {
            const float* cb = codebooks_.data() + (j * kCentroids + c) * dsub_;
            for (size_t t = 0; t < dsub_; ++t) {
                transposed_[(j * dsub_ + t) * kCentroids + c] = cb[t];
                norms_[j * kCentroids + c] += cb[t] * cb[t];
            }
        }
    }
}

void ProductQuantizer::ip_table(const float* x, float* table) const {
    for (size_t j = 0; j < m_; ++j) {
        float* row = table + j * kCentroids;
        std::fill_n(row, kCentroids, 0.0f);
        for (size_t t = 0; t < dsub_; ++t) {
            const float v = -x[j * dsub_ + t];
            const float* cbt = transposed_.data() + (j * dsub_ + t) * kCentroids;
            for (size_t c = 0; c < kCentroids; ++c) row[c] += v * cbt[c];  // 256 lanes: vectorises
        }
    }
}

void ProductQuantizer::l2_table(const float* x, float* table) const {
    // |x_j - c|^2 = |x_j|^2 + |c|^2 - 2 x_j . c
    ip_table(x, table);
    for (size_t j = 0; j < m_; ++j) {
        float xn = 0;
        for (size_t t = 0; t < dsub_; ++t) xn += x[j * dsub_ + t] * x[j * dsub_ + t];
        float* row = table + j * kCentroids;
        const float* cn = norms_.data() + j * kCentroids;
        for (size_t c = 0; c < kCentroids; ++c) row[c] = std::max(xn + cn[c] + 2.0f * row[c], 0.0f);
    }
}

void ProductQuantizer::encode(const float* x, uint8_t* code) const {
    float row[kCentroids];  // one sub-space at a time: the scores stay on the stack for any m
    for (size_t j = 0; j < m_; ++j) {
        std::fill_n(row, kCentroids, 0.0f);
        for (size_t t = 0; t < dsub_; ++t) {
            const float v = x[j * dsub_ + t];
            const float* cbt = transposed_.data() + (j * dsub_ + t) * kCentroids;
            for (size_t c = 0; c < kCentroids; ++c) row[c] += v * cbt[c];
        }
        const float* cn = norms_.data() + j * kCentroids;
        size_t best = 0;
        float best_d = cn[0] - 2.0f * row[0];
        for (size_t c = 1; c < kCentroids; ++c) {
            const float d = cn[c] - 2.0f * row[c];
            if (d < best_d) {
                best_d = d;
                best = c;
            }
        }
        code[j] = static_cast<uint8_t>(best);
    }
}

void ProductQuantizer::decode(const uint8_t* code, float* out) const {
    for (size_t j = 0; j < m_; ++j) {
        const float* c = codebooks_.data() + (j * kCentroids + code[j]) * dsub_;
        std::copy(c, c + dsub_, out + j * dsub_);
    }
}

}  // namespace sparknn
