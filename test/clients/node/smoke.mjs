// Smoke test of the official OpenAI SDK against an OpenAI-compatible server (the HelixFlow test
// engine, or runtime serve in front of it). Reads OPENAI_BASE_URL (".../v1") and OPENAI_API_KEY,
// prints one JSON object with what the SDK saw. Run by test/clients/clients_test.go.
import OpenAI from "openai";
import { VERSION } from "openai/version";

const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL,
  apiKey: process.env.OPENAI_API_KEY || "unused",
  maxRetries: 0,
  timeout: 10_000,
});

const out = { sdkVersion: VERSION };

out.models = [];
for await (const m of client.models.list()) out.models.push(m.id);
const model = out.models[0];
const messages = [{ role: "user", content: "hello there world" }];

const chat = await client.chat.completions.create({ model, messages, max_tokens: 5 });
out.chat = {
  content: chat.choices[0].message.content,
  finishReason: chat.choices[0].finish_reason,
  usage: chat.usage,
};

const stream = await client.chat.completions.create({
  model,
  messages,
  max_tokens: 4,
  stream: true,
  stream_options: { include_usage: true },
});
out.stream = { content: "", chunks: 0, usage: null, finishReason: null };
for await (const chunk of stream) {
  out.stream.chunks++;
  const choice = chunk.choices[0];
  if (choice) {
    out.stream.content += choice.delta?.content ?? "";
    if (choice.finish_reason) out.stream.finishReason = choice.finish_reason;
  }
  if (chunk.usage) out.stream.usage = chunk.usage;
}

const emb = await client.embeddings.create({ model, input: ["a b", "c"] });
out.embeddings = { count: emb.data.length, dim: emb.data[0].embedding.length, usage: emb.usage };

try {
  await client.chat.completions.create({ model: "no-such-model", messages });
  out.notFound = null;
} catch (err) {
  out.notFound = { class: err.constructor.name, status: err.status, code: err.code ?? null };
}

console.log(JSON.stringify(out));
