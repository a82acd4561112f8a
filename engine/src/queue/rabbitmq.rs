//! RabbitMQ queue (lapin): durable queues, persistent msgpack messages, publisher confirms, manual acks after the
//! outcome is committed, prefetch = worker concurrency, priorities, routing by task kind, reconnects with backoff.
//!
//! Topology (names prefixed by the namespace `ns`):
//! - exchange `ns.tasks` (direct, durable), routing key = task kind, with alternate exchange `ns.unrouted`;
//! - queue `ns.kind.<kind>` per kind a worker serves, bound to `ns.tasks` with that kind;
//! - exchange `ns.unrouted` (fanout) → queue `ns.any`: kinds no worker declared, consumed by workers that serve every
//!   kind (they fail unknown kinds with a clear error). A `--kinds http` worker never sees other kinds.

use std::sync::Arc;
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
            match rmp_serde::from_slice::<Dispatch>(&delivery.data) {
                Ok(dispatch) => {
                    if tx.send(Delivery::with_ack(dispatch, Box::new(RabbitAck(delivery)))).await.is_err() {
                        return Ok(());
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

struct RabbitAck(lapin::message::Delivery);

#[async_trait]
impl AckHandle for RabbitAck {
    async fn ack(&self) {
        // A failed ack (connection lost) means RabbitMQ redelivers; the claim fence drops the duplicate.
        let _ = self.0.acker.ack(BasicAckOptions::default()).await;
    }
}

impl Inner {
    async fn publish(&self, batch: Vec<Dispatch>) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        let channel = self.publisher_channel().await?;
        let exchange = self.exchange();
        let mut confirms = Vec::with_capacity(batch.len());
        for d in &batch {
            let body = rmp_serde::to_vec(d).map_err(|e| QueueError(e.to_string()))?;
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_priority(d.priority.clamp(0, i16::from(PRIORITY_MAX)) as u8);
            if let Some(tp) = &d.trace {
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
