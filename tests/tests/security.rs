//! Security, black-box: credentials (JWTs, API keys), roles, tenant isolation, rate limits, GraphQL abuse limits,
//! secret hygiene and response headers, against the real `taskorch` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ADMIN_EMAIL, ADMIN_PASSWORD, Server, ServerOptions};
use serde_json::{Value, json};

const JWT_SECRET: &str = "a-test-signing-key-of-at-least-32-bytes";
const CHAIN: &str = "mutation($i: SubmitWorkflowInput!) { submitWorkflow(input: $i) { id } }";
const READ: &str = "query($id: ID!) { workflow(id: $id) { id status } }";
const CANCEL: &str = "mutation($id: ID!) { cancelWorkflow(id: $id) { id } }";
const LIST: &str = "{ workflows { edges { node { id } } } }";
const CREATE_KEY: &str = "mutation($n: String!, $r: Role!, $e: DateTime, $t: ID) { \
    createApiKey(name: $n, role: $r, expiresAt: $e, tenantId: $t) { secret apiKey { id prefix lastUsedAt } } }";

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

/// Submits workflows as `credential` until the firehose `sub` shows an event (a firehose has no replay, so events
/// published before the server started the stream are not in it); returns the ids submitted and the event.
async fn until_firehose_event(
    server: &Server,
    sub: &mut common::Subscription,
    credential: &str,
) -> (Vec<String>, Value) {
    let mut submitted = Vec::new();
    for _ in 0..10 {
        let body = server.gql_as(Some(credential), CHAIN, json!({ "i": workflow_input("probe") })).await;
        submitted.push(body["data"]["submitWorkflow"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned());
        if let Ok(event) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            return (submitted, event.expect("an event"));
        }
    }
    panic!("the firehose showed no event for 10 submissions");
}

/// The error code of a subscription's first message (`error`, or `next` with errors).
fn sub_error(msg: Value) -> String {
    let errors = if msg["type"] == "error" { &msg["payload"] } else { &msg["payload"]["errors"] };
    errors[0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("not an error: {msg}")).to_owned()
}

