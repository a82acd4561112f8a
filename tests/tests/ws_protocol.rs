//! Black-box tests of the WebSocket protocols at /graphql/ws, message by message: graphql-transport-ws as its
//! protocol document says (acknowledgement, ping/pong, next/complete, the close codes), and the legacy graphql-ws
//! (subscriptions-transport-ws) that older clients speak.

mod common;

use common::{RawWs, Received, Server};
use serde_json::{Value, json};

const EVENTS: &str = "subscription($id: ID!) { workflowEvents(workflowId: $id) { sequence type } }";

/// A workflow of one task that sleeps `ms`.
async fn sleeper(server: &Server, ms: u64) -> String {
    server
        .submit(json!({ "name": "sleeper", "tasks": [{ "key": "s", "kind": "sleep", "payload": { "ms": ms } }] }))
        .await
}

/// The messages of subscription `id` up to its `complete`, each checked to be of type `next_type` and that id (no
/// other subscription may interleave); returns their events.
async fn stream_until_complete(ws: &mut RawWs, id: &str, next_type: &str, context: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let v = ws.json().await;
        assert_eq!(v["id"], id, "{context}: {v}");
        if v["type"] == "complete" {
            return events;
        }
        assert_eq!(v["type"], next_type, "{v}");
        events.push(v["payload"]["data"]["workflowEvents"].clone());
    }
}

fn subscribe(id: &str, workflow: &str) -> Value {
    json!({ "id": id, "type": "subscribe", "payload": { "query": EVENTS, "variables": { "id": workflow } } })
}

#[tokio::test]
async fn graphql_transport_ws_closes_with_the_codes_of_its_protocol() {
    let server = Server::start().await;
    let workflow = sleeper(&server, 600_000).await;

    // A ping is answered before and after the init; a subscribe before the acknowledgement is unauthorised.
    let mut ws = RawWs::connect(&server, "graphql-transport-ws").await;
    ws.send(json!({ "type": "ping" })).await;
    assert_eq!(ws.json().await, json!({ "type": "pong" }));
    ws.send(subscribe("1", &workflow)).await;
    assert_eq!(ws.recv().await, Received::Closed(Some(4401)));

    // A second connection_init.
    let mut ws = RawWs::connect(&server, "graphql-transport-ws").await;
    ws.init(&server.token).await;
    ws.send(json!({ "type": "ping", "payload": { "at": 1 } })).await;
    assert_eq!(ws.json().await["type"], "pong");
    ws.send(json!({ "type": "connection_init", "payload": {} })).await;
    assert_eq!(ws.recv().await, Received::Closed(Some(4429)));

    // A message that is not one of the protocol's.
    let mut ws = RawWs::connect(&server, "graphql-transport-ws").await;
    ws.init(&server.token).await;
    ws.send(json!({ "type": "subscribe_please", "id": "1" })).await;
    assert_eq!(ws.recv().await, Received::Closed(Some(4400)));
    // The legacy protocol's `start` is not one of graphql-transport-ws's messages either.
    let mut ws = RawWs::connect(&server, "graphql-transport-ws").await;
    ws.init(&server.token).await;
    ws.send(json!({ "id": "1", "type": "start", "payload": { "query": EVENTS, "variables": { "id": workflow } } }))
        .await;
    assert_eq!(ws.recv().await, Received::Closed(Some(4400)));
    let mut ws = RawWs::connect(&server, "graphql-transport-ws").await;
    ws.send_text("not json".into()).await;
    assert_eq!(ws.recv().await, Received::Closed(Some(4400)));

    // A subscription id that is already live.
    let mut ws = RawWs::connect(&server, "graphql-transport-ws").await;
    ws.init(&server.token).await;
    ws.send(subscribe("same", &workflow)).await;
    let first = ws.json().await;
    assert_eq!((first["type"].as_str(), first["id"].as_str()), (Some("next"), Some("same")));
    ws.send(subscribe("same", &workflow)).await;
    loop {
        match ws.recv().await {
            Received::Json(v) => assert_eq!(v["id"], "same", "only the live subscription's events: {v}"),
            closed => {
                assert_eq!(closed, Received::Closed(Some(4409)));
                break;
            }
        }
    }
}

#[tokio::test]
async fn graphql_transport_ws_closes_a_connection_that_never_initialises() {
    let server = Server::start().await;
    let mut ws = RawWs::connect(&server, "graphql-transport-ws").await;
    let started = std::time::Instant::now();
    assert_eq!(ws.recv().await, Received::Closed(Some(4408)));
    assert!(started.elapsed() >= std::time::Duration::from_secs(9), "closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn subscriptions_on_one_connection_stream_independently_and_a_client_complete_stops_one() {
    let server = Server::start().await;
    let (a, b) = (sleeper(&server, 600_000).await, sleeper(&server, 300).await);
    let mut ws = RawWs::connect(&server, "graphql-transport-ws").await;
    ws.init(&server.token).await;
    ws.send(subscribe("a", &a)).await;
    ws.send(subscribe("b", &b)).await;
    let mut firsts = std::collections::BTreeSet::new();
    while firsts.len() < 2 {
        let v = ws.json().await;
        assert_eq!(v["type"], "next", "{v}");
        firsts.insert(v["id"].as_str().expect("id").to_owned());
    }
    // The server reads in order: once the pong is back, the complete was handled.
    ws.send(json!({ "type": "complete", "id": "a" })).await;
    ws.send(json!({ "type": "ping" })).await;
    while ws.json().await["type"] != "pong" {}
    let context = "nothing more for the completed subscription, not even a complete";
    let events = stream_until_complete(&mut ws, "b", "next", context).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().expect("event")).collect();
    assert_eq!(types.last(), Some(&"WORKFLOW_COMPLETED"), "{types:?}");
    // The connection is still good for another subscription.
    ws.send(subscribe("c", &b)).await;
    let v = ws.json().await;
    assert_eq!(
        (v["type"].as_str(), v["payload"]["data"]["workflowEvents"]["sequence"].as_i64()),
        (Some("next"), Some(1))
    );
}

