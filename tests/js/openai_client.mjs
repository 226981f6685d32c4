// The official `openai` npm package against a running spanserve HTTP API:
//
//   node openai_client.mjs http://127.0.0.1:PORT/v1 PROMPT
//
// Runs completions, chat completions, both streamed, a streamed request with usage, the model
// list and requests the server must refuse, through the SDK's own calls, and prints one JSON
// object of what came back (tests/integration/test_http_openai_client.py checks it). The SDK
// throws on what it cannot parse, so a malformed response fails the run.
import OpenAI, { BadRequestError, NotFoundError } from 'openai';

const [baseURL, prompt] = process.argv.slice(2);
if (!baseURL || !prompt) {
  console.error('usage: node openai_client.mjs BASE_URL PROMPT');
  process.exit(2);
}
// No retries: a 429 or 5xx must show, not be retried away.
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });

// ignore_eos is spanserve's extension (the SDK sends unknown fields as they are): every request
// makes exactly max_tokens tokens, whatever the random test model says.
const greedy = { temperature: 0, max_tokens: 12, ignore_eos: true };
const messages = [
  { role: 'system', content: 'You compute.' },
  { role: 'user', content: prompt },
];

// What a refused request threw: its class, status and error body.
async function refusal(call) {
  try {
    await call();
  } catch (error) {
    return {
      class: error.constructor.name,
      is_bad_request: error instanceof BadRequestError,
      is_not_found: error instanceof NotFoundError,
      status: error.status,
      message: error.message,
      error: error.error,
    };
  }
  return null;
}

async function collect(stream, textOf) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return { chunks, text: chunks.map(textOf).join('') };
}

const out = {};
const models = await client.models.list();
out.models = models.data;
out.model = await client.models.retrieve(models.data[0].id);
const model = models.data[0].id;

out.completion = await client.completions.create({ model, prompt, ...greedy });
out.completion_stream = await collect(
  await client.completions.create({ model, prompt, ...greedy, stream: true }),
  (c) => c.choices[0]?.text ?? '',
);

out.chat = await client.chat.completions.create({ model, messages, ...greedy });
out.chat_stream = await collect(
  await client.chat.completions.create({
    model, messages, ...greedy, stream: true, stream_options: { include_usage: true },
  }),
  (c) => c.choices[0]?.delta?.content ?? '',
);

// The SDK's helper that assembles a streamed chat answer into one completion.
const runner = client.chat.completions.stream({ model, messages, ...greedy });
out.chat_stream_helper = await runner.finalChatCompletion();

out.bad_temperature = await refusal(() =>
  client.completions.create({ model, prompt, max_tokens: 4, temperature: -1 }));
out.bad_stream_temperature = await refusal(async () => {
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 4, temperature: 'hot', stream: true,
  });
  for await (const _ of stream);
});
out.wrong_model = await refusal(() =>
  client.completions.create({ model: 'gpt-4o', prompt, max_tokens: 4 }));
out.unknown_model = await refusal(() => client.models.retrieve('gpt-4o'));

console.log(JSON.stringify(out));
