// taskorch GraphiQL playground.
//
// Everything is bundled by esbuild into dist/playground.js + dist/playground.css,
// which the Rust server embeds and serves under /playground. Nothing here may
// load from a remote URL: the page must work with no internet access.
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createClient } from 'graphql-ws';
import { parse } from 'graphql';
import 'graphiql/style.css';
import './playground.css';

const wsScheme = window.location.protocol === 'https:' ? 'wss://' : 'ws://';
const wsUrl = wsScheme + window.location.host + '/graphql/ws';

// The access token of the last `login` (or `refreshToken`) run here, sent with every later request unless the
// Headers tab names a credential itself (`Authorization` or `X-API-Key`, e.g. an API key).
const TOKEN_KEY = 'taskorch.token';

function withCredential(headers) {
  const h = { ...(headers || {}) };
  const named = Object.keys(h).some((k) => ['authorization', 'x-api-key'].includes(k.toLowerCase()));
  const token = window.localStorage.getItem(TOKEN_KEY);
  if (!named && token) h.Authorization = `Bearer ${token}`;
  return h;
}

function keepToken(result) {
  const token = result?.data?.login?.accessToken ?? result?.data?.refreshToken?.accessToken;
  if (token) window.localStorage.setItem(TOKEN_KEY, token);
  return result;
}

function isSubscription(query, operationName) {
  try {
    const ops = parse(query).definitions.filter((d) => d.kind === 'OperationDefinition');
    const op = ops.find((d) => !operationName || d.name?.value === operationName) ?? ops[0];
    return op?.operation === 'subscription';
  } catch {
    return false;
  }
}

// One WebSocket per credential: the credential travels in the connection_init payload.
let socket = null;
let socketKey = null;
function wsClient(headers) {
  const key = JSON.stringify(headers);
  if (!socket || socketKey !== key) {
    socket?.dispose();
    socket = createClient({ url: wsUrl, connectionParams: headers, lazy: true });
    socketKey = key;
  }
  return socket;
}

// Queries and mutations: POST /graphql on the same origin; subscriptions: graphql-transport-ws on the same host.
function fetcher(params, opts) {
  const headers = withCredential(opts?.headers);
  if (isSubscription(params.query, params.operationName)) {
    return wsClient(headers).iterate(params);
  }
  return fetch('/graphql', {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...headers },
    body: JSON.stringify(params),
  })
    .then((r) => r.json())
    .then(keepToken);
}

const DEFAULT_QUERY = `# Welcome to the taskorch playground.
#
# 1. Log in: run "Login" with the admin
#    password the server printed on its first
#    start. The playground keeps the token and
#    sends it with every request (an API key in
#    the Headers tab, as {"Authorization":
#    "Bearer tok_..."}, takes precedence).
#
# 2. Run "Submit" to submit a small workflow;
#    task "b" depends on task "a".

mutation Login {
  login(email: "admin@taskorch.local", password: "") {
    accessToken
    expiresAt
  }
}

mutation Submit {
  submitWorkflow(
    input: {
      name: "hello"
      tasks: [
        { key: "a", kind: "echo", payload: { hi: 1 } }
        { key: "b", kind: "noop", dependsOn: ["a"] }
      ]
    }
  ) {
    id
    status
  }
}

# To follow a workflow live, copy the returned
# id, open a new tab (+) and run a subscription
# (sent over WebSocket to /graphql/ws):
#
# subscription Events {
#   workflowEvents(workflowId: "<id>") {
#     sequence
#     type
#     taskKey
#     at
#   }
# }
`;

function Playground() {
  return <GraphiQL fetcher={fetcher} defaultQuery={DEFAULT_QUERY} />;
}

createRoot(document.getElementById('graphiql')).render(<Playground />);
