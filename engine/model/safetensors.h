// A read-only, memory-mapped safetensors file (https://github.com/huggingface/safetensors):
// 8 bytes of little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
// then the data. Tensors are views into the mapping; nothing is copied.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/model/model.h"

namespace spanserve {

struct SafetensorsFile {
  std::string path;
  std::shared_ptr<const void> mapping;        // unmaps when its last owner lets go
  std::map<std::string, TensorView> tensors;  // by name; data points into the mapping
  int64_t data_bytes = 0;                     // size of the data region
};

// Maps the file and parses it (ParseSafetensors). Errors name the file (and the tensor).
absl::StatusOr<SafetensorsFile> OpenSafetensors(const std::string& path);

// Validates a whole safetensors file held in memory (`name` names it in errors): header length
// within the bytes, dtypes F32/F16/BF16, offsets inside the data region, each tensor's size ==
// numel * dtype size. "__metadata__" is skipped. The tensors point into `bytes`; no mapping is
// set.
absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes, const std::string& name);

// fp32 to fp16 / bf16 bit patterns, rounding to nearest even (for dummy weights and test files).
// Inline: the dummy fill calls them for every element of a 7B model.
inline uint16_t FloatToBf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x40);  // stays a NaN
  return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

inline uint16_t FloatToHalf(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = (bits >> 16) & 0x8000;
  const uint32_t abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;   // NaN
  if (abs >= 0x477ff000) return sign | 0x7c00;  // rounds past 65504: infinity
  if (abs < 0x38800000) {                       // below 2^-14: a subnormal half (or zero)
    const float scaled = std::bit_cast<float>(abs) * 16777216.0f;  // in units of 2^-24, exact
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  const uint32_t rounded = abs + 0xfff + ((abs >> 13) & 1);           // nearest even at bit 13
  return sign | static_cast<uint16_t>((rounded - 0x38000000) >> 13);  // exponent bias 127 -> 15
}

}  // namespace spanserve
