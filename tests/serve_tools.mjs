// serve_tools.mjs: the official `openai` Node.js client calling tools
// against a server whose model plays a script (tests/test_server.c starts
// it with the fake backend): a call with reasoning and content before it,
// the same call streamed (the client's own stream helper rebuilds the
// message from the deltas), tool_choice "required", and a full round
// trip in which the tool's result goes back and the answer comes.
// Run as: OPENAI_MODULE=DIR node serve_tools.mjs BASE_URL
// Prints "openai-tools: ok" and exits 0, or prints what failed and exits 1.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const OpenAI = require(process.env.OPENAI_MODULE || 'openai');
const Client = OpenAI.default || OpenAI;

const [base] = process.argv.slice(2);
const client = new Client({ baseURL: base + '/v1', apiKey: 'none', maxRetries: 0, timeout: 30000 });
const fail = (msg) => { console.log('openai-tools: FAIL ' + msg); process.exit(1); };
const expect = (cond, msg) => { if (!cond) fail(msg); };

const tools = [{
  type: 'function',
  function: {
    name: 'get_weather', description: 'The weather in a city now',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
}];
const user = { role: 'user', content: 'What is the weather in Paris?' };

// One call, not streamed.
const r = await client.chat.completions.create({ model: 'any', messages: [user], tools, temperature: 0 });
const m = r.choices[0].message;
expect(r.choices[0].finish_reason === 'tool_calls', 'finish ' + r.choices[0].finish_reason);
expect(m.content === 'Checking.', 'content ' + JSON.stringify(m.content));
expect(m.reasoning_content === 'The user wants weather.', 'reasoning ' + JSON.stringify(m.reasoning_content));
expect(m.tool_calls?.length === 1, 'calls ' + JSON.stringify(m.tool_calls));
const call = m.tool_calls[0];
expect(call.type === 'function' && call.id.startsWith('call_'), 'call ' + JSON.stringify(call));
expect(call.function.name === 'get_weather', 'name ' + call.function.name);
expect(JSON.parse(call.function.arguments).city === 'Paris', 'arguments ' + call.function.arguments);

// Streamed: the deltas by hand, and through the client's stream helper,
// which checks their shape as it rebuilds the message.
const s = await client.chat.completions.create({ model: 'any', messages: [user], tools, temperature: 0, stream: true });
let content = '', reasoning = '', finish = null;
const calls = [];
for await (const chunk of s) {
  const d = chunk.choices[0]?.delta ?? {};
  content += d.content ?? '';
  reasoning += d.reasoning_content ?? '';
  for (const tc of d.tool_calls ?? []) {
    if (tc.id) calls[tc.index] = { id: tc.id, name: tc.function.name, arguments: '' };
    calls[tc.index].arguments += tc.function?.arguments ?? '';
  }
  finish = chunk.choices[0]?.finish_reason ?? finish;
}
expect(content === m.content && reasoning === m.reasoning_content, `streamed ${JSON.stringify([content, reasoning])}`);
expect(calls.length === 1 && calls[0].name === 'get_weather' && calls[0].arguments === call.function.arguments,
  'streamed calls ' + JSON.stringify(calls));
expect(finish === 'tool_calls', 'stream finish ' + finish);
if (typeof client.chat.completions.stream === 'function') {
  const helper = client.chat.completions.stream({ model: 'any', messages: [user], tools, temperature: 0 });
  const fin = await helper.finalChatCompletion();
  const hm = fin.choices[0].message;
  expect(hm.tool_calls?.length === 1 && hm.tool_calls[0].function.arguments === call.function.arguments,
    'stream helper ' + JSON.stringify(hm));
}

// tool_choice "required": the reply is forced to start with a call.
const q = await client.chat.completions.create({ model: 'any', messages: [user], tools, tool_choice: 'required', temperature: 0 });
expect(q.choices[0].message.tool_calls?.[0]?.function.name === 'get_weather', 'required ' + JSON.stringify(q.choices[0].message));

// The round trip: the call and its result go back, the answer comes.
const r2 = await client.chat.completions.create({
  model: 'any', tools, temperature: 0,
  messages: [user, m, { role: 'tool', tool_call_id: call.id, content: '18C and sunny' }],
});
expect(r2.choices[0].finish_reason === 'stop', 'round trip finish ' + r2.choices[0].finish_reason);
expect(r2.choices[0].message.content === 'It is 18C and sunny in Paris.', 'answer ' + r2.choices[0].message.content);
expect(!r2.choices[0].message.tool_calls, 'answer has calls');

// A bad tool is the client's typed 400.
try {
  await client.chat.completions.create({ model: 'any', messages: [user], tools: [{ type: 'function' }] });
  fail('bad tool accepted');
} catch (e) {
  expect(e.status === 400 && /tools\[0\]/.test(e.message), 'bad tool: ' + e.status + ' ' + e.message);
}
console.log('openai-tools: ok');
