// serve_langchain.mjs: LangChain.js (@langchain/openai's ChatOpenAI with
// bindTools) running an agent loop against a server whose model plays a
// script (tests/test_server.c starts it with the fake backend): two tool
// turns (weather, then time), each call run and its result sent back as a
// ToolMessage, then the final answer; and the first turn streamed, its
// chunks concatenated into the same tool call.
// Run as: NPM_ROOT=DIR node serve_langchain.mjs BASE_URL (DIR holds
// node_modules/@langchain). Prints "langchain: ok" and exits 0, or prints
// what failed and exits 1.
import { createRequire } from 'node:module';

const require = createRequire(process.env.NPM_ROOT + '/');
const { ChatOpenAI } = require('@langchain/openai');
const { HumanMessage, ToolMessage } = require('@langchain/core/messages');

const [base] = process.argv.slice(2);
const fail = (msg) => { console.log('langchain: FAIL ' + msg); process.exit(1); };
const expect = (cond, msg) => { if (!cond) fail(msg); };

const fn = (name, description, prop) => ({
  type: 'function',
  function: {
    name, description,
    parameters: { type: 'object', properties: { [prop]: { type: 'string' } }, required: [prop] },
  },
});
const impl = {
  get_weather: ({ city }) => `18C in ${city}`,
  get_time: ({ tz }) => `12:00 in ${tz}`,
};
const model = new ChatOpenAI({
  model: 'any', apiKey: 'none', temperature: 0, maxRetries: 0, configuration: { baseURL: base + '/v1' },
}).bindTools([fn('get_weather', 'The weather in a city', 'city'), fn('get_time', 'The time in a zone', 'tz')]);

const messages = [new HumanMessage('Weather and time in Paris?')];

// The first turn streamed: the chunks add up to the call.
let acc;
for await (const chunk of await model.stream(messages)) acc = acc ? acc.concat(chunk) : chunk;
expect(acc?.tool_calls?.length === 1 && acc.tool_calls[0].name === 'get_weather' && acc.tool_calls[0].args.city === 'Paris',
  'streamed turn ' + JSON.stringify(acc?.tool_calls));

// The agent loop.
const called = [];
for (let turn = 0; ; turn++) {
  expect(turn < 5, 'the loop does not end');
  const ai = await model.invoke(messages);
  messages.push(ai);
  if (!ai.tool_calls?.length) break;
  for (const tc of ai.tool_calls) {
    expect(impl[tc.name], 'unknown tool ' + tc.name);
    called.push(tc.name + ':' + JSON.stringify(tc.args));
    messages.push(new ToolMessage({ content: impl[tc.name](tc.args), tool_call_id: tc.id }));
  }
}
expect(JSON.stringify(called) === JSON.stringify(['get_weather:{"city":"Paris"}', 'get_time:{"tz":"Europe/Paris"}']),
  'calls ' + JSON.stringify(called));
const last = messages[messages.length - 1];
expect(last.content === 'It is 18C and 12:00 in Paris.', 'answer ' + JSON.stringify(last.content));
console.log('langchain: ok');
