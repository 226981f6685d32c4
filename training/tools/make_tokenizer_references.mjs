// Reference data for engine/model/tokenizer_hf.cc (issue 20): tokenizer.json files of the kinds
// LLaMA-family checkpoints ship, and for each the ids and decoded text of a varied text set, as
// the Hugging Face `tokenizers` library (Rust core 0.23.2, through its Node bindings) computes
// them. Used only to make test data, never at run time.
//
//   cd training/tools && npm install --no-save --no-package-lock tokenizers@0.23.2
//   node make_tokenizer_references.mjs ../../tests/data/tokenizers
//
// Each kind is written as the JSON a checkpoint carries (vocab and merges learned here by a small
// BPE trainer on a fixed corpus), loaded by `tokenizers`, and saved back by it, so the committed
// tokenizer.json is the library's own serialisation. Kinds:
//   gpt2         ByteLevel pre-tokenizer with its GPT-2 regex
//   llama3       Split(LLaMA-3 regex) + ByteLevel(use_regex false), ignore_merges, BOS template
//   qwen2        NFC normalizer, Split(Qwen2 regex) + ByteLevel, no BOS
//   sp_prepend   LLaMA-2 style: Prepend("▁")+Replace(" ","▁") normalizer, byte fallback, BOS
//   sp_metaspace Mistral style: Metaspace pre-tokenizer (prepend_scheme first), byte fallback
// expected.json per kind: for each text, `ids` with special tokens read as plain text (the
// library's encode_special_tokens = true, which the Node bindings lack: the same tokenizer with
// its special added tokens left out of added_tokens, which is what that flag does in
// added_vocabulary.rs find_matches: the match is skipped; ids mapped back from its pieces),
// `ids_special_matched` (the library's
// default), `ids_template` (matched, add_special_tokens = true: the post-processor), `tokens`
// (the pieces of `ids`) and the decoded text of both id lists (skip_special_tokens = false).
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { Tokenizer, byteLevelAlphabet } = require('tokenizers');

const GPT2_PATTERN =
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|" +
  " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|" +
  " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

export const TEXTS = [
  'Hello world',
  ' Hello world',
  "Hello, world! How's it going? I'm fine; they'll see, we'd go, you've been, it's OK.",
  "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG'S BACK. Don't SHOUT'S.",
  "def f(x):\n    return x ** 2  # square\n\n\tif x>0: print(f'{x=}')\n",
  'for (int i = 0; i < n; ++i) { a[i] += b[i] * 3.14159; }',
  '1234567890 12 345 6789 0.5 -17 1e-9 3,000,000',
  '   leading spaces and trailing   ',
  'tabs\tand\nnewlines\r\nand\n\n\nruns      of     spaces',
  'caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe',
  'cafe\u0301 (combining accent) and \u212b (angstrom sign)',
  '\u1100\u1161 jamo, \ufb01 ligature, \u2460 circled, x\u00b2',
  '\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u4e2d\u6587\u6587\u672c',
  '\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac ' +
    '\u05e2\u05d1\u05e8\u05d9\u05ea \u0627\u0644\u0639\u0631\u0628\u064a\u0629',
  'emoji \u{1F600}\u{1F44D}\u{1F3FD} and flags \u{1F1EB}\u{1F1F7} zero\u200bwidth',
  'nbsp\u00a0and\u3000ideographic\u2003em space',
  '<a>0</a>(3+4)*5<a>1</a>7*5',
  'a prompt that types <a> and </a> and <|endoftext|> and <s></s> in plain text',
  '<s>hello</s>',
  ' <s> spaced </s> ',
  'added tokens: <think>inner</think> done',
  '<think>start',
  '<|im_start|>user\nhi<|im_end|><|begin_of_text|>x<|eot_id|>',
  'typed pieces: <0x41> \u2581word \u0120world <unk>',
  '((3+4)*(5-2))+6=',
  '',
  ' ',
  '\n',
  '  \t\n  ',
  'x'.repeat(40),
  'The year 2024 had 366 days; 1,024 bytes is 1 KiB.',
];

