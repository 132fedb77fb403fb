// serve_openai.mjs: the official `openai` Node.js client against a running
// `moeq serve` (chat, streaming, completions, models, errors). Run by
// tests/test_serve.c as: node serve_openai.mjs BASE_URL API_KEY
// with NODE_PATH pointing at a node_modules that holds `openai`.
// Prints "openai-client: ok" and exits 0, or prints what failed and exits 1.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const OpenAI = require(process.env.OPENAI_MODULE || 'openai');
const Client = OpenAI.default || OpenAI;

const [base, key] = process.argv.slice(2);
const client = new Client({ baseURL: base + '/v1', apiKey: key, maxRetries: 0, timeout: 60000 });
const fail = (msg) => { console.log('openai-client: FAIL ' + msg); process.exit(1); };
const expect = (cond, msg) => { if (!cond) fail(msg); };

const messages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Name three colors.' },
];

// Chat, plain.
const r = await client.chat.completions.create({ model: 'any', messages, max_tokens: 12, temperature: 0 });
expect(r.object === 'chat.completion', 'object ' + r.object);
const msg = r.choices[0].message;
expect(msg.role === 'assistant' && typeof msg.content === 'string', 'message ' + JSON.stringify(msg));
expect(['stop', 'length'].includes(r.choices[0].finish_reason), 'finish ' + r.choices[0].finish_reason);
expect(r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens, 'usage');

// Chat, streamed: the same text, a usage chunk at the end.
const stream = await client.chat.completions.create({
  model: 'any', messages, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
});
let text = '', usage = null, finish = null, chunks = 0;
for await (const chunk of stream) {
  chunks++;
  if (chunk.usage) usage = chunk.usage;
  if (chunk.choices.length) {
    text += chunk.choices[0].delta.content ?? '';
    if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
  }
}
expect(text === msg.content, `streamed ${JSON.stringify(text)} != ${JSON.stringify(msg.content)}`);
expect(finish === r.choices[0].finish_reason, 'stream finish ' + finish);
expect(usage && usage.completion_tokens === r.usage.completion_tokens, 'stream usage ' + JSON.stringify(usage));
expect(chunks >= 3, 'chunks ' + chunks);

// Completions and models.
const c = await client.completions.create({ model: 'any', prompt: 'The capital of France is', max_tokens: 5, temperature: 0 });
expect(c.object === 'text_completion' && typeof c.choices[0].text === 'string', 'completion');
const models = await client.models.list();
expect(models.data.length === 1 && typeof models.data[0].id === 'string', 'models');

// Errors arrive as the client's typed exceptions.
try {
  await client.chat.completions.create({ model: 'any', messages: [{ role: 'wizard', content: 'x' }] });
  fail('unknown role accepted');
} catch (e) {
  expect(e.status === 400 && /wizard/.test(e.message), 'bad role: ' + e.status + ' ' + e.message);
}
try {
  await client.chat.completions.create({ model: 'any', messages: [] });
  fail('empty messages accepted');
} catch (e) {
  expect(e.status === 400, 'empty messages: ' + e.status);
}
const wrong = new Client({ baseURL: base + '/v1', apiKey: 'wrong-key', maxRetries: 0 });
try {
  await wrong.models.list();
  fail('wrong key accepted');
} catch (e) {
  expect(e.status === 401, 'wrong key: ' + e.status);
}
console.log('openai-client: ok');