/// graphql-transport-ws: an operation refused before it runs is one `error` message with its errors, and nothing
/// follows it; one that fails as it starts (a resolver's error) is a `next` with the errors, then `complete`.
#[tokio::test]
async fn a_refused_subscription_is_one_error_message_and_a_failing_one_next_then_complete() {
    let server = Server::start().await;
    let mut ws = RawWs::connect(&server, "graphql-transport-ws").await;
    ws.init(&server.token).await;
    let cases = [
        ("subscription { noSuchField }", json!({}), "GRAPHQL_VALIDATION_FAILED", "noSuchField"),
        (
            "subscription { workflowEvents(workflowId: \"x\") { sequence }",
            json!({}),
            "GRAPHQL_PARSE_FAILED",
            "Syntax Error",
        ),
        (EVENTS, json!({}), "GRAPHQL_VALIDATION_FAILED", "\"$id\" of required type \"ID!\" was not provided"),
        (
            "subscription { a: events { sequence } b: events { sequence } }",
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
            "exactly one top level field",
        ),
    ];
    for (i, (query, variables, code, says)) in cases.into_iter().enumerate() {
        let id = format!("bad{i}");
        ws.send(json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } })).await;
        let v = ws.json().await;
        assert_eq!((v["type"].as_str(), v["id"].as_str()), (Some("error"), Some(id.as_str())), "{query}: {v}");
        let errors = v["payload"].as_array().unwrap_or_else(|| panic!("an error list: {v}"));
        assert_eq!(errors[0]["extensions"]["code"], code, "{query}: {v}");
        assert!(errors[0]["message"].as_str().is_some_and(|m| m.contains(says)), "{query}: {v}");
        // Nothing more for that id: the next message is the answer to a ping.
        ws.send(json!({ "type": "ping" })).await;
        assert_eq!(ws.json().await, json!({ "type": "pong" }), "{query}: no complete after an error");
    }
    // The id of a refused operation is free again.
    ws.send(subscribe("bad0", "00000000-0000-0000-0000-00000000dead")).await;
    let v = ws.json().await;
    assert_eq!((v["type"].as_str(), v["id"].as_str()), (Some("next"), Some("bad0")), "{v}");
    assert_eq!(v["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND", "{v}");
    assert_eq!(ws.json().await, json!({ "type": "complete", "id": "bad0" }));
}

#[tokio::test]
async fn the_legacy_graphql_ws_protocol_streams_and_stops() {
    let server = Server::start().await;
    let (long, short) = (sleeper(&server, 600_000).await, sleeper(&server, 100).await);
    let mut ws = RawWs::connect(&server, "graphql-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", server.token) } }))
        .await;
    assert_eq!(ws.json().await["type"], "connection_ack");
    let start = |id: &str, wf: &str| json!({ "id": id, "type": "start", "payload": { "query": EVENTS, "variables": { "id": wf } } });
    ws.send(start("1", &short)).await;
    let events = stream_until_complete(&mut ws, "1", "data", "only the started subscription").await;
    let sequences: Vec<i64> = events.iter().map(|e| e["sequence"].as_i64().expect("sequence")).collect();
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    assert_eq!(sequences.len(), server.events(&short).await.len());

    // An operation refused before it runs is `data` with its errors, then `complete` (the protocol's `error`
    // carries a single error object): the connection and its other subscriptions go on.
    ws.send(json!({ "id": "bad", "type": "start", "payload": { "query": "subscription { noSuchField }" } })).await;
    let refused = ws.json().await;
    assert_eq!((refused["type"].as_str(), refused["id"].as_str()), (Some("data"), Some("bad")), "{refused}");
    assert_eq!(refused["payload"]["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED", "{refused}");
    assert_eq!(ws.json().await, json!({ "type": "complete", "id": "bad" }));

    ws.send(start("2", &long)).await;
    assert_eq!(ws.json().await["type"], "data");
    ws.send(json!({ "type": "stop", "id": "2" })).await;
    loop {
        let v = ws.json().await;
        if v["type"] == "complete" {
            assert_eq!(v["id"], "2");
            break;
        }
    }
}

#[tokio::test]
async fn a_client_offering_both_protocols_gets_the_first_it_offers_and_the_answer_names_it() {
    let server = Server::start().await;
    let mut ws = RawWs::connect(&server, "graphql-transport-ws, graphql-ws").await;
    assert_eq!(ws.protocol.as_deref(), Some("graphql-transport-ws"));
    ws.init(&server.token).await;
    ws.send(json!({ "type": "ping" })).await;
    assert_eq!(ws.json().await, json!({ "type": "pong" }));
    // Python's gql offers the legacy protocol first (and speaks it whatever the answer says).
    let mut ws = RawWs::connect(&server, "graphql-ws, graphql-transport-ws").await;
    assert_eq!(ws.protocol.as_deref(), Some("graphql-ws"));
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", server.token) } }))
        .await;
    assert_eq!(ws.json().await["type"], "connection_ack");
    ws.send(json!({ "id": "q", "type": "start", "payload": { "query": "{ me { role } }" } })).await;
    assert_eq!(
        ws.json().await,
        json!({ "type": "data", "id": "q", "payload": { "data": { "me": { "role": "ADMIN" } } } })
    );
}
