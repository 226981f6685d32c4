#include "engine/backends/cuda_step_plan.h"

#include <algorithm>
#include <cstring>

#include "kernels/decode_geometry.h"

namespace spanserve::gpu {
namespace {

constexpr size_t kAlign = 256;

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

template <typename T>
T* At(uint8_t* blob, size_t offset) {
  return reinterpret_cast<T*>(blob + offset);
}

// Calls fn(job) for each tile of consecutive causal rows of one sequence, in row order.
template <typename Fn>
void ForEachPrefillJob(const StepBatch& batch, int32_t tile_rows, Fn fn) {
  PrefillJob job{0, 0, 0, 0};
  for (int32_t r = 0; r < batch.num_rows(); ++r) {
    const AttentionRow& row = batch.rows[r];
    const bool extends = job.num_rows > 0 && job.num_rows < tile_rows &&
                         row.causal && batch.rows[r - 1].causal &&
                         batch.rows[r - 1].seq == row.seq;
    if (!extends && job.num_rows > 0) {
      fn(job);
      job.num_rows = 0;
    }
    if (!row.causal) continue;
    if (job.num_rows == 0) {
      job = {r, 0, batch.seqs[row.seq].table_begin, 0};
    }
    ++job.num_rows;
    job.max_position = std::max(job.max_position, batch.positions[r]);
  }
  if (job.num_rows > 0) fn(job);
}

// Prefill jobs by max_position, largest first (stable: row order among equals).
void OrderLongestFirst(PrefillJob* jobs, int32_t n) {
  std::stable_sort(jobs, jobs + n, [](const PrefillJob& a, const PrefillJob& b) {
    return a.max_position > b.max_position;
  });
}

int32_t SampledSeqs(const StepBatch& batch) {
  int32_t n = 0;
  for (const StepSequence& seq : batch.seqs) n += seq.sample;
  return n;
}

// Pieces of the decode rows' chunks.
int32_t DecodePieces(const StepBatch& batch, int32_t block_size) {
  const int32_t piece = PieceTokens(block_size);
  int32_t n = 0;
  for (const AttentionRow& row : batch.rows) {
    if (row.causal) continue;
    for (int32_t c = row.chunk_begin; c < row.chunk_end; ++c) {
      const int32_t tokens = batch.chunks[c].end - batch.chunks[c].begin;
      n += tokens <= piece ? 1 : (tokens + piece - 1) / piece;  // most are a piece: no divide
    }
  }
  return n;
}

// A chunk as the kernel's entry: its token range packed in one word.
ChunkEntry ToEntry(const KvChunk& c) { return {c.block, c.begin | (c.end << 16)}; }

// Copies the chunks to `out` as entries; returns false (the copy then does not count) unless
// CutIntoPieces would return them unchanged: each non-empty and at most a piece long.
bool CopyIfAllPieces(std::span<const KvChunk> chunks, int32_t block_size, ChunkEntry* out) {
  const uint32_t piece = static_cast<uint32_t>(PieceTokens(block_size));
  bool pieces = true;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const KvChunk& c = chunks[i];
    // 1 <= end - begin <= piece, as one unsigned compare; no branch in the loop
    pieces &= static_cast<uint32_t>(c.end - c.begin) - 1u < piece;
    out[i] = ToEntry(c);
  }
  return pieces;
}

}  // namespace

bool PlanCapacity::Covers(const PlanCapacity& need) const {
  return rows >= need.rows && logit_rows >= need.logit_rows &&
         table_entries >= need.table_entries && chunks >= need.chunks &&
         row_splits >= need.row_splits && prefill_jobs >= need.prefill_jobs;
}

PlanCapacity PlanCapacity::Max(const PlanCapacity& o) const {
  return {std::max(rows, o.rows),           std::max(logit_rows, o.logit_rows),
          std::max(table_entries, o.table_entries), std::max(chunks, o.chunks),
          std::max(row_splits, o.row_splits), std::max(prefill_jobs, o.prefill_jobs)};
}

