#include "bench/dummy_model.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace spanserve {

absl::StatusOr<std::shared_ptr<const Model>> LoadDummyModel(
    const std::string& name, const std::string& config_json, DType dtype,
    const std::string& prompt_segmentation) {
  const char* env = std::getenv("SPANSERVE_SOURCE_DIR");
  const std::string source = env != nullptr ? env : SPANSERVE_SOURCE_DIR;
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / name;
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << config_json;
  std::ofstream(dir / "spanserve.json")
      << R"({"span_protocol": 1, "anchor_token": "<a>", "header_end_token": "</a>", )"
      << R"("prompt_segmentation": ")" << prompt_segmentation << R"(", "max_header_tokens": 32})";
  std::error_code ec;
  std::filesystem::copy_file(source + "/tests/data/tokenizer/tokenizer.model",
                             dir / "tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) return absl::NotFoundError("cannot copy the test tokenizer: " + ec.message());
  LoadOptions options;
  options.dummy = true;
  options.dummy_dtype = dtype;
  options.progress = [](int64_t done, int64_t total) {
    if (total > (int64_t{1} << 30)) {
      std::fprintf(stderr, "\rdummy weights %.1f / %.1f GB", done / 1e9, total / 1e9);
    }
  };
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir.string(), options);
  if (!model.ok()) return model.status();
  return std::shared_ptr<const Model>(std::move(*model));
}

}  // namespace spanserve
