// The proxy guide's Cloudflare Worker, written from its description (Vapi docs, "Proxy server
// guide"): CORS for any origin, 204 on OPTIONS; read the JSON body, map the non-sensitive
// context to an assistant config, POST it to Vapi with the private key, return Vapi's status
// and body; on an exception 500 {error: "Proxy error", details}. No auth, no limits, no ledger.
// The bench runs it in workerd (bench/worker/config.capnp) as the peer baseline.
const CORS = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Methods": "POST, OPTIONS",
  "Access-Control-Allow-Headers": "Content-Type, Authorization",
};

function assistantConfig(body, env) {
  // The guide reads userId / assistantType at the top level; the Web SDK sends an object
  // first argument as body.assistant, so look in both.
  const ctx = body.assistant && typeof body.assistant === "object" ? body.assistant : body;
  return {
    assistantId: env.ASSISTANT_ID,
    assistantOverrides: {
      variableValues: { userId: ctx.userId ?? null, assistantType: ctx.assistantType ?? "default" },
    },
  };
}

export default {
  async fetch(request, env) {
    if (request.method === "OPTIONS") return new Response(null, { status: 204, headers: CORS });
    try {
      const body = await request.json();
      const { pathname } = new URL(request.url);
      const upstream = await fetch(env.VAPI_BASE_URL + pathname, {
        method: "POST",
        headers: { Authorization: `Bearer ${env.VAPI_API_KEY}`, "Content-Type": "application/json" },
        body: JSON.stringify(assistantConfig(body, env)),
      });
      return new Response(await upstream.text(), {
        status: upstream.status,
        headers: { ...CORS, "Content-Type": "application/json" },
      });
    } catch (err) {
      return new Response(JSON.stringify({ error: "Proxy error", details: String(err) }), {
        status: 500,
        headers: { ...CORS, "Content-Type": "application/json" },
      });
    }
  },
};
