// The entry point of libspanserve_sentencepiece.so, the module that holds engine/tokenizer_sp.cc
// and libsentencepiece apart from gRPC's libprotobuf (see sentencepiece_loader.cc).
#include <string>

#include "engine/tokenizer.h"

extern "C" __attribute__((visibility("default"))) spanserve::Tokenizer*
spanserve_load_sentencepiece(const char* path, std::string* error) {
  return spanserve::LoadSentencePieceTokenizer(path, error).release();
}
