// A browser app calling runtime serve from another origin (see page.html). The page's URL
// fragment carries what it needs: #runtime=<http base URL>&key=<API key>&model=<served model
// name>. It reports one JSON object to POST /report on its own server: per step, {ok: ...} or
// {error: {class, status, code, message}}; {failed: "..."} when the page itself failed.

async function report(out) {
  document.getElementById("out").textContent = JSON.stringify(out);
  await fetch("/report", { method: "POST", body: JSON.stringify(out) });
}

let OpenAI;
try {
  ({ default: OpenAI } = await import("/node_modules/openai/index.mjs"));
} catch (err) {
  await report({ origin: location.origin, failed: "loading the openai SDK: " + err });
  throw err;
}

const q = new URLSearchParams(location.hash.slice(1));
const base = q.get("runtime");
const key = q.get("key");
const model = q.get("model");
const messages = [{ role: "user", content: "tell me about browsers" }];
const client = (apiKey) =>
  new OpenAI({ baseURL: base + "/v1", apiKey, dangerouslyAllowBrowser: true, maxRetries: 0, timeout: 10_000 });

async function attempt(fn) {
  try {
    return { ok: await fn() };
  } catch (err) {
    return { error: { class: err.constructor.name, status: err.status ?? null, code: err.code ?? null, message: String(err.message) } };
  }
}

// streamOverWebSocket sends one chat request on GET /v1/stream, the credential in a
// subprotocol as browsers must, and collects the chunks up to the done message.
function streamOverWebSocket() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(base.replace(/^http/, "ws") + "/v1/stream", ["helixflow.v1", "bearer." + key]);
    const got = { protocol: null, text: "", chunks: 0, usage: null };
    const timer = setTimeout(() => reject(new Error("no answer within 10s")), 10_000);
    ws.onopen = () => {
      got.protocol = ws.protocol;
      ws.send(JSON.stringify({ model, messages, max_tokens: 4 }));
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.object === "helixflow.stream.done") {
        got.usage = msg.usage;
        clearTimeout(timer);
        ws.close(1000);
        resolve(got);
      } else if (msg.error) {
        clearTimeout(timer);
        reject(new Error("error message: " + JSON.stringify(msg.error)));
      } else {
        got.chunks++;
        got.text += msg.choices?.[0]?.delta?.content ?? "";
      }
    };
    // A refused handshake is only "connection failed" to a page.
    ws.onclose = (ev) => {
      clearTimeout(timer);
      reject(new Error("closed with " + ev.code));
    };
  });
}

const out = { origin: location.origin };
try {
  out.models = await attempt(async () => {
    const ids = [];
    for await (const m of client(key).models.list()) ids.push(m.id);
    return ids;
  });
  out.retrieve = await attempt(async () => (await client(key).models.retrieve(model)).id);
  out.chat = await attempt(async () => {
    const chat = await client(key).chat.completions.create({ model, messages, max_tokens: 6 });
    return { content: chat.choices[0].message.content, usage: chat.usage };
  });
  out.stream = await attempt(async () => {
    const stream = await client(key).chat.completions.create({ model, messages, max_tokens: 5, stream: true });
    const got = { content: "", chunks: 0 };
    for await (const chunk of stream) {
      got.chunks++;
      got.content += chunk.choices[0]?.delta?.content ?? "";
    }
    return got;
  });
  out.unauthenticated = await attempt(() => client("hfk_wrong_key").chat.completions.create({ model, messages }));
  out.websocket = await attempt(streamOverWebSocket);
} catch (err) {
  out.failed = String(err);
}
await report(out);
