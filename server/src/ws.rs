//! Serving graphql-transport-ws (and the legacy graphql-ws, subscriptions-transport-ws) for connections that carry
//! many subscriptions.
//!
//! The connection loop is ours (async-graphql parses the client's messages and runs the operations): its streams sit
//! in a [`SelectAll`], which polls only the subscriptions that woke. async-graphql's own loop polled every
//! subscription of the connection for every message it sent, O(subscriptions) per message (11 % of the server's CPU
//! with 100 subscriptions per connection, even behind a wake gate). Everything ready is written with one flush.
//!
//! graphql-transport-ws as its protocol document says: `connection_ack` after `connection_init`, `next`, `complete`
//! (not echoed when the client completed), `pong` for `ping`; closes with 4400 for a message that is not one of the
//! protocol's, 4401 for `subscribe` before the acknowledgement, 4403 when the init is refused, 4408 without init
//! within [`INIT_TIMEOUT`], 4409 for a subscription id already in use and 4429 for a second `connection_init`. An
//! operation refused before it runs (syntax, validation, variables, limits) is one `error` message with the list of
//! its errors, and nothing after it; one that fails as it starts (an unknown workflow, a refused credential) is one
//! `next` with the errors, then `complete` (what graphql-ws's own server does for a resolver's error).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_graphql::http::{ClientMessage, WebSocketProtocols};
use async_graphql::{Data, Request};
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use futures::stream::{AbortHandle, Abortable, BoxStream, SelectAll};
use futures::{SinkExt, StreamExt};

/// Messages written before one flush, at most (a burst larger than this is flushed in parts).
const MAX_BATCH: usize = 512;

/// Bytes a connection reads from its socket at once (tungstenite zero-fills this much before each read).
pub const READ_BUFFER: usize = 8 * 1024;

/// How long the server waits for the client's answer to its close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long a graphql-transport-ws client has to send `connection_init`.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The subprotocol the connection speaks: the first of those the client offers (`Sec-WebSocket-Protocol`) that is
/// graphql-transport-ws or the legacy graphql-ws; 400 when it offers neither. The client's order wins: Python's gql
/// offers the legacy protocol first, and reads the answer's header by its title-case name only, so whatever the
/// server answers it speaks the legacy protocol.
#[derive(Debug, Clone, Copy)]
pub struct Protocol(pub WebSocketProtocols);

impl<S: Send + Sync> FromRequestParts<S> for Protocol {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|list| list.split(',').find_map(|p| p.trim().parse::<WebSocketProtocols>().ok()))
            .map(Self)
            .ok_or(StatusCode::BAD_REQUEST)
    }
}

/// One GraphQL response, serialised (`{"data":…}`): subscribers that share an execution share its payloads. An
/// operation refused before it ran (see [`crate::graphql::request`]) is instead the JSON list of its errors
/// (`[…]`), sent as the protocol's `error` message.
pub type Payload = Arc<str>;

/// Whether a client message has a type only the legacy protocol knows (`start`, `stop`, `connection_terminate`).
fn legacy_type(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        ty: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Typed<'_>>(bytes)
        .is_ok_and(|m| matches!(&*m.ty, "start" | "stop" | "connection_terminate"))
}

/// Whether a payload is the error list of an operation refused before it ran.
fn refused(payload: &str) -> bool {
    payload.starts_with('[')
}

/// Starts a connection's subscription streams.
pub trait Streams: Send + 'static {
    /// The responses of one subscription, in order; the stream ends with the subscription.
    fn stream(&self, request: Request, session: Arc<Data>) -> BoxStream<'static, Payload>;
}

/// What a subscription's stream yields to the connection loop.
enum Item {
    Next(Tag, Payload),
    End(Tag),
}

/// Which subscription an item belongs to: its id, and the id as a JSON string (escaped once).
#[derive(Clone)]
struct Tag {
    id: Arc<str>,
    json_id: Arc<str>,
}

/// What the loop writes.
enum Out {
    Text(String),
    Close(u16, String),
}

/// A connection's state apart from its streams.
struct Connection<S, F> {
    streams: S,
    legacy: bool,
    on_init: Option<F>,
    data: Option<Arc<Data>>,
    /// Live subscriptions and the handles that stop their streams. A stopped stream yields nothing more (not even
    /// its end): every item the loop receives belongs to a live subscription.
    live: HashMap<Arc<str>, AbortHandle>,
}

