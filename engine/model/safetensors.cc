#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace spanserve {

static_assert(std::endian::native == std::endian::little, "safetensors is little-endian");

namespace {

using nlohmann::json;

// Maps the whole file read-only; the returned pointer unmaps when its last owner lets go.
absl::StatusOr<std::shared_ptr<const void>> MapFile(const std::string& path, int64_t* size) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": file not found"));
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open: ", strerror(errno)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  *size = st.st_size;
  if (st.st_size == 0) {  // mmap refuses empty files; the parser calls this one truncated
    close(fd);
    return std::shared_ptr<const void>();
  }
  void* base = mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  close(fd);  // the mapping stays valid without the descriptor
  if (base == MAP_FAILED) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": mmap failed: ", strerror(map_errno)));
  }
  const size_t length = st.st_size;
  return std::shared_ptr<const void>(
      base, [length](const void* p) { munmap(const_cast<void*>(p), length); });
}

bool ParseDType(const std::string& name, DType* dtype) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    if (name == DTypeName(d)) {
      *dtype = d;
      return true;
    }
  }
  return false;
}

// A JSON array of non-negative integers, each below 2^48 (no overflow in products of two).
bool ParseDims(const json& value, std::vector<int64_t>* dims) {
  if (!value.is_array()) return false;
  for (const json& item : value) {
    if (!item.is_number_unsigned() || item.get<uint64_t>() >= (uint64_t{1} << 48)) return false;
    dims->push_back(static_cast<int64_t>(item.get<uint64_t>()));
  }
  return true;
}

// One header entry: {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}.
absl::Status ParseTensor(const std::string& path, const std::string& name, const json& entry,
                         const uint8_t* data, int64_t data_bytes, TensorView* tensor) {
  const std::string where = absl::StrCat(path, ": tensor '", name, "'");
  if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": header entry has no dtype"));
  }
  const std::string dtype = entry["dtype"].get<std::string>();
  if (!ParseDType(dtype, &tensor->dtype)) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": dtype ", dtype, " is not supported (F32, F16, BF16 only)"));
  }
  std::vector<int64_t> offsets;
  if (!entry.contains("shape") || !ParseDims(entry["shape"], &tensor->shape) ||
      !entry.contains("data_offsets") || !ParseDims(entry["data_offsets"], &offsets) ||
      offsets.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": header entry needs a shape and two data_offsets"));
  }
  const int64_t begin = offsets[0], end = offsets[1];
  if (begin > end || end > data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": data_offsets [", begin, ", ", end,
                                                   "] are outside the data region of ", data_bytes,
                                                   " bytes (a truncated file?)"));
  }
  int64_t nbytes = DTypeSize(tensor->dtype);
  for (int64_t dim : tensor->shape) {
    if (__builtin_mul_overflow(nbytes, dim, &nbytes)) nbytes = -1;
    if (nbytes < 0) break;
  }
  if (nbytes != end - begin) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": shape [", absl::StrJoin(tensor->shape, ", "), "] of ", dtype,
                     " needs ", nbytes, " bytes, data_offsets give ", end - begin));
  }
  tensor->name = name;
  tensor->data = data + begin;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SafetensorsFile> OpenSafetensors(const std::string& path) {
  int64_t size = 0;
  absl::StatusOr<std::shared_ptr<const void>> mapping = MapFile(path, &size);
  if (!mapping.ok()) return mapping.status();
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(
      std::string_view(static_cast<const char*>(mapping->get()), size), path);
  if (file.ok()) file->mapping = *std::move(mapping);
  return file;
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes, const std::string& name) {
  const int64_t size = static_cast<int64_t>(bytes.size());
  if (size < 8) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": truncated: ", size,
                                                   " bytes, less than the 8-byte header length"));
  }
  const uint8_t* base = reinterpret_cast<const uint8_t*>(bytes.data());
  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);
  if (header_len > static_cast<uint64_t>(size - 8)) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": truncated or corrupt: header length ",
                                                   header_len, " is larger than the ", size - 8,
                                                   " bytes after it"));
  }
  const char* header_text = bytes.data() + 8;
  const json header = json::parse(header_text, header_text + header_len, nullptr,
                                  /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": the header is not a JSON object"));
  }

  SafetensorsFile file;
  file.path = name;
  file.data_bytes = size - 8 - static_cast<int64_t>(header_len);
  const uint8_t* data = base + 8 + header_len;
  for (const auto& item : header.items()) {
    if (item.key() == "__metadata__") continue;
    TensorView tensor;
    absl::Status status =
        ParseTensor(name, item.key(), item.value(), data, file.data_bytes, &tensor);
    if (!status.ok()) return status;
    file.tensors.emplace(item.key(), std::move(tensor));
  }
  return file;
}

}  // namespace spanserve
