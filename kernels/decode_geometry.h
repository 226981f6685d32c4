// How a decode-attention CTA walks its chunks (decode_attention.cu): each pass has `slots`
// token slots; chunks shorter than a pass share it (chunks_per_pass chunks of slots_per_chunk
// slots), chunks as long as a pass or longer take sub-passes over one chunk (the kernel's
// pieces of at most 16 tokens always share: its passes have 32 or 64 slots). Host and device
// share these functions so that the mapping is tested on the CPU.
#pragma once

#include "kernels/host_device.h"

namespace spanserve::gpu {

// Chunks reach the decode kernel cut into pieces of at most PieceTokens(block size) tokens
// (engine/backends/cuda_step_plan.h's CutIntoPieces), so that a pass packs several pieces
// whatever the block size: the edge of a partly attended block of 64 or 128 tokens then idles
// less than a piece's worth of slots, not up to a whole pass's.
inline constexpr int kMaxPieceTokens = 16;
SPANSERVE_HOST_DEVICE inline int PieceTokens(int block_size) {
  return block_size < kMaxPieceTokens ? block_size : kMaxPieceTokens;
}

struct PassGeometry {
  int slots_per_chunk;  // L = min(piece length, slots)
  int chunks_per_pass;  // P = slots / L; slots [P * L, slots) stay idle

  SPANSERVE_HOST_DEVICE static PassGeometry For(int block_size, int slots) {
    const int per_chunk = block_size < slots ? block_size : slots;
    return {per_chunk, slots / per_chunk};
  }
  // Pass slot j reads chunk (first chunk of the pass) + SlotChunk(j), token
  // begin + sub * slots_per_chunk + SlotToken(j), when that token is before the chunk's end.
  SPANSERVE_HOST_DEVICE bool SlotUsed(int j) const { return j < chunks_per_pass * slots_per_chunk; }
  SPANSERVE_HOST_DEVICE int SlotChunk(int j) const { return j / slots_per_chunk; }
  SPANSERVE_HOST_DEVICE int SlotToken(int j) const { return j % slots_per_chunk; }
  // Sub-passes over one chunk of [begin, end): more than one only when a pass holds one chunk.
  SPANSERVE_HOST_DEVICE int SubPasses(int begin, int end) const {
    return chunks_per_pass == 1 ? (end - begin + slots_per_chunk - 1) / slots_per_chunk : 1;
  }
  // Moves a pass cursor (first chunk c0, sub-pass sub) to the next pass before c_end; start
  // from (first chunk, -1). With one chunk a pass, chunks without a token are skipped.
  // sub_passes(c) is SubPasses of chunk c. The walk is over once *c0 >= c_end.
  template <typename SubPassesOf>
  SPANSERVE_HOST_DEVICE void NextPass(int c_end, SubPassesOf sub_passes, int* c0, int* sub) const {
    if (chunks_per_pass > 1) {
      if (*sub >= 0) *c0 += chunks_per_pass;
      *sub = 0;
      return;
    }
    ++*sub;
    while (*c0 < c_end && *sub >= sub_passes(*c0)) {
      ++*c0;
      *sub = 0;
    }
  }
};

}  // namespace spanserve::gpu
