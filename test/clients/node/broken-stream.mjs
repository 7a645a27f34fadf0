// The official OpenAI SDK reading a stream that `runtime serve` ends with an error event (the
// engine stopped sending, and the request timeout cut the stream). Reads OPENAI_BASE_URL, KEY
// and MODEL. Prints what the SDK saw: the chunks it got, and the error it raised. Run by
// test/dataplane.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.KEY, maxRetries: 0, timeout: 10_000 });
const out = { chunks: 0, error: null };
try {
  const stream = await client.chat.completions.create({
    model: process.env.MODEL, messages: [{ role: "user", content: "a long answer" }], max_tokens: 50, stream: true,
  });
  for await (const chunk of stream) if (chunk.choices) out.chunks++;
} catch (err) {
  out.error = { class: err.constructor.name, message: err.message, code: err.code ?? null };
}
console.log(JSON.stringify(out));
