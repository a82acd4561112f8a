//! Serving graphql-transport-ws (and the legacy graphql-ws) for connections that carry many subscriptions.
//!
//! The protocol itself is async-graphql's; two things around it are ours, both for connections with hundreds of
//! subscriptions and bursts of events:
//! - [`Gated`] wraps each subscription stream so that polling it costs one atomic swap unless its own waker fired.
//!   async-graphql's connection stream polls every subscription of the connection for every message it sends; without
//!   the gate that was O(subscriptions) full stream polls per message.
//! - [`serve`] writes every message that is ready at once in one flush (one `write` for a burst), instead of one
//!   flush per message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use async_graphql::http::{WebSocket as ProtocolStream, WebSocketProtocols, WsMessage};
use async_graphql::{Data, Executor, Request, Response};
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use futures::stream::BoxStream;
use futures::task::{ArcWake, AtomicWaker};
use futures::{SinkExt, Stream, StreamExt};

/// Messages written before one flush, at most (a burst larger than this is flushed in parts).
const MAX_BATCH: usize = 512;

/// Bytes a connection reads from its socket at once (tungstenite zero-fills this much before each read).
pub const READ_BUFFER: usize = 8 * 1024;

/// The subprotocol the client asked for (`Sec-WebSocket-Protocol`): graphql-transport-ws or the legacy graphql-ws;
/// 400 when it names neither.
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

/// An [`Executor`] whose subscription streams are polled only after they woke.
#[derive(Clone)]
pub struct Gated<E>(pub E);

impl<E: Executor> Executor for Gated<E> {
    fn execute(&self, request: Request) -> impl Future<Output = Response> + Send {
        self.0.execute(request)
    }

    fn execute_stream(&self, request: Request, session_data: Option<Arc<Data>>) -> BoxStream<'static, Response> {
        WakeGated::new(self.0.execute_stream(request, session_data)).boxed()
    }
}

/// Set by the inner stream's waker; passes the wake on to whoever polls the gate.
struct Signal {
    woken: AtomicBool,
    outer: AtomicWaker,
}

impl ArcWake for Signal {
    fn wake_by_ref(signal: &Arc<Self>) {
        signal.woken.store(true, Ordering::Release);
        signal.outer.wake();
    }
}

/// A stream that polls its inner stream only when the inner stream asked to be polled (or just produced an item).
pub struct WakeGated<S> {
    inner: S,
    signal: Arc<Signal>,
    /// The inner stream's waker (sets the signal).
    waker: Waker,
    /// The outer waker held by `signal` since the last wake (none after a wake: waking takes it).
    registered: Option<Waker>,
}

impl<S> WakeGated<S> {
    pub fn new(inner: S) -> Self {
        // Woken at first: a new stream must be polled once to start.
        let signal = Arc::new(Signal { woken: AtomicBool::new(true), outer: AtomicWaker::new() });
        let waker = futures::task::waker(signal.clone());
        Self { inner, signal, waker, registered: None }
    }

    fn register(&mut self, cx: &Context<'_>) {
        self.signal.outer.register(cx.waker());
        self.registered = Some(cx.waker().clone());
    }
}

impl<S: Stream + Unpin> Stream for WakeGated<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        if !this.signal.woken.load(Ordering::Acquire) {
            // Not woken since the last poll: the same outer waker is still registered, nothing to do (the common
            // case: one subscription of hundreds has an event). A wake racing with this load wakes that waker.
            if this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            this.register(cx);
            if !this.signal.woken.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        this.signal.woken.store(false, Ordering::Release);
        // The wake took the registered waker: register again before polling, so a wake during the poll counts.
        this.register(cx);
        let mut inner_cx = Context::from_waker(&this.waker);
        let polled = this.inner.poll_next_unpin(&mut inner_cx);
        if polled.is_ready() {
            // It may hold more items without waking again.
            this.signal.woken.store(true, Ordering::Release);
        }
        polled
    }
}

