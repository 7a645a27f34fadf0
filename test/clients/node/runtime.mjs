// The official OpenAI SDK against `runtime serve` (in front of the HelixFlow test engine, a
// test double of an OpenAI-compatible engine). Reads OPENAI_BASE_URL (".../v1"), the keys
// KEY (allowed), NARROW_KEY (another model only) and LIMITED_KEY (1 request a minute), and
// MODEL. Prints one JSON object with what the SDK saw. Run by test/dataplane.
import OpenAI from "openai";

const base = process.env.OPENAI_BASE_URL;
const model = process.env.MODEL;
const client = (apiKey) => new OpenAI({ baseURL: base, apiKey, maxRetries: 0, timeout: 10_000 });
const messages = [{ role: "user", content: "tell me about streams" }];
const out = {};

const ok = client(process.env.KEY);
out.models = [];
for await (const m of ok.models.list()) out.models.push(m.id);

out.retrieved = (await ok.models.retrieve(model)).id;

const chat = await ok.chat.completions.create({ model, messages, max_tokens: 6 });
out.chat = { content: chat.choices[0].message.content, usage: chat.usage };

const stream = await ok.chat.completions.create({ model, messages, max_tokens: 5, stream: true });
out.stream = { content: "", chunks: 0, sawUsage: false, finishReason: null };
for await (const chunk of stream) {
  out.stream.chunks++;
  const choice = chunk.choices[0];
  if (choice) {
    out.stream.content += choice.delta?.content ?? "";
    if (choice.finish_reason) out.stream.finishReason = choice.finish_reason;
  }
  if (chunk.usage) out.stream.sawUsage = true;
}

// Errors come back as the SDK's own classes.
async function errorOf(fn) {
  try {
    await fn();
    return null;
  } catch (err) {
    return { class: err.constructor.name, status: err.status, code: err.code ?? null };
  }
}
out.notFound = await errorOf(() => ok.models.retrieve("no-such-model"));
out.unauthenticated = await errorOf(() => client("hfk_wrong_key").chat.completions.create({ model, messages }));
out.forbidden = await errorOf(() => client(process.env.NARROW_KEY).chat.completions.create({ model, messages }));
await client(process.env.LIMITED_KEY).chat.completions.create({ model, messages, max_tokens: 1 });
out.rateLimited = await errorOf(() => client(process.env.LIMITED_KEY).chat.completions.create({ model, messages }));

console.log(JSON.stringify(out));
