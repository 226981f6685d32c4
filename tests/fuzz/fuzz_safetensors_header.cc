// libFuzzer: bytes as a safetensors file through ParseSafetensors (engine/model/safetensors.h).
// Every tensor it accepts must lie in the data region and hold numel * dtype size bytes; reading
// them all lets ASan check that.
#include "engine/model/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spanserve;
  using fuzz::Check;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(bytes, "fuzz.safetensors");
  if (!file.ok()) return 0;
  Check(file->data_bytes >= 0 && file->data_bytes <= static_cast<int64_t>(size) - 8,
        "data region larger than the file");
  const uint8_t* region = data + size - file->data_bytes;
  uint8_t sum = 0;
  for (const auto& [name, tensor] : file->tensors) {
    Check(name == tensor.name && name != "__metadata__", "tensor name");
    const int64_t nbytes = tensor.numel() * static_cast<int64_t>(DTypeSize(tensor.dtype));
    const uint8_t* begin = static_cast<const uint8_t*>(tensor.data);
    Check(begin >= region && nbytes >= 0 && begin + nbytes <= data + size,
          "tensor outside the data region");
    for (int64_t i = 0; i < nbytes; ++i) sum += begin[i];
  }
  volatile uint8_t keep = sum;  // the reads are the check
  (void)keep;
  return 0;
}
