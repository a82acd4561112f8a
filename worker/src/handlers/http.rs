//! `http` `{method, url, headers, body, expectStatus}` with a per-host circuit breaker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value as Json, json};

use crate::registry::{Handler, HandlerError, TaskContext};

/// Per-host circuit breaker: opens after `threshold` consecutive failures, lets one trial request through after
/// `reset` (half-open), closes again on a success.
pub struct CircuitBreaker {
    threshold: u32,
    reset: Duration,
    hosts: Mutex<HashMap<String, HostState>>,
}

#[derive(Default)]
struct HostState {
    failures: u32,
    opened_at: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, reset: Duration) -> Self {
        Self { threshold: threshold.max(1), reset, hosts: Mutex::new(HashMap::new()) }
    }

    /// Whether a request to `host` may go out now.
    pub fn allow(&self, host: &str) -> bool {
        let Ok(mut hosts) = self.hosts.lock() else {
            return true;
        };
        let state = hosts.entry(host.to_owned()).or_default();
        match state.opened_at {
            Some(at) if at.elapsed() < self.reset => false,
            Some(_) => {
                // half-open: let this one through; a failure re-opens for another period
                state.opened_at = Some(Instant::now());
                true
            }
            None => true,
        }
    }

    pub fn record(&self, host: &str, ok: bool) {
        let Ok(mut hosts) = self.hosts.lock() else {
            return;
        };
        let state = hosts.entry(host.to_owned()).or_default();
        if ok {
            *state = HostState::default();
        } else {
            state.failures += 1;
            if state.failures >= self.threshold {
                state.opened_at = Some(Instant::now());
            }
        }
    }
}

/// The `http` handler.
pub struct Http {
    client: reqwest::Client,
    breaker: CircuitBreaker,
}

impl Http {
    pub fn new(threshold: u32, reset: Duration) -> Self {
        Self { client: reqwest::Client::new(), breaker: CircuitBreaker::new(threshold, reset) }
    }
}

const USAGE: &str = "http expects a payload {\"url\": string, \"method\"?: string, \"headers\"?: {name: value}, \
                     \"body\"?: any, \"expectStatus\"?: integer}";

#[async_trait]
impl Handler for Http {
    async fn run(&self, ctx: TaskContext) -> Result<Json, HandlerError> {
        let p = &ctx.payload;
        let url_text = p.get("url").and_then(Json::as_str).ok_or_else(|| HandlerError::new(USAGE))?;
        let url =
            reqwest::Url::parse(url_text).map_err(|e| HandlerError(format!("http: invalid url `{url_text}`: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let method_text = p.get("method").and_then(Json::as_str).unwrap_or("GET").to_uppercase();
        let method = reqwest::Method::from_bytes(method_text.as_bytes())
            .map_err(|_| HandlerError(format!("http: invalid method `{method_text}`")))?;
        let mut req = self.client.request(method, url);
        if let Some(headers) = p.get("headers") {
            let headers = headers.as_object().ok_or_else(|| HandlerError::new(USAGE))?;
            for (name, value) in headers {
                let value =
                    value.as_str().ok_or_else(|| HandlerError(format!("http: header `{name}` must be a string")))?;
                req = req.header(name.as_str(), value);
            }
        }
        match p.get("body") {
            None | Some(Json::Null) => {}
            Some(Json::String(s)) => req = req.body(s.clone()),
            Some(other) => req = req.json(other),
        }
        let expect = p.get("expectStatus").and_then(Json::as_u64);
        if !self.breaker.allow(&host) {
            return Err(HandlerError(format!("http: circuit open for host `{host}` after repeated failures")));
        }
        let response = tokio::select! {
            r = req.send() => r,
            _ = ctx.cancel.cancelled() => return Err(HandlerError::new("cancelled")),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                self.breaker.record(&host, false);
                return Err(HandlerError(format!("http: request to `{host}` failed: {e}")));
            }
        };
        let status = response.status().as_u16();
        let headers: serde_json::Map<String, Json> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), Json::String(v.to_str().unwrap_or_default().to_owned())))
            .collect();
        let bytes = response.bytes().await.map_err(|e| HandlerError(format!("http: reading the body failed: {e}")))?;
        let body = serde_json::from_slice::<Json>(&bytes)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into_owned()));
        let server_error = status >= 500;
        self.breaker.record(&host, !server_error);
        let ok = match expect {
            Some(e) => u64::from(status) == e,
            None => (200..300).contains(&status),
        };
        let result = json!({ "status": status, "headers": headers, "body": body });
        if ok { Ok(result) } else { Err(HandlerError(format!("http: unexpected status {status} from `{host}`"))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_half_opens_after_reset() {
        let b = CircuitBreaker::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            b.record("h", false);
        }
        assert!(b.allow("h"));
        b.record("h", false);
        assert!(!b.allow("h"), "open after 3 consecutive failures");
        assert!(b.allow("other"), "per host");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow("h"), "half-open after the reset period");
        b.record("h", true);
        assert!(b.allow("h"));
    }
}
