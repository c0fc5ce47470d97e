// Runs a list of @vapi-ai/server-sdk operations against vapi-proxy and prints one JSON line of
// results. Driven by tests/clients/test_node_sdk.py and test_sdk_retries.py:
//
//   node sdk.mjs '<json plan>'
//
// plan: {baseUrl, token, steps: [{op, args, headers, maxRetries}]}. op is one of
// "calls.create", "calls.get", "calls.list", "chats.create", "fetch" (the passthrough
// `client.fetch(path, init)`). A step's args may say "$call" for the id of the last call created.
// Each result is {ok: true, value} (calls.create adds `replayed`: the Idempotent-Replayed
// header or null; fetch gives {ok, status, body}) or, for an error,
// {ok: false, status, body, message, replayed: the Idempotent-Replayed header or null}.
import { VapiClient, VapiError } from "@vapi-ai/server-sdk";

const plan = JSON.parse(process.argv[2]);
const client = new VapiClient({ token: plan.token, baseUrl: plan.baseUrl, timeoutInSeconds: 10 });
const results = [];
let lastCall = null;

function substitute(value) {
  return JSON.parse(JSON.stringify(value ?? {}).replaceAll('"$call"', JSON.stringify(lastCall)));
}

for (const step of plan.steps) {
  const options = { headers: step.headers ?? {} };
  if (step.maxRetries !== undefined) options.maxRetries = step.maxRetries;
  const args = substitute(step.args);
  try {
    let value;
    switch (step.op) {
      case "calls.create": {
        const { data, rawResponse } = await client.calls.create(args, options).withRawResponse();
        if (data && typeof data.id === "string") lastCall = data.id;
        results.push({ ok: true, value: data,
                       replayed: rawResponse.headers.get("idempotent-replayed") });
        continue;
      }
      case "calls.get":
        value = await client.calls.get(args, options);
        break;
      case "calls.list":
        value = await client.calls.list(args, options);
        break;
      case "chats.create":
        value = await client.chats.create(args, options);
        break;
      case "fetch": {
        const response = await client.fetch(
          args.path,
          { method: args.method ?? "POST", body: JSON.stringify(args.body ?? {}),
            headers: { "Content-Type": "application/json" } },
          options,
        );
        const text = await response.text();
        let body;
        try { body = JSON.parse(text); } catch { body = text; }
        results.push({ ok: response.ok, status: response.status, body });
        continue;
      }
      default:
        throw new Error(`unknown op ${step.op}`);
    }
    results.push({ ok: true, value });
  } catch (error) {
    if (error instanceof VapiError) {
      const replayed = error.rawResponse?.headers?.get?.("idempotent-replayed") ?? null;
      results.push({ ok: false, status: error.statusCode ?? null, body: error.body ?? null,
                     message: error.message, replayed });
    } else {
      results.push({ ok: false, status: null, body: null, message: String(error) });
    }
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
