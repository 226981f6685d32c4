#include "bench/summ_workload.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

namespace spanserve::bench {
namespace {

const char* const kPeople[] = {"Ada Moss", "Ben Hale", "Cy Roe", "Dora Finch", "Eli Stone",
                               "Fay Quint", "Gus Hart", "Hana Lee"};
const char* const kOrgs[] = {"Birch Guild", "River Club", "Oak Circle", "Harbour Trust"};
const char* const kPlaces[] = {"Elmwood", "Northgate", "Millbrook", "Ashford", "Kelso"};
const char* const kMonths[] = {"March", "April", "June", "July", "October"};
const char* const kActs[] = {"planted %d young trees", "delivered %d food parcels",
                             "collected %d kilograms of litter", "built %d birdhouses"};

template <size_t N>
const char* Pick(const char* const (&names)[N], std::mt19937& rng) {
  return names[rng() % N];
}

int Number(std::mt19937& rng) { return 10 + static_cast<int>(rng() % 90); }

// A numbered fact or distractor sentence, like summ_data's: "(12) Ada Moss of the ... ."
std::string DocumentSentence(int index, std::mt19937& rng) {
  char act[64];
  std::snprintf(act, sizeof act, Pick(kActs, rng), Number(rng));
  return "(" + std::to_string(index) + ") " + Pick(kPeople, rng) + " of the " + Pick(kOrgs, rng) +
         " " + act + " in " + Pick(kPlaces, rng) + " on " + std::to_string(1 + rng() % 28) + " " +
         Pick(kMonths, rng) + ".";
}

// A summary sentence naming `sources` document sentences: who-did-what, a comparison or a total.
std::string SummarySentence(const std::vector<int>& sources, std::mt19937& rng) {
  std::string header = "<a>";
  for (size_t i = 0; i < sources.size(); ++i) header += (i ? "," : "") + std::to_string(sources[i]);
  header += "</a>";
  const int a = Number(rng), b = Number(rng), c = Number(rng);
  const std::string p = Pick(kPeople, rng), q = Pick(kPeople, rng), r = Pick(kPeople, rng);
  if (sources.size() == 1) {
    return header + p + " of the " + Pick(kOrgs, rng) + " planted " + std::to_string(a) +
           " young trees on " + std::to_string(1 + rng() % 28) + " " + Pick(kMonths, rng) + ".";
  }
  if (sources.size() == 2) {
    return header + p + " planted " + std::to_string(a) + " young trees and " + q + " planted " +
           std::to_string(b) + ", a difference of " + std::to_string(std::abs(a - b)) + ".";
  }
  return header + p + " planted " + std::to_string(a) + ", " + q + " " + std::to_string(b) +
         " and " + r + " " + std::to_string(c) + " young trees, " + std::to_string(a + b + c) +
         " in all.";
}

}  // namespace

std::vector<GenerateRequest> SummRequests(const Tokenizer& tokenizer,
                                          const SummWorkloadOptions& o, SpanMode mode) {
  std::mt19937 rng(o.seed);
  std::vector<GenerateRequest> requests(o.requests);
  for (GenerateRequest& request : requests) {
    const int32_t target = o.min_prompt_tokens +
        static_cast<int32_t>(rng() % (o.max_prompt_tokens - o.min_prompt_tokens + 1));
    int32_t tokens = 1;  // BOS
    while (tokens < target) {
      request.segments.push_back(DocumentSentence(static_cast<int>(request.segments.size()), rng));
      tokens += 1 + static_cast<int32_t>(tokenizer.Encode(request.segments.back()).size());
    }
    const int sentences = static_cast<int>(request.segments.size());
    std::string output;
    std::vector<int32_t> ids;
    while (static_cast<int32_t>(ids.size()) < o.output_tokens) {
      std::vector<int> sources(1 + rng() % std::min(3, sentences));
      for (int& s : sources) s = static_cast<int>(rng() % sentences);
      std::sort(sources.begin(), sources.end());
      sources.erase(std::unique(sources.begin(), sources.end()), sources.end());
      output += SummarySentence(sources, rng);
      ids = tokenizer.EncodeWithSpecialTokens(output);
    }
    request.forced_output = std::move(ids);
    request.max_tokens = static_cast<int32_t>(request.forced_output.size());
    request.span_mode = mode;
  }
  return requests;
}

}  // namespace spanserve::bench
