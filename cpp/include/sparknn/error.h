// One exception hierarchy for the whole library. The Python bindings map each
// class to a Python exception (InvalidArgument -> ValueError, FileFormatError ->
// sparknn.IndexFileError, IoError -> OSError, Unsupported -> NotImplementedError).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace sparknn {

class Error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// A caller passed something the library cannot accept (shape, value, parameter).
class InvalidArgument : public Error {
  public:
    using Error::Error;
};

// A file exists and was read, but it is not a valid sparknn index file.
class FileFormatError : public Error {
  public:
    using Error::Error;
};

// The operating system refused a read, write, map or rename.
class IoError : public Error {
  public:
    using Error::Error;
};

// A valid request the build or this version does not support.
class Unsupported : public Error {
  public:
    using Error::Error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
    std::ostringstream out;
    (out << ... << args);
    return out.str();
}
}  // namespace detail

}  // namespace sparknn

// Throws ExcType with the streamed message parts when cond is false. The message
// is what a user reads, so it must say what to fix; the location is for us.
#define SPARKNN_THROW_IF_NOT(cond, ExcType, ...)                                  \
    do {                                                                          \
        if (!(cond)) {                                                            \
            throw ExcType(::sparknn::detail::concat(__VA_ARGS__));                \
        }                                                                         \
    } while (0)

#define SPARKNN_CHECK_ARG(cond, ...) \
    SPARKNN_THROW_IF_NOT(cond, ::sparknn::InvalidArgument, __VA_ARGS__)
