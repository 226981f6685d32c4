// libFuzzer: bytes as config.json through ParseModelConfigJson (engine/model/model_config.h).
// A config it accepts must have the sizes the loader and the backends rely on.
#include "engine/model/model_config.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spanserve;
  using fuzz::Check;  // each message: what an accepted config has
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<ModelConfig> config = ParseModelConfigJson(text, "config.json");
  if (!config.ok()) return 0;
  const ModelConfig& c = *config;
  Check(c.hidden_size > 0 && c.intermediate_size > 0 && c.num_layers > 0, "a size below 1");
  Check(c.num_heads > 0 && c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0,
        "kv heads not dividing the heads");
  Check(c.head_dim > 0 && c.head_dim % 2 == 0, "an odd or empty head_dim");
  Check(c.vocab_size > 0 && c.max_position_embeddings > 0, "an empty vocabulary or context");
  Check(c.rms_norm_eps > 0 && c.rope_theta > 0, "a non-positive eps or rope theta");
  Check(c.bos_token_id >= 0 && c.bos_token_id < c.vocab_size, "bos outside the vocabulary");
  Check(!c.eos_token_ids.empty(), "no eos");
  for (int32_t eos : c.eos_token_ids) Check(eos >= 0 && eos < c.vocab_size, "eos outside");
  return 0;
}
