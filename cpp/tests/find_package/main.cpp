// Builds a tiny exact index through the installed headers and library.
#include <sparknn/flat.h>

#include <cstdio>

int main() {
    sparknn::FlatIndex index(2, sparknn::Metric::L2);
    const float base[] = {0, 0, 3, 4};
    const int64_t ids[] = {10, 20};
    index.add(2, base, ids);
    const float query[] = {3, 3};
    int64_t out[1];
    float dist[1];
    index.search(1, query, 1, out, dist);
    std::printf("nearest id %lld at squared distance %.1f\n", static_cast<long long>(out[0]), dist[0]);
    return out[0] == 20 && dist[0] == 1.0f ? 0 : 1;
}