const CORPUS_SEED_TEXT = [
  "The cat sat on the mat. The dog ran in the park. It's a sunny day, isn't it?",
  'Numbers like 1, 2, 3, 42, 100 and 2024 appear in text. Prices: $3.50, 12%.',
  "def main():\n    print('hello')\n    return 0\n",
  'import os\nimport sys\nfor line in sys.stdin:\n    print(line.strip())\n',
  'caf\u00e9 r\u00e9sum\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \u4e2d\u6587 \u041f\u0440\u0438\u0432\u0435\u0442',
  '((3+4)*(5-2))+6= 7*3 21+6 27 (48-21)-(18-5) 27-13 14',
  'Summary: the report says revenue rose 12% to 4.5 million in 2023.',
  'Hello world, hello there. The quick brown fox jumps over the lazy dog.',
];

// A deterministic corpus: random word runs from the seed text, then the seed lines themselves.
function corpus() {
  let state = 1;
  const next = () => (state = (state * 1103515245 + 12345) % 2147483648);
  const words = CORPUS_SEED_TEXT.join(' ').split(/\s+/).filter((w) => w);
  const lines = [];
  for (let i = 0; i < 1500; ++i) {
    const n = 3 + (next() % 18);
    const run = [];
    for (let j = 0; j < n; ++j) run.push(words[next() % words.length]);
    lines.push(run.join(' '));
  }
  for (const text of CORPUS_SEED_TEXT) for (let i = 0; i < 20; ++i) lines.push(text);
  return lines;
}

// Learns `count` merges from word frequencies (each word an array of symbols): the most
// frequent adjacent pair each round, ties to the smaller pair, as BPE trainers do.
function learnMerges(wordCounts, count) {
  const words = [...wordCounts].map(([w, n]) => ({ symbols: [...w], n }));
  const merges = [];
  for (let round = 0; round < count; ++round) {
    const pairs = new Map();
    for (const { symbols, n } of words) {
      for (let i = 0; i + 1 < symbols.length; ++i) {
        const key = symbols[i] + '\u0000' + symbols[i + 1];
        pairs.set(key, (pairs.get(key) || 0) + n);
      }
    }
    let best = null;
    for (const [key, n] of pairs) {
      if (best === null || n > best[1] || (n === best[1] && key < best[0])) best = [key, n];
    }
    if (best === null || best[1] < 2) break;
    const [a, b] = best[0].split('\u0000');
    merges.push([a, b]);
    for (const word of words) {
      const out = [];
      for (let i = 0; i < word.symbols.length; ++i) {
        if (i + 1 < word.symbols.length && word.symbols[i] === a && word.symbols[i + 1] === b) {
          out.push(a + b);
          ++i;
        } else {
          out.push(word.symbols[i]);
        }
      }
      word.symbols = out;
    }
  }
  return merges;
}

function addedToken(id, content, special, extra = {}) {
  return { id, content, single_word: false, lstrip: false, rstrip: false,
           normalized: !special, special, ...extra };
}

function bpeModel(vocab, merges, options) {
  return { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
           end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false,
           vocab, merges, ...options };
}

