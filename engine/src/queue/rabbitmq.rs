//! RabbitMQ queue (lapin): durable queues, transient msgpack messages, publisher confirms, manual acks after the
//! outcome is committed, prefetch = worker concurrency, priorities, routing by task kind, reconnects with backoff.
//! A message carries up to 64 dispatches of one kind and priority (see [`pack`]); it is acknowledged once all of
//! them are.
//!
//! Messages are not written to the broker's disk: the database is the durable record of every dispatch (the task's
//! `dispatched_until`), and a dispatch whose message was lost (a broker restart) is made due again by the reaper
//! once its redelivery delay passes, then published anew. Persisting them as well made the broker write (and sync)
//! every message before confirming it: with that and twice as many messages, RabbitMQ took 15 % of the machine in
//! the throughput bench, 5 % without (BENCHMARKS.md, session 14).
//!
//! Topology (names prefixed by the namespace `ns`):
//! - exchange `ns.tasks` (direct, durable), routing key = task kind, with alternate exchange `ns.unrouted`;
//! - queue `ns.kind.<kind>` per kind a worker serves, bound to `ns.tasks` with that kind;
//! - exchange `ns.unrouted` (fanout) → queue `ns.any`: kinds no worker declared, consumed by workers that serve every
//!   kind (they fail unknown kinds with a clear error). A `--kinds http` worker never sees other kinds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Mutex, mpsc};

use super::{AckHandle, Delivery, Dispatch, QueueError, TaskQueue};

/// Settings of the RabbitMQ queue.
#[derive(Debug, Clone)]
pub struct RabbitMqOptions {
    pub url: String,
    /// Prefix of exchange and queue names (several deployments can share a broker).
    pub namespace: String,
    /// Consume these kinds; `None` consumes every kind in `known_kinds` plus the catch-all queue.
    pub kinds: Option<Vec<String>>,
    /// Kinds this process has handlers for (used when `kinds` is `None`).
    pub known_kinds: Vec<String>,
    /// Unacknowledged messages per consumer (= worker concurrency).
    pub prefetch: u16,
}

/// The RabbitMQ adapter of [`TaskQueue`]. Publishing and consuming use separate connections; consuming starts on
/// the first `receive`.
pub struct RabbitMqQueue {
    inner: Arc<Inner>,
    deliveries: Mutex<Option<mpsc::Receiver<Delivery>>>,
}

struct Inner {
    opts: RabbitMqOptions,
    publisher: Mutex<Option<(Connection, Channel)>>,
}

const PRIORITY_MAX: u8 = 9;

impl RabbitMqQueue {
    /// Connects once to check the URL and declares the shared topology.
    pub async fn connect(opts: RabbitMqOptions) -> Result<Self, QueueError> {
        let inner = Arc::new(Inner { opts, publisher: Mutex::new(None) });
        inner.publisher_channel().await?;
        Ok(Self { inner, deliveries: Mutex::new(None) })
    }
}

impl Inner {
    fn exchange(&self) -> String {
        format!("{}.tasks", self.opts.namespace)
    }