PlanLayout PlanLayout::For(const PlanCapacity& cap) {
  PlanLayout layout;
  size_t offset = 0;
  auto take = [&](size_t* field, size_t bytes) {
    *field = offset;
    offset += AlignUp(bytes);
  };
  const size_t rows = std::max(cap.rows, 1);
  take(&layout.token_ids, rows * sizeof(int32_t));
  take(&layout.positions, rows * sizeof(int32_t));
  take(&layout.kv_block, rows * sizeof(int32_t));
  take(&layout.kv_offset, rows * sizeof(int32_t));
  take(&layout.split_heads, (size_t{1} + cap.row_splits) * sizeof(SplitHead));
  take(&layout.prefill_jobs, (size_t{1} + cap.prefill_jobs) * sizeof(PrefillJob));
  take(&layout.logit_rows, (size_t{1} + cap.logit_rows) * sizeof(int32_t));
  take(&layout.samples, (size_t{1} + cap.logit_rows) * sizeof(SampleEntry));
  take(&layout.block_tables, (size_t{1} + cap.table_entries) * sizeof(int32_t));
  take(&layout.chunks, (size_t{1} + cap.chunks) * sizeof(ChunkEntry));
  layout.total = offset;
  return layout;
}

bool IsDecodeStep(const StepBatch& batch) {
  if (batch.rows.size() != batch.seqs.size() || batch.logits_mode == LogitsMode::kAllRows) {
    return false;
  }
  for (int32_t s = 0; s < static_cast<int32_t>(batch.seqs.size()); ++s) {
    const StepSequence& seq = batch.seqs[s];
    if (seq.row_begin != s || seq.num_rows != 1 || batch.rows[s].causal) return false;
  }
  return true;
}

int32_t DecodeRows(const StepBatch& batch, int32_t pad_rows) {
  int32_t n = 0;
  for (const AttentionRow& row : batch.rows) n += !row.causal;
  return std::max(n, pad_rows);
}

void CutIntoPieces(std::span<const KvChunk> chunks, int32_t block_size,
                   std::vector<KvChunk>* pieces) {
  const int32_t piece = PieceTokens(block_size);
  for (const KvChunk& c : chunks) {
    int32_t begin = c.begin;
    do {  // an empty chunk stays one empty piece
      const int32_t end = std::min(c.end, begin + piece);
      pieces->push_back({c.block, begin, end});
      begin = end;
    } while (begin < c.end);
  }
}

void SplitChunks(std::span<const KvChunk> chunks, int32_t max_splits, int32_t min_split_tokens,
                 int32_t base, int32_t* bounds, int32_t lead_percent) {
  const int32_t n = static_cast<int32_t>(chunks.size());
  auto cost = [](const KvChunk& c) { return int64_t{c.end - c.begin + kChunkCost}; };
  int64_t total = 0;
  for (const KvChunk& c : chunks) total += cost(c);
  if (lead_percent > 0 && max_splits > 1) {
    int32_t k = 0;
    int64_t lead = 0;
    while (k < n && lead * 100 < total * lead_percent) lead += cost(chunks[k++]);
    if (total - lead < std::max(min_split_tokens, 1)) k = n;  // too little to share out
    bounds[0] = base;
    SplitChunks(chunks.subspan(k), max_splits - 1, min_split_tokens, base + k, bounds + 1);
    return;
  }
  const int64_t wanted = (total + std::max(min_split_tokens, 1) - 1) / std::max(min_split_tokens, 1);
  const int32_t used = static_cast<int32_t>(std::clamp<int64_t>(wanted, 1, max_splits));
  // Split s starts at the first chunk whose preceding cost reaches s/used of the total.
  int32_t k = 0;
  int64_t before = 0;  // cost of chunks [0, k)
  bounds[0] = base;
  for (int32_t s = 1; s < used; ++s) {
    const int64_t target = (total * s + used - 1) / used;
    while (k < n && before < target) before += cost(chunks[k++]);
    bounds[s] = base + k;
  }
  for (int32_t s = used; s <= max_splits; ++s) bounds[s] = base + n;
}

PlanCapacity NeededCapacity(const StepBatch& batch, const PlanOptions& options) {
  PlanCapacity need;
  const bool padded = options.pad_rows > 0;
  need.rows = std::max(batch.num_rows(), options.pad_rows);
  need.logit_rows = padded ? need.rows : SampledSeqs(batch);
  need.table_entries = static_cast<int32_t>(batch.block_tables.size());
  need.chunks = DecodePieces(batch, options.block_size);
  need.row_splits = DecodeRows(batch, options.pad_rows) * options.num_splits;
  ForEachPrefillJob(batch, options.prefill_tile_rows, [&](const PrefillJob&) { ++need.prefill_jobs; });
  return need;
}

