// The official openai Node SDK pointed at the gateway: models, a plain call, a
// stream with usage, and an error. Prints one JSON summary line; exits 1 on any
// mismatch. Usage: node check.mjs http://127.0.0.1:8080/v1
import OpenAI from "openai";
import assert from "node:assert/strict";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "sk-anything", maxRetries: 0 });

const models = await client.models.list();
assert.deepEqual(models.data.map((m) => m.id), ["deepseek-chat", "deepseek-reasoner"]);

const plain = await client.chat.completions.create({
  model: "deepseek-chat",
  messages: [{ role: "user", content: "Hello from the SDK [[mock tokens=4]]" }],
});
assert.equal(plain.choices[0].message.content.trim(), "tok1 tok2 tok3 tok4");
assert.equal(plain.usage.completion_tokens, 4);

const stream = await client.chat.completions.create({
  model: "deepseek-reasoner",
  messages: [{ role: "user", content: "Stream please [[mock tokens=3 reasoning=2]]" }],
  stream: true,
  stream_options: { include_usage: true },
});
let text = "", reasoning = "", usage = null;
for await (const chunk of stream) {
  const delta = chunk.choices[0]?.delta ?? {};
  text += delta.content ?? "";
  reasoning += delta.reasoning_content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
assert.equal(text.trim(), "tok1 tok2 tok3");
assert.ok(reasoning.length > 0, "reasoning_content deltas pass through");
assert.equal(usage.completion_tokens, 5);
assert.equal(usage.completion_tokens_details.reasoning_tokens, 2);

let status = 0, message = "";
try {
  await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] });
} catch (e) {
  status = e.status;
  message = e.error?.message ?? e.message;
}
assert.equal(status, 400);
assert.equal(message, "Model Not Exist");

console.log(JSON.stringify({ ok: true, text, usage }));