/// Runs the protocol on `socket` until either side closes it. `on_init` turns the `connection_init` payload into the
/// connection's data (its credential).
pub async fn serve<E, F, R>(socket: WebSocket, executor: E, protocol: Protocol, on_init: F)
where
    E: Executor,
    F: FnOnce(serde_json::Value) -> R + Send + 'static,
    R: Future<Output = async_graphql::Result<Data>> + Send + 'static,
{
    let (mut sink, input) = socket.split();
    let input = input
        .take_while(|m| futures::future::ready(m.is_ok()))
        .filter_map(|m| {
            futures::future::ready(match m {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => Some(m.into_data()),
                _ => None,
            })
        })
        .boxed();
    let output = ProtocolStream::new(Gated(executor), input, protocol.0).on_connection_init(on_init).map(|m| match m {
        WsMessage::Text(text) => Message::Text(text.into()),
        WsMessage::Close(code, reason) => Message::Close(Some(CloseFrame { code, reason: reason.into() })),
    });
    futures::pin_mut!(output);
    while let Some(first) = output.next().await {
        if sink.feed(first).await.is_err() {
            return;
        }
        let mut ended = false;
        for _ in 1..MAX_BATCH {
            // Polled with this task's own waker (not a no-op one): the subscriptions keep it registered.
            match futures::future::poll_fn(|cx| Poll::Ready(output.as_mut().poll_next(cx))).await {
                Poll::Ready(Some(message)) => {
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                }
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if sink.flush().await.is_err() || ended {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A stream that counts its polls and yields whatever is pushed to it.
    struct Counted {
        polls: Arc<AtomicUsize>,
        rx: futures::channel::mpsc::UnboundedReceiver<u32>,
    }

    impl Stream for Counted {
        type Item = u32;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.rx.poll_next_unpin(cx)
        }
    }

    #[test]
    fn a_gated_stream_is_polled_only_after_it_woke_and_loses_no_item() {
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut gated = WakeGated::new(Counted { polls: polls.clone(), rx });
        let mut cx = Context::from_waker(Waker::noop());

        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1, "a new stream is polled once");
        for _ in 0..100 {
            assert!(gated.poll_next_unpin(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "not polled again before it woke");

        tx.unbounded_send(1).ok();
        tx.unbounded_send(2).ok();
        assert_eq!(gated.poll_next_unpin(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(gated.poll_next_unpin(&mut cx), Poll::Ready(Some(2)), "a second ready item without a new wake");
        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        drop(tx);
        assert_eq!(gated.poll_next_unpin(&mut cx), Poll::Ready(None));
    }

    struct CountingWaker(AtomicUsize);

    impl ArcWake for CountingWaker {
        fn wake_by_ref(w: &Arc<Self>) {
            w.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn an_item_wakes_whichever_task_polled_the_gate_last() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut gated = WakeGated::new(Counted { polls: Arc::new(AtomicUsize::new(0)), rx });
        let (first, second) =
            (Arc::new(CountingWaker(AtomicUsize::new(0))), Arc::new(CountingWaker(AtomicUsize::new(0))));
        let (w1, w2) = (futures::task::waker(first.clone()), futures::task::waker(second.clone()));
        assert!(gated.poll_next_unpin(&mut Context::from_waker(&w1)).is_pending());
        assert!(gated.poll_next_unpin(&mut Context::from_waker(&w1)).is_pending());
        // Another task (waker) takes over: it must be the one woken.
        assert!(gated.poll_next_unpin(&mut Context::from_waker(&w2)).is_pending());
        tx.unbounded_send(7).ok();
        assert_eq!((first.0.load(Ordering::Relaxed), second.0.load(Ordering::Relaxed)), (0, 1));
        assert_eq!(gated.poll_next_unpin(&mut Context::from_waker(&w2)), Poll::Ready(Some(7)));
        assert!(gated.poll_next_unpin(&mut Context::from_waker(&w2)).is_pending());
        tx.unbounded_send(8).ok();
        assert_eq!(second.0.load(Ordering::Relaxed), 2, "woken again after the wake that took its waker");
    }
}