StepPlan BuildStepPlan(const StepBatch& batch, const PlanOptions& options,
                       const PlanLayout& layout, uint8_t* blob) {
  const int32_t n = batch.num_rows(), B = options.block_size, S = options.num_splits;
  const int32_t num_seqs = static_cast<int32_t>(batch.seqs.size());
  const bool padded = options.pad_rows > 0;
  StepPlan plan;
  plan.rows = std::max(n, options.pad_rows);
  plan.num_splits = S;
  plan.split_major = options.lead_percent > 0;
  plan.table_entries = static_cast<int32_t>(batch.block_tables.size());

  int32_t* tokens = At<int32_t>(blob, layout.token_ids);
  int32_t* positions = At<int32_t>(blob, layout.positions);
  int32_t* kv_block = At<int32_t>(blob, layout.kv_block);
  int32_t* kv_offset = At<int32_t>(blob, layout.kv_offset);
  for (int32_t r = 0; r < plan.rows; ++r) {
    if (r < n) {
      const StepSequence& seq = batch.seqs[batch.rows[r].seq];
      const int32_t pos = batch.positions[r];
      tokens[r] = batch.token_ids[r];
      positions[r] = pos;
      kv_block[r] = batch.block_tables[seq.table_begin + pos / B];
      kv_offset[r] = pos % B;
    } else {  // padding: a valid token that writes into the scratch block
      tokens[r] = 0;
      positions[r] = 0;
      kv_block[r] = options.scratch_block;
      kv_offset[r] = 0;
    }
  }
  if (!batch.block_tables.empty()) {
    std::memcpy(blob + layout.block_tables, batch.block_tables.data(),
                batch.block_tables.size() * sizeof(int32_t));
  }

  // Decode rows: each non-causal row's chunks, cut into pieces, copied in row order and
  // grouped into splits.
  SplitHead* heads = At<SplitHead>(blob, layout.split_heads);
  ChunkEntry* chunks = At<ChunkEntry>(blob, layout.chunks);
  std::vector<KvChunk> pieces;
  std::vector<int32_t> bounds(S + 1);
  const WrittenBlockSet written({kv_block, static_cast<size_t>(plan.rows)});
  for (int32_t r = 0; r < plan.rows; ++r) {
    const bool real = r < n;
    if (real && batch.rows[r].causal) continue;
    std::span<const KvChunk> cut;
    if (real) {
      const AttentionRow& row = batch.rows[r];
      cut = {batch.chunks.data() + row.chunk_begin,
             static_cast<size_t>(row.chunk_end - row.chunk_begin)};
      // Dense rows and blocks of up to a piece come as pieces already: copied as they are.
      if (!CopyIfAllPieces(cut, B, chunks + plan.chunks)) {
        pieces.clear();
        CutIntoPieces(cut, B, &pieces);
        cut = pieces;
        std::transform(cut.begin(), cut.end(), chunks + plan.chunks, ToEntry);
      }
    }
    SplitChunks(cut, S, options.min_split_tokens, plan.chunks, bounds.data(),
                options.lead_percent);
    plan.chunks += static_cast<int32_t>(cut.size());
    FillSplitHeads(bounds.data(), S, chunks, r, written, heads + int64_t{plan.decode_rows} * S);
    ++plan.decode_rows;
  }

  PrefillJob* jobs = At<PrefillJob>(blob, layout.prefill_jobs);
  ForEachPrefillJob(batch, options.prefill_tile_rows,
                    [&](const PrefillJob& job) { jobs[plan.prefill_jobs++] = job; });
  if (options.prefill_longest_first) OrderLongestFirst(jobs, plan.prefill_jobs);

  // Logits rows: every row when padded (row s is sequence s), else the sampled sequences' last rows.
  int32_t* logit_rows = At<int32_t>(blob, layout.logit_rows);
  SampleEntry* samples = At<SampleEntry>(blob, layout.samples);
  plan.seq_logit_row.assign(num_seqs, -1);
  if (padded) {
    for (int32_t r = 0; r < plan.rows; ++r) {
      logit_rows[r] = r;
      samples[r] = SampleEntry{0.0f, 0, 1.0f, 0, 0, 0};
    }
    plan.logit_rows = plan.rows;
  }
  for (int32_t s = 0; s < num_seqs; ++s) {
    const StepSequence& seq = batch.seqs[s];
    if (!seq.sample) continue;
    const int32_t i = padded ? s : plan.logit_rows++;
    logit_rows[i] = seq.row_begin + seq.num_rows - 1;
    samples[i] = SampleEntry{seq.sampling.temperature, seq.sampling.top_k, seq.sampling.top_p,
                             seq.forced_token < 0, seq.sampling.seed, seq.sample_index};
    plan.seq_logit_row[s] = i;
  }
  return plan;
}

}  // namespace spanserve::gpu