function template(bos, bosId) {
  return {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
           { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { [bos]: { id: bos, ids: [bosId], tokens: [bos] } },
  };
}

// Word frequencies of the corpus as the tokenizer's own normalizer and pre-tokenizer cut it.
function corpusWords(json, cut = (piece) => [piece]) {
  const tok = Tokenizer.fromString(JSON.stringify(json));
  const normalizer = tok.getNormalizer();
  const preTokenizer = tok.getPreTokenizer();
  const counts = new Map();
  for (const line of corpus()) {
    const normalized = normalizer ? normalizer.normalizeString(line) : line;
    const pieces = preTokenizer ? preTokenizer.preTokenizeString(normalized).map((p) => p[0])
                                : [normalized];
    for (const piece of pieces)
      for (const word of cut(piece)) counts.set(word, (counts.get(word) || 0) + 1);
  }
  return counts;
}

function vocabWithMerges(base, merges) {
  const vocab = { ...base };
  let next = Object.keys(vocab).length;
  for (const [a, b] of merges) if (!(a + b in vocab)) vocab[a + b] = next++;
  return vocab;
}

// Byte-level BPE: the 256-symbol alphabet, learned merges, then the added tokens.
function byteLevelKind({ preTokenizer, normalizer = null, ignoreMerges, mergesAsStrings,
                         unreachable = [], special, nonSpecial, postProcessor }) {
  const base = {};
  byteLevelAlphabet().sort().forEach((c, i) => (base[c] = i));
  const skeleton = { version: '1.0', truncation: null, padding: null, added_tokens: [],
                     normalizer, pre_tokenizer: preTokenizer, post_processor: null,
                     decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true,
                                use_regex: true },
                     model: bpeModel(base, []) };
  const merges = learnMerges(corpusWords(skeleton), 300);
  const vocab = vocabWithMerges(base, merges);
  // Words in the vocabulary that no merge sequence builds: only ignore_merges reaches them.
  for (const word of unreachable) vocab[word] = Object.keys(vocab).length;
  let id = Object.keys(vocab).length;
  const added = [...special.map((t) => addedToken(id++, t, true)),
                 ...nonSpecial.map((t) => addedToken(id++, t, false))];
  const ids = Object.fromEntries(added.map((t) => [t.content, t.id]));
  return { ...skeleton, added_tokens: added,
           post_processor: postProcessor ? postProcessor(ids) : null,
           model: bpeModel(vocab, mergesAsStrings ? merges.map((m) => m.join(' ')) : merges,
                           { ignore_merges: ignoreMerges }) };
}

// SentencePiece-style BPE as LLaMA-2 and Mistral ship it in tokenizer.json: <unk> <s> </s>, the
// 256 <0xXX> byte pieces in the vocabulary, characters of the corpus, merges, byte fallback.
function sentencePieceKind({ normalizer, preTokenizer, decoder }) {
  const base = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; ++b) base[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const skeleton = { version: '1.0', truncation: null, padding: null, added_tokens: [],
                     normalizer, pre_tokenizer: preTokenizer, post_processor: null, decoder,
                     model: bpeModel(base, [], { unk_token: '<unk>', fuse_unk: true,
                                                 byte_fallback: true }) };
  // SentencePiece learns within words, each starting at its '▁'.
  const words = corpusWords(skeleton, (piece) => piece.split(/(?=\u2581)/).filter((w) => w));
  const chars = new Map();
  for (const [word, n] of words) for (const c of word) chars.set(c, (chars.get(c) || 0) + n);
  // Rare characters are left to byte fallback, as SentencePiece's character coverage does.
  for (const c of [...chars.keys()].filter((c) => chars.get(c) >= 30).sort())
    base[c] = Object.keys(base).length;
  const kept = new Map([...words].filter(([w]) => [...w].every((c) => c in base)));
  const merges = learnMerges(kept, 300);
  const vocab = vocabWithMerges(base, merges);
  let id = Object.keys(vocab).length;
  const added = [addedToken(0, '<unk>', true), addedToken(1, '<s>', true),
                 addedToken(2, '</s>', true),
                 ...['<|endoftext|>', '<a>', '</a>'].map((t) => addedToken(id++, t, true)),
                 ...['<think>', '</think>'].map((t) => addedToken(id++, t, false))];
  return { ...skeleton, added_tokens: added, post_processor: template('<s>', 1),
           model: bpeModel(vocab, merges, { unk_token: '<unk>', fuse_unk: true,
                                            byte_fallback: true }) };
}

