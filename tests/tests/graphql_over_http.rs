//! Black-box tests of GraphQL over HTTP as stock clients and the GraphQL-over-HTTP specification expect it: request
//! errors (syntax, validation, operation, variables) refused before anything runs, with codes and the status the
//! accepted media type calls for; bodies that are not GraphQL requests; GET with `operationName`; batches partly
//! rate-limited; and the WebSocket upgrade of `/graphql` itself.

mod common;

use common::{RawWs, Server, ServerOptions};
use serde_json::{Value, json};

const GQL_RESPONSE: &str = "application/graphql-response+json";

/// POSTs `body` (JSON) accepting `accept`; returns status, content type and body.
async fn post(server: &Server, accept: &str, body: Value) -> (u16, String, Value) {
    let resp =
        server.http().post(server.graphql_url()).header("accept", accept).json(&body).send().await.expect("post");
    let status = resp.status().as_u16();
    let ty = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, ty, resp.json().await.expect("a JSON body"))
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or_default()
}

/// `?k=v&…`, percent-encoded.
fn query_string(params: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let pairs: Vec<String> = params.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
    format!("?{}", pairs.join("&"))
}

async fn workflows_named(server: &Server, name: &str) -> usize {
    let data = server
        .data(
            "query($n: String) { workflows(first: 100, filter: { name: $n }) { edges { node { id } } } }",
            json!({ "n": name }),
        )
        .await;
    data["workflows"]["edges"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_required_variable_missing_or_null_fails_the_whole_request_before_anything_runs() {
    let server = Server::start().await;
    let doc = "mutation Go($id: ID!) { submitWorkflow(input: { name: \"half\", tasks: [{ key: \"a\", kind: \"noop\" }] }) \
               { id } cancelWorkflow(id: $id) { id } }";
    for variables in [json!({}), json!({ "id": null })] {
        let (status, _, body) =
            post(&server, "application/json", json!({ "query": doc, "variables": variables })).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
        assert!(body["errors"][0]["message"].as_str().is_some_and(|m| m.contains("$id")), "{body}");
        assert!(body.get("data").is_none(), "a request error has no data: {body}");
    }
    assert_eq!(workflows_named(&server, "half").await, 0, "the mutation before the bad variable did not run");
    // With the variable, both fields run.
    let wf = server
        .submit(json!({ "name": "other", "tasks": [{ "key": "s", "kind": "sleep", "payload": { "ms": 60000 } }] }))
        .await;
    let data = server.data(doc, json!({ "id": wf })).await;
    assert_eq!(data["cancelWorkflow"]["id"], wf.as_str());
    assert_eq!(workflows_named(&server, "half").await, 1);
}

#[tokio::test]
async fn request_errors_carry_codes_and_the_status_of_the_accepted_media_type() {
    let server = Server::start().await;
    let cases = [
        (json!({ "query": "{ me { role }" }), "GRAPHQL_PARSE_FAILED", "Syntax Error"),
        (json!({ "query": "{ me { noSuchField } }" }), "GRAPHQL_VALIDATION_FAILED", "noSuchField"),
        (
            json!({ "query": "query A { me { role } } query B { __typename }" }),
            "GRAPHQL_VALIDATION_FAILED",
            "operationName",
        ),
        (json!({ "query": "query A { me { role } }", "operationName": "Z" }), "GRAPHQL_VALIDATION_FAILED", "\"Z\""),
        (
            json!({ "query": "query($n: Int!) { workflows(first: $n) { edges { cursor } } }" }),
            "GRAPHQL_VALIDATION_FAILED",
            "$n",
        ),
        (
            json!({ "query": "query($n: Int) { workflows(first: $n) { edges { cursor } } }",
                    "variables": { "n": 2147483648i64 } }),
            "GRAPHQL_VALIDATION_FAILED",
            "32-bit",
        ),
    ];
    for (request, expected, says) in cases {
        let (status, ty, body) = post(&server, GQL_RESPONSE, request.clone()).await;
        assert_eq!((status, ty.as_str()), (400, GQL_RESPONSE), "{request}: {body}");
        assert_eq!(code(&body), expected, "{request}: {body}");
        assert!(body["errors"][0]["message"].as_str().is_some_and(|m| m.contains(says)), "{request}: {body}");
        assert!(body.get("data").is_none(), "{request}: {body}");
        let (status, ty, json_body) = post(&server, "application/json", request.clone()).await;
        assert_eq!((status, ty.as_str()), (200, "application/json"), "{request}: {json_body}");
        assert_eq!(json_body, body, "the same answer in either media type");
    }
    // An empty operationName names none (the document's only operation runs).
    let (status, _, body) =
        post(&server, GQL_RESPONSE, json!({ "query": "{ __typename }", "operationName": "" })).await;
    assert_eq!((status, &body["data"]), (200, &json!({ "__typename": "QueryRoot" })), "{body}");
    // The operation named is the one that runs.
    let (status, _, body) = post(
        &server,
        GQL_RESPONSE,
        json!({ "query": "query A { me { role } } query B { __typename }", "operationName": "B" }),
    )
    .await;
    assert_eq!((status, &body["data"]), (200, &json!({ "__typename": "QueryRoot" })), "{body}");
    // An error while executing is not a request error: 200 with data, in either media type.
    let missing =
        json!({ "query": "mutation { cancelWorkflow(id: \"00000000-0000-0000-0000-00000000dead\") { id } }" });
    let (status, ty, body) = post(&server, GQL_RESPONSE, missing).await;
    assert_eq!((status, ty.as_str(), code(&body)), (200, GQL_RESPONSE, "NOT_FOUND"), "{body}");
    assert_eq!(body["errors"][0]["path"], json!(["cancelWorkflow"]), "{body}");
    assert!(body.get("data").is_some_and(Value::is_null), "{body}");
    // Without Accept (or with */*) the answer is application/json.
    let resp = server
        .http()
        .post(server.graphql_url())
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn bodies_and_query_strings_that_are_not_graphql_requests_are_400_with_a_json_error() {
    let server = Server::start().await;
    let raw = |body: &'static str| {
        server.http().post(server.graphql_url()).header("content-type", "application/json").body(body).send()
    };
    for body in ["not json", "{\"query\": \"{ me { role } }\", \"variables\": [1]}", "{\"query\": 1}", "{}", "[]"] {
        let resp = raw(body).await.expect("post");
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{body}");
        let answer: Value = resp.json().await.unwrap_or_else(|e| panic!("{body}: not a JSON answer: {e}"));
        assert_eq!(code(&answer), "BAD_REQUEST", "{body}: {answer}");
        assert!(!answer["errors"][0]["message"].as_str().unwrap_or_default().contains("InvalidRequest("), "{answer}");
    }
    for query in ["", "?variables=%7B%7D", "?query=%7B__typename%7D&variables=%7Bbad"] {
        let resp = server.http().get(format!("{}{query}", server.graphql_url())).send().await.expect("get");
        assert_eq!(resp.status(), 400, "{query}");
        let answer: Value = resp.json().await.expect("a JSON answer");
        assert_eq!(code(&answer), "BAD_REQUEST", "{query}: {answer}");
    }
}

#[tokio::test]
async fn get_runs_the_operation_it_names_and_refuses_a_mutation_with_405() {
    let server = Server::start().await;
    let get = |params: &'static [(&'static str, &'static str)]| {
        let url = format!("{}{}", server.graphql_url(), query_string(params));
        server.http().get(url).header("accept", "application/json").send()
    };
    let resp =
        get(&[("query", "query A { me { role } } query B { __typename }"), ("operationName", "B")]).await.expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.expect("json")["data"], json!({ "__typename": "QueryRoot" }));
    let resp = get(&[("query", "query A { me { role } }"), ("operationName", "Z")]).await.expect("get");
    assert_eq!(code(&resp.json::<Value>().await.expect("json")), "GRAPHQL_VALIDATION_FAILED");
    let resp =
        get(&[("query", "query($n: Int) { workflows(first: $n) { edges { cursor } } }"), ("variables", "{\"n\": 1}")])
            .await
            .expect("get");
    let body = resp.json::<Value>().await.expect("json");
    assert!(body.get("errors").is_none() && body["data"]["workflows"]["edges"].is_array(), "{body}");
    let sneaky =
        &[("query", "query Q { __typename } mutation M { createTenant(name: \"t\") { id } }"), ("operationName", "M")];
    for params in [&[("query", "mutation { createTenant(name: \"t\") { id } }")][..], &sneaky[..]] {
        let url = format!("{}{}", server.graphql_url(), query_string(params));
        let resp = server.http().get(url).send().await.expect("get");
        assert_eq!(resp.status(), 405, "{params:?}");
        assert_eq!(resp.headers()["allow"], "POST");
    }
}

