// Chooses the kernels once, from the CPU and SPARKNN_SIMD, and names metrics.
#include <atomic>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include "distance_kernels.h"
#include "sparknn/distance.h"
#include "sparknn/error.h"

namespace sparknn {
namespace {

#define SPARKNN_HALF_KERNELS(ns)                                                                          \
    HalfKernels{ns::l2sq_fp16,   ns::dot_fp16,     ns::decode_fp16,                                        \
                ns::encode_fp16, ns::l2sq_fp16_x4, ns::dot_fp16_x4},                                       \
        HalfKernels {                                                                                     \
        ns::l2sq_bf16, ns::dot_bf16, ns::decode_bf16, ns::encode_bf16, ns::l2sq_bf16_x4, ns::dot_bf16_x4 \
    }
const DistanceKernels kScalar{kernels_scalar::l2sq, kernels_scalar::dot, kernels_scalar::pq_scan,
                              kernels_scalar::l2sq_x4, kernels_scalar::dot_x4,
                              SPARKNN_HALF_KERNELS(kernels_scalar)};
#if defined(__x86_64__) || defined(_M_X64)
const DistanceKernels kAvx2{kernels_avx2::l2sq, kernels_avx2::dot, kernels_avx2::pq_scan,
                            kernels_avx2::l2sq_x4, kernels_avx2::dot_x4,
                            SPARKNN_HALF_KERNELS(kernels_avx2)};
const DistanceKernels kAvx512{kernels_avx512::l2sq, kernels_avx512::dot, kernels_avx512::pq_scan,
                              kernels_avx512::l2sq_x4, kernels_avx512::dot_x4,
                              SPARKNN_HALF_KERNELS(kernels_avx512)};
#endif
#if defined(__aarch64__)
const DistanceKernels kNeon{kernels_neon::l2sq, kernels_neon::dot, kernels_neon::pq_scan,
                            kernels_scalar::l2sq_x4, kernels_scalar::dot_x4,
                            SPARKNN_HALF_KERNELS(kernels_scalar)};
#endif
#undef SPARKNN_HALF_KERNELS

#if defined(__x86_64__) || defined(_M_X64)
// F16C (half conversions, used by the avx2 16-bit kernels) came before AVX2 on
// every x86 CPU; checked all the same. CPUID leaf 1, ECX bit 29 (clang has no
// __builtin_cpu_supports name for it).
bool has_f16c() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
}
#endif

SimdLevel detect_cpu() {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return SimdLevel::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c()) return SimdLevel::Avx2;
    return SimdLevel::Scalar;
#elif defined(__aarch64__)
    return SimdLevel::Neon;
#else
    return SimdLevel::Scalar;
#endif
}

SimdLevel level_from_env(SimdLevel cpu) {
    const char* env = std::getenv("SPARKNN_SIMD");
    if (env == nullptr || *env == '\0') return cpu;
    SimdLevel wanted = cpu;
    if (std::strcmp(env, "scalar") == 0) wanted = SimdLevel::Scalar;
    else if (std::strcmp(env, "neon") == 0) wanted = SimdLevel::Neon;
    else if (std::strcmp(env, "avx2") == 0) wanted = SimdLevel::Avx2;
    else if (std::strcmp(env, "avx512") == 0) wanted = SimdLevel::Avx512;
    // The override can only lower the level: asking for more than the CPU has
    // would crash with an illegal instruction.
    return static_cast<int>(wanted) < static_cast<int>(cpu) ? wanted : cpu;
}

std::atomic<const DistanceKernels*> g_active{nullptr};
std::atomic<int> g_level{-1};

void activate(SimdLevel level) {
    g_active.store(&kernels_for(level), std::memory_order_release);
    g_level.store(static_cast<int>(level), std::memory_order_release);
}

}  // namespace

SimdLevel cpu_simd_level() {
    static const SimdLevel level = detect_cpu();
    return level;
}

const DistanceKernels& kernels_for(SimdLevel level) {
    switch (level) {
#if defined(__x86_64__) || defined(_M_X64)
        case SimdLevel::Avx512:
            return kAvx512;
        case SimdLevel::Avx2:
            return kAvx2;
#endif
#if defined(__aarch64__)
        case SimdLevel::Neon:
            return kNeon;
#endif
        default:
            return kScalar;
    }
}

SimdLevel simd_level() {
    int level = g_level.load(std::memory_order_acquire);
    if (level < 0) {
        activate(level_from_env(cpu_simd_level()));
        level = g_level.load(std::memory_order_acquire);
    }
    return static_cast<SimdLevel>(level);
}

void set_simd_level(SimdLevel level) {
    const SimdLevel cpu = cpu_simd_level();
    const bool ok = level == SimdLevel::Scalar || level == cpu ||
                    (cpu == SimdLevel::Avx512 && level == SimdLevel::Avx2);
    SPARKNN_THROW_IF_NOT(ok, Unsupported, "SIMD level ", simd_level_name(level),
                         " is not supported by this CPU (best: ", simd_level_name(cpu), ")");
    activate(level);
}

const DistanceKernels& kernels() {
    const DistanceKernels* k = g_active.load(std::memory_order_acquire);
    if (k != nullptr) return *k;
    simd_level();
    return *g_active.load(std::memory_order_acquire);
}

const char* simd_level_name(SimdLevel level) {
    switch (level) {
        case SimdLevel::Scalar:
            return "scalar";
        case SimdLevel::Neon:
            return "neon";
        case SimdLevel::Avx2:
            return "avx2";
        case SimdLevel::Avx512:
            return "avx512";
    }
    return "unknown";
}

Metric metric_from_string(const std::string& name) {
    if (name == "l2" || name == "euclidean" || name == "sqeuclidean") return Metric::L2;
    if (name == "ip" || name == "inner_product" || name == "dot") return Metric::InnerProduct;
    if (name == "cosine" || name == "angular") return Metric::Cosine;
    throw InvalidArgument("unknown metric '" + name + "': use 'l2', 'ip' or 'cosine'");
}

const char* metric_name(Metric metric) {
    switch (metric) {
        case Metric::L2:
            return "l2";
        case Metric::InnerProduct:
            return "ip";
        case Metric::Cosine:
            return "cosine";
    }
    return "unknown";
}

}  // namespace sparknn
