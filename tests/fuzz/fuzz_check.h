// The fuzzers' one assertion: prints what broke and aborts, so libFuzzer keeps the input.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace spanserve::fuzz {

inline void Check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz check failed: %s\n", what);
  std::abort();
}

}  // namespace spanserve::fuzz