    /// A connection named after the namespace, so operators (and tests) can tell deployments apart.
    async fn open(&self) -> Result<Connection, QueueError> {
        let props = ConnectionProperties::default().with_connection_name(self.opts.namespace.as_str().into());
        let connect = Connection::connect(&self.opts.url, props);
        tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| QueueError("connecting to RabbitMQ timed out".into()))?
            .map_err(|e| QueueError(e.to_string()))
    }

    async fn declare_topology(&self, channel: &Channel) -> Result<(), QueueError> {
        let ns = &self.opts.namespace;
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        let unrouted = format!("{ns}.unrouted");
        channel
            .exchange_declare(unrouted.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default())
            .await
            .map_err(err)?;
        let mut args = FieldTable::default();
        args.insert("alternate-exchange".into(), AMQPValue::LongString(unrouted.as_str().into()));
        channel
            .exchange_declare(self.exchange().as_str().into(), ExchangeKind::Direct, durable, args)
            .await
            .map_err(err)?;
        let any = format!("{ns}.any");
        declare_queue(channel, &any).await?;
        channel
            .queue_bind(
                any.as_str().into(),
                unrouted.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        // Queues of the kinds this process knows exist before anything is published, so a task of a known kind
        // waits in its own queue for a worker that serves it, even one that has not started yet.
        for kind in &self.opts.known_kinds {
            self.declare_kind_queue(channel, kind).await?;
        }
        Ok(())
    }

    async fn declare_kind_queue(&self, channel: &Channel, kind: &str) -> Result<String, QueueError> {
        let queue = format!("{}.kind.{kind}", self.opts.namespace);
        declare_queue(channel, &queue).await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                self.exchange().as_str().into(),
                kind.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        Ok(queue)
    }

    async fn publisher_channel(&self) -> Result<Channel, QueueError> {
        let mut guard = self.publisher.lock().await;
        if let Some((conn, channel)) = guard.as_ref()
            && conn.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let conn = self.open().await?;
        let channel = conn.create_channel().await.map_err(err)?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(err)?;
        self.declare_topology(&channel).await?;
        *guard = Some((conn, channel.clone()));
        Ok(channel)
    }

    /// Queues this consumer reads.
    fn consumed_queues(&self) -> Vec<(String, Option<String>)> {
        let ns = &self.opts.namespace;
        match &self.opts.kinds {
            Some(kinds) => kinds.iter().map(|k| (format!("{ns}.kind.{k}"), Some(k.clone()))).collect(),
            None => {
                let mut q: Vec<_> =
                    self.opts.known_kinds.iter().map(|k| (format!("{ns}.kind.{k}"), Some(k.clone()))).collect();
                q.push((format!("{ns}.any"), None));
                q
            }
        }
    }

    /// Runs consumers until the receiver is dropped, reconnecting with backoff.
    async fn consume_forever(self: Arc<Self>, tx: mpsc::Sender<Delivery>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.consume_once(&tx).await {
                Ok(()) if tx.is_closed() => return,
                Ok(()) => tracing::warn!("RabbitMQ consumer stopped; reconnecting"),
                Err(e) => tracing::warn!(error = %e, "RabbitMQ consumer failed; reconnecting"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn consume_once(&self, tx: &mpsc::Sender<Delivery>) -> Result<(), QueueError> {
        let conn = self.open().await?;
        let channel = conn.create_channel().await.map_err(err)?;
        channel.basic_qos(self.opts.prefetch.max(1), BasicQosOptions { global: true }).await.map_err(err)?;
        self.declare_topology(&channel).await?;
        let mut streams = Vec::new();
        for (queue, kind) in self.consumed_queues() {
            match kind {
                Some(kind) => {
                    self.declare_kind_queue(&channel, &kind).await?;
                }
                None => declare_queue(&channel, &queue).await?,
            }
            let consumer = channel
                .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(err)?;
            streams.push(consumer);
        }
        tracing::info!(queues = streams.len(), "consuming from RabbitMQ");
        let mut merged = futures::stream::select_all(streams);
        while let Some(delivery) = merged.next().await {
            let delivery = delivery.map_err(err)?;
            match unpack(&delivery.data) {
                Ok(dispatches) => {
                    let ack = Arc::new(RabbitAck { parts: AtomicUsize::new(dispatches.len()), delivery });
                    for dispatch in dispatches {
                        if tx.send(Delivery::with_ack(dispatch, Box::new(PartAck(ack.clone())))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a message that is not a task dispatch");
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
            }
        }
        Ok(())
    }
}

async fn declare_queue(channel: &Channel, name: &str) -> Result<(), QueueError> {
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(PRIORITY_MAX));
    channel
        .queue_declare(name.into(), QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }, args)
        .await
        .map_err(err)?;
    Ok(())
}

fn err(e: lapin::Error) -> QueueError {
    QueueError(e.to_string())
}

/// Most tasks one message carries. The broker's work is per message, so a batch of due tasks of one kind and
/// priority travels as a few messages, not one per task; a run of one or two tasks still goes one task per message,
/// so that chains stay as fast.
const MESSAGE_TASKS_MAX: usize = 64;

/// Messages a run of dispatches is cut into at least, so that it can go to as many workers at once. Two rather than
/// four: on two cores RabbitMQ took 9 % of the CPU at four messages per 100-task workflow, and the production bench
/// ran 10–14 % faster with two (BENCHMARKS.md, session 15).
const MESSAGES_MIN: usize = 2;

/// Splits a dispatch batch into messages: runs of the same kind and priority, each cut into at least
/// [`MESSAGES_MIN`] messages (up to [`MESSAGE_TASKS_MAX`] tasks each), in the batch's order.
fn pack(batch: Vec<Dispatch>) -> Vec<Vec<Dispatch>> {
    let mut runs: Vec<Vec<Dispatch>> = Vec::new();
    for d in batch {
        match runs.last_mut() {
            Some(run) if run[0].kind == d.kind && run[0].priority == d.priority => run.push(d),
            _ => runs.push(vec![d]),
        }
    }
    let mut messages = Vec::new();
    for run in runs {
        let size = run.len().div_ceil(MESSAGES_MIN).clamp(1, MESSAGE_TASKS_MAX);
        let mut run = run.into_iter().peekable();
        while run.peek().is_some() {
            messages.push(run.by_ref().take(size).collect());
        }
    }
    messages
}

/// The dispatches of a message: a list, or one dispatch (as published before messages carried several).
fn unpack(body: &[u8]) -> Result<Vec<Dispatch>, rmp_serde::decode::Error> {
    rmp_serde::from_slice::<Vec<Dispatch>>(body).or_else(|_| rmp_serde::from_slice::<Dispatch>(body).map(|d| vec![d]))
}

/// A delivered message, acknowledged once every task it carries is.
struct RabbitAck {
    parts: AtomicUsize,
    delivery: lapin::message::Delivery,
}

/// One task's share of a message's acknowledgement.
struct PartAck(Arc<RabbitAck>);

#[async_trait]
impl AckHandle for PartAck {
    async fn ack(&self) {
        if self.0.parts.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A failed ack (connection lost) means RabbitMQ redelivers; the claim fence drops the duplicates.
            let _ = self.0.delivery.acker.ack(BasicAckOptions::default()).await;
        }
    }
}

impl Inner {
    async fn publish(&self, batch: Vec<Dispatch>) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        let channel = self.publisher_channel().await?;
        let exchange = self.exchange();
        let messages = pack(batch);
        let mut confirms = Vec::with_capacity(messages.len());
        for message in &messages {
            let d = &message[0];
            let body = rmp_serde::to_vec(message).map_err(|e| QueueError(e.to_string()))?;
            // Transient (delivery mode 1): see the module documentation.
            let mut props = BasicProperties::default()
                .with_delivery_mode(1)
                .with_priority(d.priority.clamp(0, i16::from(PRIORITY_MAX)) as u8);
            if let (Some(tp), 1) = (&d.trace, message.len()) {
                // W3C trace context in the message headers, for any consumer or broker tooling that reads them.
                let mut headers = FieldTable::default();
                headers.insert("traceparent".into(), AMQPValue::LongString(tp.as_str().into()));
                props = props.with_headers(headers);
            }
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    d.kind.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await;
            match confirm {
                Ok(c) => confirms.push(c),
                Err(e) => {
                    *self.publisher.lock().await = None;
                    return Err(err(e));
                }
            }
        }
        for c in confirms {
            match c.await {
                Ok(conf) if conf.is_ack() => {}
                Ok(_) => return Err(QueueError("RabbitMQ refused a message (nack)".into())),
                Err(e) => {
                    *self.publisher.lock().await = None;
                    return Err(err(e));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl TaskQueue for RabbitMqQueue {
    async fn publish(&self, batch: Vec<Dispatch>) -> Result<(), QueueError> {
        self.inner.publish(batch).await
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let mut guard = self.deliveries.lock().await;
        if guard.is_none() {
            let (tx, rx) = mpsc::channel(usize::from(self.inner.opts.prefetch.max(1)));
            tokio::spawn(self.inner.clone().consume_forever(tx));
            *guard = Some(rx);
        }
        let Some(rx) = guard.as_mut() else { return Ok(Vec::new()) };
        let Some(first) = rx.recv().await else { return Err(QueueError("consumer stopped".into())) };
        let mut out = vec![first];
        while out.len() < max {
            match rx.try_recv() {
                Ok(d) => out.push(d),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    fn backlog(&self) -> usize {
        0
    }

    async fn healthy(&self) -> bool {
        self.inner.publisher_channel().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use taskorch_domain::{TaskId, WorkflowId};

    use super::*;

    fn d(kind: &str, priority: i16, seq: u64) -> Dispatch {
        Dispatch {
            task_id: TaskId::new(),
            workflow_id: WorkflowId::new(),
            phase: super::super::Phase::Run,
            kind: kind.into(),
            priority,
            fence: 0,
            seq,
            trace: None,
        }
    }

    #[test]
    fn few_tasks_travel_one_per_message() {
        let messages = pack((0..2).map(|i| d("noop", 0, i)).collect());
        assert_eq!(messages.iter().map(Vec::len).collect::<Vec<_>>(), vec![1; 2]);
        let messages = pack((0..5).map(|i| d("noop", 0, i)).collect());
        assert_eq!(messages.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 2]);
    }

    #[test]
    fn a_large_batch_is_packed_in_order_up_to_the_message_limit() {
        let messages = pack((0..512).map(|i| d("noop", 0, i)).collect());
        assert_eq!(messages.len(), 8);
        assert!(messages.iter().all(|m| m.len() == MESSAGE_TASKS_MAX));
        let seqs: Vec<u64> = messages.iter().flatten().map(|d| d.seq).collect();
        assert_eq!(seqs, (0..512).collect::<Vec<_>>());
        let messages = pack((0..100).map(|i| d("noop", 0, i)).collect());
        assert_eq!(messages.iter().map(Vec::len).collect::<Vec<_>>(), vec![50; 2]);
    }

    #[test]
    fn a_message_holds_one_kind_and_one_priority() {
        let batch = vec![d("a", 9, 0), d("a", 9, 1), d("a", 0, 2), d("b", 0, 3), d("a", 0, 4)];
        let messages = pack(batch);
        assert_eq!(messages.len(), 5);
        for m in &messages {
            assert!(m.iter().all(|x| x.kind == m[0].kind && x.priority == m[0].priority));
        }
    }

    #[test]
    fn messages_round_trip_and_single_dispatch_messages_still_read() {
        let batch = vec![d("a", 1, 0), d("a", 1, 1)];
        let body = rmp_serde::to_vec(&batch).expect("encode");
        assert_eq!(unpack(&body).expect("decode"), batch);
        let single = d("a", 1, 2);
        let body = rmp_serde::to_vec(&single).expect("encode");
        assert_eq!(unpack(&body).expect("decode"), vec![single]);
        assert!(unpack(b"not msgpack").is_err());
    }
}