#[tokio::test]
async fn a_batch_is_429_only_when_every_operation_in_it_was_rate_limited() {
    let server = Server::start_with(ServerOptions {
        worker: false,
        env: vec![("TASKORCH_RATE_LIMITS".into(), "list=0,read=2,write=0,login=0".into())],
        ..ServerOptions::default()
    })
    .await;
    let read = json!({ "query": "{ workflow(id: \"00000000-0000-0000-0000-00000000dead\") { id } }" });
    let submit = json!({ "query": "mutation { submitWorkflow(input: { name: \"batched\", tasks: [{ key: \"a\", kind: \"noop\" }] }) { id } }" });
    // Two reads allowed: the batch's third operation is refused, the others ran, so the batch is a 200.
    let (status, _, body) = post(&server, "application/json", json!([read, read, read])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(code(&body[2]), "RATE_LIMITED", "{body}");
    // A write beside a refused read ran: 200, not a 429 a retrying client would repeat the write after.
    let (status, _, body) = post(&server, "application/json", json!([submit, read])).await;
    assert_eq!(status, 200, "{body}");
    assert!(body[0]["data"]["submitWorkflow"]["id"].is_string(), "{body}");
    assert_eq!(code(&body[1]), "RATE_LIMITED", "{body}");
    // Every operation refused: 429 with Retry-After.
    let resp = server.http().post(server.graphql_url()).json(&json!([read, read])).send().await.expect("post");
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn graphql_itself_accepts_the_websocket_upgrade() {
    let server = Server::start().await;
    let mut ws = RawWs::connect_to(&server, "/graphql", "graphql-transport-ws").await;
    ws.init(&server.token).await;
    ws.send(json!({ "type": "ping" })).await;
    assert_eq!(ws.json().await, json!({ "type": "pong" }));
}

#[tokio::test]
async fn a_failed_field_is_null_in_place_and_every_error_has_a_code() {
    let server = Server::start().await;
    let unknown = "00000000-0000-0000-0000-00000000beef";
    // A nullable root field that fails is present and null (the schema: "null with a NOT_FOUND error").
    let (status, _, body) =
        post(&server, GQL_RESPONSE, json!({ "query": format!("{{ workflow(id: \"{unknown}\") {{ id }} }}") })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!({ "workflow": null }), "{body}");
    assert_eq!((code(&body), &body["errors"][0]["path"]), ("NOT_FOUND", &json!(["workflow"])), "{body}");
    // Beside another root field, under an alias.
    let query = format!("{{ a: workflow(id: \"{unknown}\") {{ id }} b: me {{ role }} }}");
    let (_, _, body) = post(&server, GQL_RESPONSE, json!({ "query": query })).await;
    assert_eq!(body["data"], json!({ "a": null, "b": { "role": "ADMIN" } }), "{body}");
    assert_eq!(body["errors"][0]["path"], json!(["a"]), "{body}");
    // A value that is not its scalar is a bad input like any other.
    let bad_date = "mutation { createApiKey(name: \"k\", role: VIEWER, expiresAt: \"not-a-date\") { secret } }";
    let (status, _, body) = post(&server, GQL_RESPONSE, json!({ "query": bad_date })).await;
    assert_eq!((status, code(&body)), (200, "VALIDATION_FAILED"), "{body}");
    assert!(body["errors"][0]["message"].as_str().is_some_and(|m| m.contains("DateTime")), "{body}");
    let keys = server.data("{ apiKeys { name } }", json!({})).await;
    assert_eq!(keys["apiKeys"], json!([]), "nothing was written");
    // A subscription over HTTP is refused with a code that says where subscriptions run.
    let (status, _, body) =
        post(&server, GQL_RESPONSE, json!({ "query": "subscription { events { sequence } }" })).await;
    assert_eq!((status, code(&body)), (400, "BAD_REQUEST"), "{body}");
    assert!(body["errors"][0]["message"].as_str().is_some_and(|m| m.contains("WebSocket")), "{body}");
}

#[tokio::test]
async fn a_document_named_by_hash_runs_once_the_server_has_seen_it_as_apollo_persisted_queries_expect() {
    use sha2::{Digest, Sha256};
    let server = Server::start().await;
    let query = "{ me { role } }";
    let hash = format!("{:x}", Sha256::digest(query.as_bytes()));
    let by_hash = json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } });
    // Unknown: the code and message Apollo's link looks for, so it sends the document.
    let (_, _, body) = post(&server, "application/json", by_hash.clone()).await;
    assert_eq!(code(&body), "PERSISTED_QUERY_NOT_FOUND", "{body}");
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound", "{body}");
    let mut with_doc = by_hash.clone();
    with_doc["query"] = json!(query);
    let (status, _, body) = post(&server, "application/json", with_doc).await;
    assert_eq!((status, &body["data"]), (200, &json!({ "me": { "role": "ADMIN" } })), "{body}");
    // Now the hash alone runs it, over POST and GET.
    let (_, _, body) = post(&server, "application/json", by_hash.clone()).await;
    assert_eq!(body["data"], json!({ "me": { "role": "ADMIN" } }), "{body}");
    let url =
        format!("{}{}", server.graphql_url(), query_string(&[("extensions", &by_hash["extensions"].to_string())]));
    let body: Value = server.http().get(url).send().await.expect("get").json().await.expect("json");
    assert_eq!(body["data"], json!({ "me": { "role": "ADMIN" } }), "{body}");
    // A document that is not what its hash says is refused.
    let wrong = json!({ "query": "{ __typename }", "extensions": by_hash["extensions"] });
    let (status, _, body) = post(&server, GQL_RESPONSE, wrong).await;
    assert_eq!((status, code(&body)), (400, "BAD_REQUEST"), "{body}");
}