fn env(pairs: &[(&str, &str)]) -> ServerOptions {
    ServerOptions {
        worker: false,
        env: pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..ServerOptions::default()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn workflow_input(name: &str) -> Value {
    json!({ "name": name, "tasks": [{ "key": "a", "kind": "sleep", "payload": { "ms": 60000 } }] })
}

/// Creates an API key as `admin_token`; returns its secret.
async fn api_key(server: &Server, admin_token: &str, role: &str, tenant: Option<&str>) -> String {
    let body = server
        .gql_as(Some(admin_token), CREATE_KEY, json!({ "n": format!("{role} key"), "r": role, "t": tenant }))
        .await;
    body["data"]["createApiKey"]["secret"].as_str().unwrap_or_else(|| panic!("createApiKey: {body}")).to_owned()
}

#[tokio::test]
async fn bad_credentials_are_unauthenticated_and_roles_are_enforced() {
    let server = Server::start_with(env(&[("TASKORCH_JWT_SECRET", JWT_SECRET)])).await;
    let input = json!({ "i": workflow_input("guarded") });

    // No credential at all, on a query, a mutation and a subscription.
    assert_eq!(code(&server.gql_as(None, LIST, json!({})).await), "UNAUTHENTICATED");
    assert_eq!(code(&server.gql_as(None, CHAIN, input.clone()).await), "UNAUTHENTICATED");
    let mut sub = server.subscribe_as(None, "subscription { events { sequence } }", json!({})).await;
    assert_eq!(sub_error(sub.raw().await), "UNAUTHENTICATED");

    // Hand-made tokens with the server's own key: valid, then expired, then the same claims signed elsewhere
    // and unsigned (`alg: none`).
    let me = server.data("{ me { id tenantId } }", json!({})).await;
    let claims = |exp: u64| {
        json!({ "sub": me["me"]["id"], "tid": me["me"]["tenantId"], "role": "ADMIN", "iat": now() - 100,
                "exp": exp, "typ": "access" })
    };
    let sign = |claims: &Value, key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let valid = sign(&claims(now() + 600), JWT_SECRET);
    assert!(server.gql_as(Some(&valid), LIST, json!({})).await["errors"].is_null(), "a well-signed token works");
    let expired = sign(&claims(now() - 5), JWT_SECRET);
    let other_key = sign(&claims(now() + 600), "another-key-that-is-also-32-bytes-long");
    let payload = valid.split('.').nth(1).unwrap();
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    for (what, token) in [("expired", expired), ("other key", other_key), ("alg none", unsigned), ("junk", "x".into())]
    {
        let body = server.gql_as(Some(&token), LIST, json!({})).await;
        assert_eq!(code(&body), "UNAUTHENTICATED", "{what}: {body}");
    }

    // Roles: a viewer reads but may not submit; an operator submits but may not create keys.
    let viewer = api_key(&server, &server.token, "VIEWER", None).await;
    let operator = api_key(&server, &server.token, "OPERATOR", None).await;
    assert!(server.gql_as(Some(&viewer), LIST, json!({})).await["errors"].is_null());
    assert_eq!(code(&server.gql_as(Some(&viewer), CHAIN, input.clone()).await), "FORBIDDEN");
    let submitted = server.gql_as(Some(&operator), CHAIN, input.clone()).await;
    assert!(submitted["data"]["submitWorkflow"]["id"].is_string(), "{submitted}");
    let body = server.gql_as(Some(&operator), CREATE_KEY, json!({ "n": "x", "r": "ADMIN" })).await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    assert!(body["data"].is_null() || body["data"]["createApiKey"].is_null(), "{body}");
    // X-API-Key works as well as Authorization.
    let via_header: Value = reqwest::Client::new()
        .post(server.graphql_url())
        .header("X-API-Key", &viewer)
        .json(&json!({ "query": "{ me { kind role } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via_header["data"]["me"], json!({ "kind": "API_KEY", "role": "VIEWER" }), "{via_header}");
}

#[tokio::test]
async fn api_keys_are_shown_once_revoked_at_once_and_expire() {
    let server = Server::start_with(env(&[])).await;
    let created = server.gql_as(Some(&server.token), CREATE_KEY, json!({ "n": "ci", "r": "OPERATOR" })).await;
    let secret = created["data"]["createApiKey"]["secret"].as_str().unwrap().to_owned();
    let key = &created["data"]["createApiKey"]["apiKey"];
    assert!(secret.contains(key["prefix"].as_str().unwrap()), "the prefix identifies the key");
    assert!(key["lastUsedAt"].is_null());
    assert!(server.gql_as(Some(&secret), LIST, json!({})).await["errors"].is_null());
    let listed = server.data("{ apiKeys { id prefix lastUsedAt revoked } }", json!({})).await;
    let row = listed["apiKeys"].as_array().unwrap().iter().find(|k| k["id"] == key["id"]).unwrap().clone();
    assert!(row["lastUsedAt"].is_string(), "lastUsedAt is recorded: {row}");
    assert!(!listed.to_string().contains(&secret), "listings never show the secret");

    server.data("mutation($id: ID!) { revokeApiKey(id: $id) { revoked } }", json!({ "id": key["id"] })).await;
    let body = server.gql_as(Some(&secret), LIST, json!({})).await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "revoked keys are refused from the next request: {body}");

    // A key that expires in two seconds works until then and is refused after.
    let expires = (chrono_like_now_plus(2)).to_string();
    let body =
        server.gql_as(Some(&server.token), CREATE_KEY, json!({ "n": "short", "r": "VIEWER", "e": expires })).await;
    let short = body["data"]["createApiKey"]["secret"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    assert!(server.gql_as(Some(&short), LIST, json!({})).await["errors"].is_null());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = server.gql_as(Some(&short), LIST, json!({})).await;
        if !body["errors"].is_null() {
            assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "an expired key kept working");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A past expiry is refused at creation.
    let body = server
        .gql_as(Some(&server.token), CREATE_KEY, json!({ "n": "old", "r": "VIEWER", "e": "2001-01-01T00:00:00Z" }))
        .await;
    assert_eq!(code(&body), "VALIDATION_FAILED", "{body}");
}

/// RFC 3339 for now + `secs` (UTC), without a date crate.
fn chrono_like_now_plus(secs: u64) -> String {
    let t = now() + secs;
    let (days, rem) = (t / 86_400, t % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[tokio::test]
async fn tenants_cannot_see_or_touch_each_other() {
    let server = Server::start_with(env(&[])).await;
    let tenant_b = server.data("mutation { createTenant(name: \"b\") { id } }", json!({})).await["createTenant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = api_key(&server, &server.token, "OPERATOR", None).await;
    let b = api_key(&server, &server.token, "OPERATOR", Some(&tenant_b)).await;
    let mut firehose_a = server.subscribe_as(Some(&a), "subscription { events { workflowId } }", json!({})).await;
    let (mut of_a_all, _) = until_firehose_event(&server, &mut firehose_a, &a).await;

    let of_b =
        server.gql_as(Some(&b), CHAIN, json!({ "i": workflow_input("b's") })).await["data"]["submitWorkflow"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let of_a =
        server.gql_as(Some(&a), CHAIN, json!({ "i": workflow_input("a's") })).await["data"]["submitWorkflow"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let missing = uuid::Uuid::now_v7().to_string();

    // Reading: null and NOT_FOUND, exactly as for an id that does not exist.
    let read_foreign = server.gql_as(Some(&a), READ, json!({ "id": of_b })).await;
    let read_missing = server.gql_as(Some(&a), READ, json!({ "id": missing })).await;
    assert_eq!(code(&read_foreign), "NOT_FOUND");
    assert_eq!(
        read_foreign.to_string().replace(&of_b, "ID"),
        read_missing.to_string().replace(&missing, "ID"),
        "a foreign workflow reads exactly like a missing one"
    );
    let listed = server.gql_as(Some(&a), LIST, json!({})).await.to_string();
    assert!(listed.contains(&of_a) && !listed.contains(&of_b), "{listed}");
    // Cancelling: NOT_FOUND with the same message shape.
    let foreign = server.gql_as(Some(&a), CANCEL, json!({ "id": of_b })).await;
    let unknown = server.gql_as(Some(&a), CANCEL, json!({ "id": missing })).await;
    assert_eq!(code(&foreign), "NOT_FOUND");
    assert_eq!(
        foreign["errors"][0]["message"].as_str().unwrap().replace(&of_b, "ID"),
        unknown["errors"][0]["message"].as_str().unwrap().replace(&missing, "ID")
    );
    let bulk = server.gql_as(Some(&a), "mutation { cancelWorkflows }", json!({})).await;
    let mine = of_a_all.len() + 1; // the probes and `of_a`
    assert_eq!(bulk["data"]["cancelWorkflows"], mine, "bulk actions touch only the caller's tenant: {bulk}");
    assert_eq!(server.gql_as(Some(&b), READ, json!({ "id": of_b })).await["data"]["workflow"]["status"], "RUNNING");
    // Subscribing: NOT_FOUND too.
    for id in [&of_b, &missing] {
        let mut sub = server
            .subscribe_as(
                Some(&a),
                "subscription($id: ID!) { workflowEvents(workflowId: $id) { sequence } }",
                json!({ "id": id }),
            )
            .await;
        assert_eq!(sub_error(sub.raw().await), "NOT_FOUND");
    }
    // The firehose of A (live before B submitted) carried A's events only, up to the first of `of_a`.
    of_a_all.push(of_a.clone());
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), firehose_a.next()).await.expect("A's events").unwrap();
        let wf = e["events"]["workflowId"].as_str().unwrap().to_owned();
        assert!(of_a_all.contains(&wf), "tenant A's firehose showed {wf}, not one of A's workflows (B's is {of_b})");
        if wf == of_a {
            break;
        }
    }
    // A tenant's admin cannot reach into another tenant either.
    let b_admin = api_key(&server, &server.token, "ADMIN", Some(&tenant_b)).await;
    let body =
        server.gql_as(Some(&b_admin), CREATE_KEY, json!({ "n": "x", "r": "ADMIN", "t": common::SYSTEM_TENANT })).await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
}

/// A repeated read is answered from the response cache on the embedded default (`server/src/hot.rs`): to its own
/// caller only, charged to the rate limit like the call it repeats, and timed like one.
#[tokio::test]
async fn a_repeated_read_is_answered_to_its_caller_alone_and_charged_like_a_call() {
    let server = Server::start_with(env(&[("TASKORCH_RATE_LIMITS", "list=0,read=5,write=0,login=0")])).await;
    let tenant_b = server.data("mutation { createTenant(name: \"b\") { id } }", json!({})).await["createTenant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = api_key(&server, &server.token, "ADMIN", Some(&tenant_b)).await;
    let id = server.gql(CHAIN, json!({ "i": workflow_input("hot") })).await["data"]["submitWorkflow"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hot = json!({ "query": "query Hot($id: ID!) { workflow(id: $id) { id status } }", "variables": { "id": id } });
    let post_accepting = |credential: &str, accept: &str| {
        server.http().post(server.graphql_url()).bearer_auth(credential).header("accept", accept).json(&hot).send()
    };
    let post = |credential: &str| post_accepting(credential, "application/graphql-response+json");
    let mut answers = Vec::new();
    for i in 0..5 {
        // A kept answer is labelled with the media type each request accepts, like an executed one.
        let accept = if i == 4 { "application/json" } else { "application/graphql-response+json" };
        let resp = post_accepting(&server.token, accept).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], accept);
        answers.push(resp.json::<Value>().await.unwrap());
    }
    assert_eq!(answers[0]["data"]["workflow"]["status"], "RUNNING", "{}", answers[0]);
    assert!(answers.iter().all(|a| *a == answers[0]), "every repeat is the same answer: {answers:?}");
    // The sixth read in the minute is refused, from the cache as it would be from the executor (a JWT writes
    // nothing, so the file is unchanged and this is a kept answer's lookup).
    let refused = post(&server.token).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(code(&refused.json::<Value>().await.unwrap()), "RATE_LIMITED");
    // Another tenant sending the very same request is not given the kept answer.
    let other = post(&b).await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(code(&other), "NOT_FOUND", "{other}");
    assert!(other["data"]["workflow"].is_null(), "{other}");
    let text = server.metrics().await;
    let timed = text
        .lines()
        .filter(|l| l.starts_with("taskorch_graphql_request_duration_seconds_count{"))
        .find(|l| l.contains("name=\"Hot\"") && l.contains("type=\"query\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(timed, Some(6.0), "every answered read is timed, kept or not");
    if !common::postgres() || std::env::var("TASKORCH_TEST_REDIS_URL").is_ok_and(|u| !u.is_empty()) {
        let kept = server.metric("taskorch_graphql_cached_answers_total").await;
        assert_eq!(kept, 4.0, "the repeats were kept answers");
    }
}

#[tokio::test]
async fn listing_is_rate_limited_per_key_with_retry_after() {
    let server = Server::start_with(env(&[("TASKORCH_RATE_LIMITS", "list=100,read=0,write=0,login=0")])).await;
    let (one, other) =
        (api_key(&server, &server.token, "VIEWER", None).await, api_key(&server, &server.token, "VIEWER", None).await);
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..150 {
        let resp =
            http.post(server.graphql_url()).bearer_auth(&one).json(&json!({ "query": LIST })).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        last = Some((retry, resp.json::<Value>().await.unwrap()));
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((100..=105).contains(&ok), "{ok} of 150 allowed: {statuses:?}");
    assert!(statuses[140..].iter().all(|s| *s == 429), "the last ones are refused: {statuses:?}");
    let (retry, body) = last.unwrap();
    assert_eq!(code(&body), "RATE_LIMITED");
    let hint = body["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap();
    assert!(hint >= 1 && retry.as_deref() == Some(hint.to_string().as_str()), "{retry:?} vs {body}");
    assert!(server.gql_as(Some(&other), LIST, json!({})).await["errors"].is_null(), "another key is unaffected");
    assert!(server.metric("taskorch_rate_limited_total").await >= 40.0);
    // Aliases do not make many listings one call: 100 more in one request pass the other key's limit (1 used).
    let many: String = (0..100).map(|i| format!("l{i}: workflows(first: 1) {{ nodes {{ id }} }} ")).collect();
    let body = server.gql_as(Some(&other), &format!("{{ {many} }}"), json!({})).await;
    assert_eq!(code(&body), "RATE_LIMITED", "{body}");
}

#[tokio::test]
async fn the_limit_is_shared_by_servers_through_redis() {
    if !common::production_services() {
        return; // needs Redis (TASKORCH_TEST_REDIS_URL); .ci/run runs it
    }
    let opts = env(&[("TASKORCH_RATE_LIMITS", "list=100,read=0,write=0,login=0")]);
    let a = Server::start_with(opts.clone()).await;
    let b = a.sibling(opts).await;
    let key = api_key(&a, &a.token, "VIEWER", None).await;
    let mut refused = 0;
    for i in 0..150 {
        let server = if i % 2 == 0 { &a } else { &b };
        if !server.gql_as(Some(&key), LIST, json!({})).await["errors"].is_null() {
            refused += 1;
        }
    }
    // Each server saw 75 calls: alone, neither would refuse any. One shared budget of 100 (plus what refills,
    // 1.7 a second, while the calls run) refuses most of the last third.
    assert!((30..=50).contains(&refused), "one budget of 100 across both servers; {refused} refused");
}

#[tokio::test]
async fn oversized_documents_are_refused_by_name_and_the_server_carries_on() {
    let server = Server::start_with(env(&[])).await;
    let deep = format!("{{ {}__typename{} }}", "workflows { edges { node { ".repeat(12), " } } }".repeat(12));
    let body = server.gql(&deep, json!({})).await;
    assert_eq!(code(&body), "LIMIT_EXCEEDED");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("max depth"), "{body}");

    let aliases: String = (0..10_000).map(|i| format!("a{i}: __typename ")).collect();
    let body = server.gql(&format!("{{ {aliases} }}"), json!({})).await;
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("max aliases"), "{body}");

    // Few fields, but each listing may return 1,000 workflows: refused on what it may resolve.
    let listings: String = (0..20)
        .map(|i| format!("l{i}: workflows(first: 1000) {{ nodes {{ id name status tasks {{ key status }} }} }} "))
        .collect();
    let body = server.gql(&format!("{{ {listings} }}"), json!({})).await;
    assert_eq!(code(&body), "LIMIT_EXCEEDED", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["limit"], "max cost", "{body}");
    let one = "{ workflows(first: 1000) { nodes { id name status tasks { key status } } } }";
    assert!(server.gql(one, json!({})).await["errors"].is_null(), "one page of 1,000 is fine");

    let huge = "x".repeat(20 * 1024 * 1024);
    let resp = server
        .http()
        .post(server.graphql_url())
        .json(&json!({ "query": "{ __typename }", "variables": { "pad": huge } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("max body size"), "{body}");

    let batch: Vec<Value> = (0..11).map(|_| json!({ "query": "{ __typename }" })).collect();
    let body: Value = server.http().post(server.graphql_url()).json(&batch).send().await.unwrap().json().await.unwrap();
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("max batch size"), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["limit"], "max batch size", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["max"], 10, "{body}");
    let small: Vec<Value> = (0..2).map(|_| json!({ "query": "{ me { role } }" })).collect();
    let body: Value = server.http().post(server.graphql_url()).json(&small).send().await.unwrap().json().await.unwrap();
    assert_eq!(body, json!([{ "data": { "me": { "role": "ADMIN" } } }, { "data": { "me": { "role": "ADMIN" } } }]));

    // Unaffected: a normal request right after.
    assert_eq!(server.data("{ me { role } }", json!({})).await["me"]["role"], "ADMIN");
}

#[tokio::test]
async fn login_refresh_and_equal_refusals() {
    let server = Server::start_with(env(&[])).await;
    let login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken refreshToken \
                 tokenType expiresIn user { email role } } }";
    let wrong = server.gql_as(None, login, json!({ "e": ADMIN_EMAIL, "p": "not the password" })).await;
    let unknown = server.gql_as(None, login, json!({ "e": "nobody@example.test", "p": "not the password" })).await;
    assert_eq!(code(&wrong), "UNAUTHENTICATED");
    assert_eq!(wrong["errors"][0]["message"], unknown["errors"][0]["message"], "no user enumeration");

    let ok = server.gql_as(None, login, json!({ "e": ADMIN_EMAIL.to_uppercase(), "p": ADMIN_PASSWORD })).await;
    let session = &ok["data"]["login"];
    assert_eq!(session["user"], json!({ "email": ADMIN_EMAIL, "role": "ADMIN" }), "{ok}");
    assert_eq!(session["tokenType"], "Bearer");
    let ttl = session["expiresIn"].as_i64().unwrap();
    assert!((890..=900).contains(&ttl), "15 minutes by default: {ttl}");

    let refresh = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken refreshToken } }";
    let first = server.gql_as(None, refresh, json!({ "t": session["refreshToken"] })).await;
    let token = first["data"]["refreshToken"]["accessToken"].as_str().unwrap_or_else(|| panic!("{first}"));
    assert!(server.gql_as(Some(token), LIST, json!({})).await["errors"].is_null());
    let again = server.gql_as(None, refresh, json!({ "t": session["refreshToken"] })).await;
    assert_eq!(code(&again), "UNAUTHENTICATED", "a refresh token works once: {again}");

    // Users get roles; a viewer created by the admin logs in and reads only.
    let body = server
        .data(
            "mutation { createUser(email: \"Viewer@Example.test\", password: \"viewer-password\", role: VIEWER) { email role } }",
            json!({}),
        )
        .await;
    assert_eq!(body["createUser"], json!({ "email": "viewer@example.test", "role": "VIEWER" }));
    let viewer = common::login(&server.base, "viewer@example.test", "viewer-password").await;
    let body = server.gql_as(Some(&viewer), CHAIN, json!({ "i": workflow_input("no") })).await;
    assert_eq!(code(&body), "FORBIDDEN");
    let body = server
        .gql_as(
            Some(&server.token),
            "mutation { createUser(email: \"x@y.z\", password: \"short\", role: VIEWER) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&body), "VALIDATION_FAILED", "{body}");
}

#[tokio::test]
async fn secrets_are_never_stored_or_logged_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut opts = env(&[("TASKORCH_LOG", "debug")]);
    opts.log_file = Some(log.clone());
    let server = Server::start_with(opts).await;
    let password = "user-password-7f3a9c";
    server
        .data(
            "mutation($p: String!) { createUser(email: \"ops@example.test\", password: $p, role: OPERATOR) { id } }",
            json!({ "p": password }),
        )
        .await;
    let token = common::login(&server.base, "ops@example.test", password).await;
    let key = api_key(&server, &server.token, "VIEWER", None).await;
    let key_secret = key.rsplit('_').next().unwrap().to_owned();
    assert!(server.gql_as(Some(&key), LIST, json!({})).await["errors"].is_null());
    assert!(server.gql_as(Some(&token), LIST, json!({})).await["errors"].is_null());
    let _ = server
        .gql_as(
            None,
            "mutation { login(email: \"ops@example.test\", password: \"wrong-pass-123\") { accessToken } }",
            json!({}),
        )
        .await;

    // Everything the database holds, as text.
    let stored = if server.database_url.starts_with("postgres") {
        let out = Command::new("pg_dump").arg(&server.database_url).output().expect("pg_dump");
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(server.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with("taskorch.db") {
                bytes.extend(std::fs::read(path).unwrap());
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    assert!(stored.contains("ops@example.test"), "the dump holds the user rows");
    let logs = std::fs::read_to_string(&log).unwrap();
    for secret in [password, ADMIN_PASSWORD, key.as_str(), key_secret.as_str(), token.as_str(), "wrong-pass-123"] {
        assert!(!stored.contains(secret), "the database holds a secret in clear");
        assert!(!logs.contains(secret), "the logs hold a secret in clear");
    }
    assert!(stored.contains("$argon2id$"), "passwords are argon2id hashes");
}

#[tokio::test]
async fn first_start_generates_an_admin_password_and_prints_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    let start = || {
        Command::new(common::binary("taskorch"))
            .current_dir(dir.path())
            .env("TASKORCH_LISTEN", "127.0.0.1:0")
            .env("TASKORCH_DATABASE_URL", &url)
            .env("TASKORCH_NO_WORKER", "true")
            .env("TASKORCH_LOG", "warn")
            .env_remove("TASKORCH_ADMIN_PASSWORD")
            .env_remove("TASKORCH_ADMIN_EMAIL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let first_lines = |child: &mut std::process::Child| {
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let (mut url_line, mut next) = (String::new(), String::new());
        reader.read_line(&mut url_line).unwrap();
        // The admin line follows the URL line at once when there is one; give it a moment otherwise.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = reader.read_line(&mut next);
            let _ = tx.send(next);
        });
        (url_line, rx.recv_timeout(Duration::from_secs(3)).unwrap_or_default())
    };
    let mut child = start();
    let (url_line, admin_line) = first_lines(&mut child);
    let base = url_line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches("/graphql");
    let password = admin_line
        .split("generated password ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no generated password in {admin_line:?}"))
        .to_owned();
    let token = common::login(base, "admin@taskorch.local", &password).await;
    assert!(!token.is_empty());
    let _ = child.kill();
    let _ = child.wait();

    let mut again = start();
    let (_, second) = first_lines(&mut again);
    assert!(!second.contains("password"), "printed only once: {second:?}");
    let _ = again.kill();
    let _ = again.wait();
}

#[tokio::test]
async fn responses_carry_security_headers_and_introspection_can_be_turned_off() {
    let server = Server::start_with(env(&[("TASKORCH_INTROSPECTION", "false")])).await;
    let resp = server.http().get(format!("{}/playground", server.base)).send().await.unwrap();
    for h in ["x-content-type-options", "x-frame-options", "content-security-policy", "referrer-policy"] {
        assert!(resp.headers().contains_key(h), "missing {h}");
    }
    let body = server.gql("{ __schema { types { name } } }", json!({})).await;
    assert!(!body["errors"].is_null(), "introspection is off: {body}");
}

#[tokio::test]
async fn a_revocation_holds_on_every_server_at_once() {
    let a = Server::start_with(env(&[])).await;
    let b = a.sibling(env(&[])).await;
    let created = a.gql_as(Some(&a.token), CREATE_KEY, json!({ "n": "svc", "r": "VIEWER" })).await;
    let secret = created["data"]["createApiKey"]["secret"].as_str().unwrap().to_owned();
    let id = created["data"]["createApiKey"]["apiKey"]["id"].clone();
    // Used twice on B: with Redis, B keeps the key's row under the shared key generation after the first use.
    for _ in 0..2 {
        assert!(
            b.gql_as(Some(&secret), LIST, json!({})).await["errors"].is_null(),
            "the key works on the other server"
        );
    }
    // A token issued by one server is accepted by the other (the signing key is shared through the database).
    assert!(b.gql_as(Some(&a.token), LIST, json!({})).await["errors"].is_null());
    a.data("mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }", json!({ "id": id })).await;
    let body = b.gql_as(Some(&secret), LIST, json!({})).await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "refused by the other server on the very next request: {body}");
}

#[tokio::test]
async fn a_revoked_key_ends_its_open_subscriptions() {
    let server = Server::start_with(env(&[])).await;
    let created = server.gql_as(Some(&server.token), CREATE_KEY, json!({ "n": "watcher", "r": "VIEWER" })).await;
    let secret = created["data"]["createApiKey"]["secret"].as_str().unwrap().to_owned();
    let id = created["data"]["createApiKey"]["apiKey"]["id"].clone();
    let mut firehose = server.subscribe_as(Some(&secret), "subscription { events { sequence } }", json!({})).await;
    let (submitted, first) = until_firehose_event(&server, &mut firehose, &server.token).await;
    assert!(first["events"]["sequence"].is_number(), "{first}");
    // A workflow's stream, live and quiet (no worker runs here).
    let mut watch = server
        .subscribe_as(
            Some(&secret),
            "subscription($id: ID!) { workflowEvents(workflowId: $id) { sequence } }",
            json!({ "id": submitted[0] }),
        )
        .await;
    assert!(watch.next().await.is_some(), "its replay");
    server.data("mutation($id: ID!) { revokeApiKey(id: $id) { revoked } }", json!({ "id": id })).await;
    // Both streams end with UNAUTHENTICATED at once (not at their next periodic check, 5 s), whatever else they
    // were sending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for sub in [&mut firehose, &mut watch] {
        loop {
            let msg = tokio::time::timeout_at(deadline, sub.raw()).await.expect("the stream ended at once");
            if msg["payload"]["errors"].is_array() || msg["type"] == "error" {
                assert_eq!(sub_error(msg), "UNAUTHENTICATED");
                break;
            }
        }
    }
}

#[tokio::test]
async fn secrets_can_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, password_file) = (dir.path().join("jwt.key"), dir.path().join("admin.pw"));
    std::fs::write(&key_file, format!("{JWT_SECRET}\n")).unwrap();
    std::fs::write(&password_file, "password-from-a-file\n").unwrap();
    let server = Server::start_with(env(&[
        ("TASKORCH_ADMIN_EMAIL", "filed@example.test"),
        ("TASKORCH_ADMIN_PASSWORD", ""),
        ("TASKORCH_ADMIN_PASSWORD_FILE", password_file.to_str().unwrap()),
        ("TASKORCH_JWT_SECRET_FILE", key_file.to_str().unwrap()),
    ]))
    .await;
    // The token verifies with the key of the file.
    let payload = server.token.split('.').nth(1).unwrap().to_owned();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    let decoded = jsonwebtoken::decode::<Value>(
        &server.token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    );
    assert!(decoded.is_ok(), "signed with the file's key: {payload}");
}

#[tokio::test]
async fn logins_do_not_pile_up_memory() {
    let server = Server::start_with(env(&[])).await;
    let before = server.rss_kib();
    for _ in 0..10 {
        common::login(&server.base, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    }
    let after = server.rss_kib();
    // Each login's argon2id hash takes a 19 MiB block; a block kept by the allocator would show here.
    assert!(after < before + 12 * 1024, "RSS grew from {before} KiB to {after} KiB over 10 logins");
}

/// A body sent without a declared length (chunked) is refused with the named limit too, once it passes it.
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_with_the_named_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start_with(env(&[("TASKORCH_MAX_BODY_BYTES", "65536")])).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let pad = "x".repeat(100 * 1024);
    let json = json!({ "query": "{ __typename }", "variables": { "pad": pad } }).to_string();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n",
        json.len()
    );
    let request = [head.as_bytes(), json.as_bytes(), b"\r\n0\r\n\r\n"].concat();
    // The server may answer (and stop reading) before the whole body is written.
    let _ = tcp.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default()).expect("a JSON body");
    assert_eq!(body["errors"][0]["extensions"]["code"], "LIMIT_EXCEEDED", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["limit"], "max body size", "{body}");
}