const splitThenByteLevel = (pattern) => ({
  type: 'Sequence',
  pretokenizers: [
    { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false },
    { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
  ],
});

const KINDS = {
  gpt2: () => byteLevelKind({
    preTokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true,
                    use_regex: true },
    ignoreMerges: false, mergesAsStrings: true,
    special: ['<|endoftext|>', '<a>', '</a>'], nonSpecial: ['<think>', '</think>'],
    postProcessor: () => ({ type: 'ByteLevel', add_prefix_space: true, trim_offsets: false,
                            use_regex: true }),
  }),
  llama3: () => byteLevelKind({
    preTokenizer: splitThenByteLevel(LLAMA3_PATTERN), ignoreMerges: true,
    unreachable: ['\u0120QUICK', '\u0120BROWN', 'ello'],
    special: ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<a>', '</a>'],
    nonSpecial: ['<think>', '</think>'],
    postProcessor: (ids) => ({
      type: 'Sequence',
      processors: [{ type: 'ByteLevel', add_prefix_space: true, trim_offsets: false,
                     use_regex: true },
                   template('<|begin_of_text|>', ids['<|begin_of_text|>'])],
    }),
  }),
  qwen2: () => byteLevelKind({
    normalizer: { type: 'NFC' }, preTokenizer: splitThenByteLevel(QWEN2_PATTERN),
    ignoreMerges: false,
    special: ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<a>', '</a>'],
    nonSpecial: ['<think>', '</think>'],
    postProcessor: () => ({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: false,
                            use_regex: false }),
  }),
  sp_prepend: () => sentencePieceKind({
    normalizer: { type: 'Sequence', normalizers: [
      { type: 'Prepend', prepend: '\u2581' },
      { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
    preTokenizer: null,
    decoder: { type: 'Sequence', decoders: [
      { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
      { type: 'ByteFallback' }, { type: 'Fuse' },
      { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
  }),
  sp_metaspace: () => sentencePieceKind({
    normalizer: null,
    preTokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first',
                    split: false },
    decoder: { type: 'Sequence', decoders: [
      { type: 'ByteFallback' },
      { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false }] },
  }),
};

async function references(json) {
  const tok = Tokenizer.fromString(JSON.stringify(json));
  const plainJson = { ...json, added_tokens: json.added_tokens.filter((t) => !t.special) };
  const plain = Tokenizer.fromString(JSON.stringify(plainJson));
  const renumber = new Map(plainJson.added_tokens.map((t) => [plain.tokenToId(t.content), t.id]));
  const cases = [];
  for (const text of TEXTS) {
    const plainEncoding = await plain.encode(text, null, { addSpecialTokens: false });
    // The copy renumbers the added tokens it keeps: their ids back to the original's.
    const ids = plainEncoding.getIds().map((id) => renumber.get(id) ?? id);
    const matched = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    const withTemplate = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
    cases.push({ text, ids, tokens: plainEncoding.getTokens(), ids_special_matched: matched,
                 ids_template: withTemplate, decoded: await tok.decode(ids, false),
                 decoded_special_matched: await tok.decode(matched, false) });
  }
  return cases;
}

async function main() {
  const out = process.argv[2];
  if (!out) throw new Error('usage: node make_tokenizer_references.mjs OUT_DIR');
  for (const [kind, make] of Object.entries(KINDS)) {
    const dir = path.join(out, kind);
    fs.mkdirSync(dir, { recursive: true });
    const tok = Tokenizer.fromString(JSON.stringify(make()));
    const file = path.join(dir, 'tokenizer.json');
    tok.save(file, true);
    // References from the file as saved, the bytes the C++ test reads.
    const saved = JSON.parse(fs.readFileSync(file, 'utf8'));
    const expected = { generator: 'training/tools/make_tokenizer_references.mjs',
                       library: 'tokenizers 0.23.2 (Node bindings)', kind,
                       cases: await references(saved) };
    fs.writeFileSync(path.join(dir, 'expected.json'), JSON.stringify(expected, null, 1) + '\n');
    console.log(`${dir}: vocab ${tok.getVocabSize(true)}, ${expected.cases.length} texts`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