/// Runs the protocol on `socket` until either side closes it. `on_init` turns the `connection_init` payload into the
/// connection's data (its credential).
pub async fn serve<S, F, R>(socket: WebSocket, subscriptions: S, protocol: Protocol, on_init: F)
where
    S: Streams,
    F: FnOnce(serde_json::Value) -> R + Send + 'static,
    R: Future<Output = async_graphql::Result<Data>> + Send + 'static,
{
    let (mut sink, mut input) = socket.split();
    let legacy = protocol.0 == WebSocketProtocols::SubscriptionsTransportWS;
    let mut conn =
        Connection { streams: subscriptions, legacy, on_init: Some(on_init), data: None, live: HashMap::new() };
    let mut streams: SelectAll<BoxStream<'static, Item>> = SelectAll::new();
    let init_timeout = tokio::time::sleep(INIT_TIMEOUT);
    tokio::pin!(init_timeout);
    let mut out: Vec<Out> = Vec::new();
    loop {
        tokio::select! {
            message = input.next() => match message {
                Some(Ok(Message::Text(text))) => conn.receive(text.as_bytes(), &mut streams, &mut out).await,
                Some(Ok(Message::Binary(bytes))) => conn.receive(&bytes, &mut streams, &mut out).await,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            Some(item) = streams.next(), if !streams.is_empty() => conn.deliver(item, &mut out),
            () = &mut init_timeout, if !legacy && conn.on_init.is_some() => {
                out.push(Out::Close(4408, "Connection initialisation timeout".into()));
            }
        }
        // Whatever else is ready goes out with the same flush. Polled with this task's own waker (not a no-op one):
        // the streams keep it registered.
        while out.len() < MAX_BATCH && !matches!(out.last(), Some(Out::Close(..))) {
            match futures::future::poll_fn(|cx| Poll::Ready(streams.poll_next_unpin(cx))).await {
                Poll::Ready(Some(item)) => conn.deliver(item, &mut out),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        for message in out.drain(..) {
            let (message, last) = match message {
                Out::Text(text) => (Message::Text(text.into()), false),
                Out::Close(code, reason) => {
                    (Message::Close(Some(CloseFrame { code, reason: close_reason(reason).into() })), true)
                }
            };
            if sink.feed(message).await.is_err() {
                return;
            }
            if last {
                let _ = sink.flush().await;
                // Read what the client still sends until it answers the close (at most a second): closing the
                // socket with unread data makes the kernel reset it, and some clients then lose the close code.
                let _ = tokio::time::timeout(CLOSE_WAIT, async { while input.next().await.is_some() {} }).await;
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// A close frame's reason holds at most 123 bytes.
fn close_reason(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// `{"type":…}` with the given fields (already JSON).
fn text(ty: &str, fields: &[(&str, &str)]) -> Out {
    let len = 12 + ty.len() + fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>();
    let mut text = String::with_capacity(len);
    text.push_str(r#"{"type":""#);
    text.push_str(ty);
    text.push('"');
    for (name, value) in fields {
        text.push_str(",\"");
        text.push_str(name);
        text.push_str("\":");
        text.push_str(value);
    }
    text.push('}');
    Out::Text(text)
}

impl<S, F, R> Connection<S, F>
where
    S: Streams,
    F: FnOnce(serde_json::Value) -> R + Send + 'static,
    R: Future<Output = async_graphql::Result<Data>> + Send + 'static,
{
    /// Handles one client message.
    async fn receive(&mut self, bytes: &[u8], streams: &mut SelectAll<BoxStream<'static, Item>>, out: &mut Vec<Out>) {
        let message = match ClientMessage::from_bytes(bytes) {
            // async-graphql reads both protocols' message types; graphql-transport-ws knows none of the legacy ones.
            Ok(ClientMessage::Start { .. } | ClientMessage::Stop { .. } | ClientMessage::ConnectionTerminate)
                if !self.legacy && legacy_type(bytes) =>
            {
                out.push(Out::Close(4400, "Invalid message received: unknown type (graphql-transport-ws)".into()));
                return;
            }
            Ok(message) => message,
            Err(err) => {
                let code = if self.legacy { 1002 } else { 4400 };
                out.push(Out::Close(code, format!("Invalid message received: {err}")));
                return;
            }
        };
        match message {
            ClientMessage::ConnectionInit { payload } => {
                let Some(on_init) = self.on_init.take() else {
                    self.refuse(4429, "Too many initialisation requests.", out);
                    return;
                };
                match on_init(payload.unwrap_or_default()).await {
                    Ok(data) => {
                        self.data = Some(Arc::new(data));
                        out.push(text("connection_ack", &[]));
                    }
                    Err(err) => self.refuse(4403, &format!("Forbidden: {}", err.message), out),
                }
            }
            ClientMessage::Start { id, payload: request } => {
                let Some(data) = self.data.clone() else {
                    out.push(if self.legacy {
                        Out::Close(1011, "The handshake is not completed.".into())
                    } else {
                        Out::Close(4401, "Unauthorized".into())
                    });
                    return;
                };
                let id: Arc<str> = id.into();
                if let Some(running) = self.live.get(&id) {
                    if !self.legacy {
                        out.push(Out::Close(4409, format!("Subscriber for {id} already exists")));
                        return;
                    }
                    // The legacy protocol lets a `start` replace a live subscription of the same id.
                    running.abort();
                }
                let json_id: Arc<str> = serde_json::to_string(&*id).unwrap_or_else(|_| "\"\"".into()).into();
                let tag = Tag { id: id.clone(), json_id };
                let (handle, registration) = AbortHandle::new_pair();
                let end = tag.clone();
                let stream = self
                    .streams
                    .stream(request, data)
                    .map(move |payload| Item::Next(tag.clone(), payload))
                    .chain(futures::stream::once(async move { Item::End(end) }));
                streams.push(Abortable::new(stream, registration).boxed());
                self.live.insert(id, handle);
            }
            ClientMessage::Stop { id } => {
                if let Some(running) = self.live.remove(id.as_str()) {
                    running.abort();
                    if self.legacy {
                        let json_id = serde_json::to_string(&id).unwrap_or_default();
                        out.push(text("complete", &[("id", &json_id)]));
                    }
                }
            }
            ClientMessage::ConnectionTerminate => out.push(Out::Close(1000, String::new())),
            ClientMessage::Ping { .. } => out.push(text("pong", &[])),
            ClientMessage::Pong { .. } => {}
        }
    }

    /// Ends the connection: graphql-transport-ws closes with `code`; the legacy protocol sends `connection_error`
    /// first.
    fn refuse(&self, code: u16, reason: &str, out: &mut Vec<Out>) {
        if self.legacy {
            let payload = serde_json::json!({ "type": "connection_error", "payload": { "message": reason } });
            out.push(Out::Text(payload.to_string()));
            out.push(Out::Close(1000, String::new()));
        } else {
            out.push(Out::Close(code, reason.to_owned()));
        }
    }

    /// A stream's item as a message. Only live subscriptions' streams yield (see `live`), so no lookup per message.
    fn deliver(&mut self, item: Item, out: &mut Vec<Out>) {
        match item {
            Item::Next(tag, payload) if refused(&payload) => {
                // `error` ends the operation: no `complete` follows (its stream is stopped before it ends).
                if let Some(running) = self.live.remove(&tag.id) {
                    running.abort();
                }
                if self.legacy {
                    // subscriptions-transport-ws sends an operation's request errors as `data` with `errors`, then
                    // `complete`; its `error` carries one error object, and clients such as gql drop the whole
                    // connection on an `error` they cannot read.
                    out.push(text("data", &[("id", &tag.json_id), ("payload", &format!("{{\"errors\":{payload}}}"))]));
                    out.push(text("complete", &[("id", &tag.json_id)]));
                } else {
                    out.push(text("error", &[("id", &tag.json_id), ("payload", &payload)]));
                }
            }
            Item::Next(tag, payload) => {
                let ty = if self.legacy { "data" } else { "next" };
                out.push(text(ty, &[("id", &tag.json_id), ("payload", &payload)]));
            }
            Item::End(tag) => {
                self.live.remove(&tag.id);
                out.push(text("complete", &[("id", &tag.json_id)]));
            }
        }
    }
}
