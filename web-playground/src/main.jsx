// taskorch GraphiQL playground.
//
// Everything is bundled by esbuild into dist/playground.js + dist/playground.css,
// which the Rust server embeds and serves under /playground. Nothing here may
// load from a remote URL: the page must work with no internet access.
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import 'graphiql/style.css';
import './playground.css';

const wsScheme = window.location.protocol === 'https:' ? 'wss://' : 'ws://';

const fetcher = createGraphiQLFetcher({
  // Queries and mutations: POST /graphql on the same origin.
  url: '/graphql',
  // Subscriptions: graphql-transport-ws on the same host.
  subscriptionUrl: wsScheme + window.location.host + '/graphql/ws',
});

const DEFAULT_QUERY = `# Welcome to the taskorch playground.
#
# Press the run button (or Ctrl-Enter) to
# submit a small workflow; task "b" depends
# on task "a".

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
