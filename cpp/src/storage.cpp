// Storage names, as options take them and files and params report them.
#include "sparknn/storage.h"

#include "sparknn/error.h"

namespace sparknn {
namespace {

struct StorageName {
    const char* name;
    Storage storage;
};
// The first name of each storage is the one params and files report; the later ones are aliases.
constexpr StorageName kStorageNames[] = {
    {"float32", Storage::Float32}, {"sq8", Storage::Sq8},        {"pq", Storage::Pq},
    {"fp16", Storage::Float16},    {"bf16", Storage::BFloat16},  {"flat", Storage::Float32},
    {"float", Storage::Float32},   {"float16", Storage::Float16}, {"half", Storage::Float16},
    {"bfloat16", Storage::BFloat16}};

}  // namespace

Storage storage_from_string(const std::string& name) {
    for (const auto& entry : kStorageNames) {
        if (name == entry.name) return entry.storage;
    }
    throw InvalidArgument("unknown storage '" + name + "': use 'float32', 'fp16', 'bf16', 'sq8' or 'pq'");
}

const char* storage_name(Storage storage) {
    for (const auto& entry : kStorageNames) {
        if (entry.storage == storage) return entry.name;
    }
    return "float32";
}

}  // namespace sparknn
