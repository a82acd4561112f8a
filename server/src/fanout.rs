//! Subscribers that ask for the same event stream share one execution of it.
//!
//! A dashboard watched by many people, or many tabs, opens the same `workflowEvents` subscription many times: the
//! same document, variables and credential. Executed separately, every event is resolved into a response once per
//! subscriber (the stream's own loop, async-graphql's field resolution and extensions), which was most of the
//! server's CPU when 10,000 subscribers watched 100 workflows. Here such subscribers form a [`Group`]: one task
//! drives the first subscriber's stream and keeps its responses; every member reads them from there.
//!
//! Every subscriber still starts its own execution, so rate limits, document limits, the credential check and
//! `NOT_FOUND` apply to each exactly as before. A newcomer reads its own stream until its first response; if that
//! equals the group's first response it joins the group (the rest of a `workflowEvents` stream is determined by its
//! start: every later event of the workflow, in order, until the workflow's final one) and its own execution is
//! dropped; otherwise it keeps its own stream. Only `workflowEvents` streams are shared: they end with their
//! workflow and replay from a fixed point; the `events` firehose does neither.
//!
//! Responses are serialised once, by the stream that produced them: every member of a group writes the same
//! [`Payload`] into its own message.

use std::any::TypeId;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use async_graphql::parser::types::{OperationType, Selection};
use async_graphql::{Data, Executor, Request, Response};
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};

use crate::auth::Caller;
use crate::graphql::request::is_request_error;
use crate::graphql::subscription::{ActiveSubscriptions, Guard};
use crate::ws::{Payload, Streams};

/// Root fields whose streams are shared.
const SHARED_FIELDS: [&str; 1] = ["workflowEvents"];
/// Responses a group keeps before it first drops those every member has read (and stops taking newcomers).
const KEEP: usize = 1024;

/// What makes two subscriptions the same stream.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    query: String,
    operation: Option<String>,
    variables: String,
    extensions: String,
    secret: String,
}

/// The sharing key of a request, if its stream may be shared: a subscription whose one root field is in
/// [`SHARED_FIELDS`], from a caller with a credential.
fn key_of(request: &Request, session: Option<&Data>) -> Option<Key> {
    let caller = session?.get(&TypeId::of::<Caller>())?.downcast_ref::<Caller>()?;
    let secret = caller.secret.clone()?;
    let doc = async_graphql::parser::parse_query(&request.query).ok()?;
    let op = match &request.operation_name {
        Some(name) => doc.operations.iter().find(|(n, _)| n.is_some_and(|n| n.as_str() == name))?.1,
        None => {
            let mut ops = doc.operations.iter();
            let (_, op) = ops.next()?;
            if ops.next().is_some() {
                return None;
            }
            op
        }
    };
    let items = &op.node.selection_set.node.items;
    let shared = op.node.ty == OperationType::Subscription
        && items.len() == 1
        && matches!(&items[0].node, Selection::Field(f) if SHARED_FIELDS.contains(&f.node.name.node.as_str()));
    if !shared {
        return None;
    }
    Some(Key {
        query: request.query.clone(),
        operation: request.operation_name.clone(),
        variables: serde_json::to_string(&request.variables).ok()?,
        extensions: serde_json::to_string(&request.extensions).ok()?,
        secret,
    })
}

/// A response as it goes out, and whether it has no errors.
struct Serialised {
    payload: Payload,
    ok: bool,
}

fn serialise(r: &Response) -> Serialised {
    // An operation refused before it ran is its list of errors (see [`Payload`]).
    let text = if is_request_error(r) { serde_json::to_string(&r.errors) } else { serde_json::to_string(r) };
    // A `Response` always serialises (its values are JSON values); the fallback is never sent in practice.
    let payload = text.unwrap_or_else(|e| {
        serde_json::json!({ "errors": [{ "message": format!("response not serialisable: {e}") }] }).to_string()
    });
    Serialised { payload: payload.into(), ok: r.errors.is_empty() }
}

/// An execution's responses, serialised.
fn serialised(stream: BoxStream<'static, Response>) -> BoxStream<'static, Serialised> {
    stream.map(|r| serialise(&r)).boxed()
}

type Registry = Arc<Mutex<HashMap<Key, Weak<Group>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Subscription streams of an [`Executor`] (the schema), identical ones sharing one execution.
#[derive(Clone)]
pub struct Shared<E> {
    inner: E,
    groups: Registry,
    active: ActiveSubscriptions,
}

impl<E> Shared<E> {
    /// `active` counts subscribers: one per member, as if each ran its own stream.
    pub fn new(inner: E, active: ActiveSubscriptions) -> Self {
        Self { inner, groups: Arc::default(), active }
    }

    /// Groups alive.
    #[cfg(test)]
    fn groups(&self) -> usize {
        lock(&self.groups).values().filter(|g| g.strong_count() > 0).count()
    }
}

impl<E: Executor> Streams for Shared<E> {
    fn stream(&self, request: Request, session: Arc<Data>) -> BoxStream<'static, Payload> {
        let key = key_of(&request, Some(&session));
        let own = self.inner.execute_stream(request, Some(session));
        let Some(key) = key else { return own.map(|r| serialise(&r).payload).boxed() };
        // Never drop a group while holding the registry lock: its `Drop` takes it.
        let existing = lock(&self.groups).get(&key).and_then(Weak::upgrade);
        if let Some(group) = existing.filter(|g| g.joinable()) {
            return Member::Candidate { own: serialised(own), group, active: self.active.clone(), held: None }.boxed();
        }
        let (group, id) = Group::start(serialised(own), key.clone(), Arc::downgrade(&self.groups), &self.active);
        let stale = lock(&self.groups).insert(key, Arc::downgrade(&group));
        drop(stale);
        Member::Reading(Membership { group, id, _guard: self.active.enter() }).boxed()
    }
}

/// One shared stream: the responses so far and the members reading them.
pub struct Group {
    state: Mutex<State>,
    driver: OnceLock<tokio::task::AbortHandle>,
    key: Key,
    registry: Weak<Mutex<HashMap<Key, Weak<Group>>>>,
}

#[derive(Default)]
struct State {
    /// The first response, which a newcomer's own first response must equal.
    first: Option<Serialised>,
    /// Responses from index `base` on.
    items: VecDeque<Payload>,
    base: usize,
    /// Some responses were dropped: newcomers can no longer be given the whole stream.
    trimmed: bool,
    /// Length of `items` after the last trim (the next trim waits for twice that).
    kept: usize,
    done: bool,
    next_id: u64,
    members: HashMap<u64, Slot>,
    /// Newcomers waiting for the first response.
    waiting: Vec<Waker>,
}

impl State {
    fn enter(&mut self, cursor: usize) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.members.insert(id, Slot { cursor, waker: None });
        id
    }
}

struct Slot {
    /// Index of the next response this member reads.
    cursor: usize,
    waker: Option<Waker>,
}

impl Group {
    /// A group over `own` (the first subscriber's stream), driven by a task of its own so that it outlives any one
    /// member; with that subscriber as its first member (entered before the task starts, so nothing is dropped
    /// before it read it).
    fn start(
        own: BoxStream<'static, Serialised>,
        key: Key,
        registry: Weak<Mutex<HashMap<Key, Weak<Group>>>>,
        active: &ActiveSubscriptions,
    ) -> (Arc<Self>, u64) {
        let group = Arc::new(Self { state: Mutex::default(), driver: OnceLock::new(), key, registry });
        let first_member = group.enter(0);
        let weak = Arc::downgrade(&group);
        // The driven stream counts itself as a subscriber; its members already do.
        let uncounted = active.exclude();
        let driver = tokio::spawn(async move {
            let _uncounted = uncounted;
            let mut own = own;
            let mut batch = Vec::new();
            while let Some(response) = own.next().await {
                // Everything ready goes to the members with one wake each: waking them per response had their
                // connections write one message at a time (and twice the CPU for the same events).
                batch.push(response);
                let mut ended = false;
                loop {
                    match own.next().now_or_never() {
                        Some(Some(response)) => batch.push(response),
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                let Some(group) = weak.upgrade() else { return };
                group.push(batch.drain(..), ended);
                if ended {
                    return;
                }
            }
            if let Some(group) = weak.upgrade() {
                group.push(std::iter::empty(), true);
            }
        });
        let _ = group.driver.set(driver.abort_handle());
        (group, first_member)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn joinable(&self) -> bool {
        let st = self.lock();
        // Not yet begun is fine (a newcomer waits for the first response); begun with an error is not. An ended
        // stream is not: a workflow that was final when it ended may have been resumed since (`retryWorkflow`), and
        // a newcomer's own stream would go on with it.
        let began_well = st.first.as_ref().is_none_or(|first| first.ok);
        !st.trimmed && !st.done && began_well
    }

    /// A new member reading from `cursor`.
    fn enter(&self, cursor: usize) -> u64 {
        self.lock().enter(cursor)
    }

    /// A newcomer whose own stream began with `first` joins if the group's stream began the same way; it reads on
    /// from the second response. Pending while the group has no first response yet.
    fn decide(&self, first: &Serialised, cx: &Context<'_>) -> Poll<Option<u64>> {
        let mut st = self.lock();
        let same = match &st.first {
            _ if st.trimmed || st.done || !first.ok => false,
            Some(theirs) => theirs.payload == first.payload,
            None => {
                st.waiting.push(cx.waker().clone());
                return Poll::Pending;
            }
        };
        if !same {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(st.enter(1)))
    }

    /// Appends responses (and the end of the stream, if `ended`) and wakes the members waiting.
    fn push(&self, responses: impl Iterator<Item = Serialised>, ended: bool) {
        let wakers: Vec<Waker> = {
            let mut st = self.lock();
            for response in responses {
                if st.first.is_none() && st.base == 0 && st.items.is_empty() {
                    st.first = Some(Serialised { payload: response.payload.clone(), ok: response.ok });
                }
                st.items.push_back(response.payload);
            }
            st.done |= ended;
            if st.items.len() > KEEP && st.items.len() >= 2 * st.kept {
                self.trim(&mut st);
            }
            let waiting = std::mem::take(&mut st.waiting);
            st.members.values_mut().filter_map(|s| s.waker.take()).chain(waiting).collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Drops the responses every member has read; from then on newcomers keep their own streams.
    fn trim(&self, st: &mut State) {
        let end = st.base + st.items.len();
        let read = st.members.values().map(|s| s.cursor).min().unwrap_or(end).max(st.base);
        st.items.drain(..read - st.base);
        st.base = read;
        st.trimmed = true;
        st.first = None;
        st.kept = st.items.len().max(KEEP / 2);
    }

    fn poll_member(&self, id: u64, cx: &mut Context<'_>) -> Poll<Option<Payload>> {
        let mut st = self.lock();
        let (base, len, done) = (st.base, st.items.len(), st.done);
        let Some(slot) = st.members.get_mut(&id) else { return Poll::Ready(None) };
        if slot.cursor < base + len {
            let at = slot.cursor.max(base) - base;
            slot.cursor = base + at + 1;
            return Poll::Ready(st.items.get(at).cloned());
        }
        if done {
            return Poll::Ready(None);
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn leave(&self, id: u64) {
        self.lock().members.remove(&id);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.get() {
            driver.abort();
        }
        if let Some(registry) = self.registry.upgrade() {
            let mut groups = lock(&registry);
            if groups.get(&self.key).is_some_and(|g| g.strong_count() == 0) {
                groups.remove(&self.key);
            }
        }
    }
}

/// One subscriber's stream.
enum Member {
    /// A newcomer reading its own stream until its first response (`held` until the group has its own first one)
    /// decides whether it joins `group`.
    Candidate {
        own: BoxStream<'static, Serialised>,
        group: Arc<Group>,
        active: ActiveSubscriptions,
        held: Option<Serialised>,
    },
    /// A member of a group.
    Reading(Membership),
    /// A subscriber on its own stream.
    Alone(BoxStream<'static, Serialised>),
    Ended,
}

impl Stream for Member {
    type Item = Payload;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Payload>> {
        let this = &mut *self;
        match this {
            Member::Reading(m) => m.group.poll_member(m.id, cx),
            Member::Alone(own) => own.poll_next_unpin(cx).map(|r| r.map(|r| r.payload)),
            Member::Ended => Poll::Ready(None),
            Member::Candidate { own, group, active, held } => {
                let first = match held {
                    Some(first) => first,
                    None => match own.poll_next_unpin(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(None) => {
                            *this = Member::Ended;
                            return Poll::Ready(None);
                        }
                        Poll::Ready(Some(first)) => held.insert(first),
                    },
                };
                let next = match group.decide(first, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(id)) => {
                        Member::Reading(Membership { group: group.clone(), id, _guard: active.enter() })
                    }
                    Poll::Ready(None) => match std::mem::replace(this, Member::Ended) {
                        Member::Candidate { own, held, .. } => {
                            *this = Member::Alone(own);
                            return Poll::Ready(held.map(|h| h.payload));
                        }
                        _ => Member::Ended,
                    },
                };
                // Joining drops the newcomer's own execution here.
                let first = match std::mem::replace(this, next) {
                    Member::Candidate { held, .. } => held.map(|h| h.payload),
                    _ => None,
                };
                Poll::Ready(first)
            }
        }
    }
}

/// A group member's place; leaving the group when dropped.
struct Membership {
    group: Arc<Group>,
    id: u64,
    _guard: Guard,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.group.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_graphql::{Value, Variables};
    use futures::channel::mpsc::{UnboundedSender, unbounded};

    use super::*;
    use crate::auth::Credential;

    const WATCH: &str = "subscription($id: ID!) { workflowEvents(workflowId: $id) { sequence } }";

    /// An executor whose streams the test feeds: every execution is recorded with the sender of its stream. Like
    /// the schema's subscription streams, each counts itself as active while it lives.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Vec<UnboundedSender<Response>>>>, ActiveSubscriptions);

    impl Fake {
        fn executions(&self) -> usize {
            lock(&self.0).len()
        }

        fn send(&self, execution: usize, sequence: i64) {
            let data = Value::from_json(serde_json::json!({ "workflowEvents": { "sequence": sequence } }));
            lock(&self.0)[execution].unbounded_send(Response::new(data.expect("json"))).expect("stream alive");
        }

        fn end(&self, execution: usize) {
            lock(&self.0)[execution].close_channel();
        }

        fn dropped(&self, execution: usize) -> bool {
            lock(&self.0)[execution].is_closed()
        }
    }

    impl Executor for Fake {
        async fn execute(&self, _request: Request) -> Response {
            Response::default()
        }

        fn execute_stream(&self, _request: Request, _session: Option<Arc<Data>>) -> BoxStream<'static, Response> {
            let (tx, rx) = unbounded();
            lock(&self.0).push(tx);
            let guard = self.1.enter();
            rx.map(move |r| {
                let _alive = &guard;
                r
            })
            .boxed()
        }
    }

    fn subscribe(shared: &Shared<Fake>, query: &str, workflow: &str, secret: &str) -> BoxStream<'static, Payload> {
        let variables = Variables::from_value(Value::from_json(serde_json::json!({ "id": workflow })).expect("json"));
        let mut data = Data::default();
        data.insert(Caller { credential: Credential::Missing, ip: None, secret: Some(secret.to_owned()) });
        shared.stream(Request::new(query).variables(variables), Arc::new(data))
    }

    async fn next_sequence(stream: &mut BoxStream<'static, Payload>) -> Option<i64> {
        let r = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("a response in time")?;
        let r: serde_json::Value = serde_json::from_str(&r).expect("a serialised response");
        Some(r["data"]["workflowEvents"]["sequence"].as_i64().expect("a sequence"))
    }

    /// A `WATCH` of workflow w1 whose own execution (the `execution`th) begins with event 1, read.
    async fn opened(shared: &Shared<Fake>, fake: &Fake, execution: usize) -> BoxStream<'static, Payload> {
        let mut stream = subscribe(shared, WATCH, "w1", "token");
        fake.send(execution, 1);
        assert_eq!(next_sequence(&mut stream).await, Some(1));
        stream
    }

    #[tokio::test]
    async fn the_same_stream_is_executed_once_after_each_subscribers_first_event() {
        let fake = Fake::default();
        let active = fake.1.clone();
        let shared = Shared::new(fake.clone(), active.clone());
        let mut first = opened(&shared, &fake, 0).await;

        let mut second = subscribe(&shared, WATCH, "w1", "token");
        assert_eq!(fake.executions(), 2, "a newcomer starts its own execution (limits, credential, NOT_FOUND)");
        fake.send(1, 1);
        assert_eq!(next_sequence(&mut second).await, Some(1));
        assert!(fake.dropped(1), "having begun like the group, the newcomer's own execution is dropped");
        assert_eq!(active.get(), 2, "both subscribers count");

        for s in 2..=4 {
            fake.send(0, s);
        }
        fake.end(0);
        for stream in [&mut first, &mut second] {
            for s in 2..=4 {
                assert_eq!(next_sequence(stream).await, Some(s));
            }
            assert_eq!(next_sequence(stream).await, None, "the stream ends for every member");
        }
        drop((first, second));
        assert_eq!(active.get(), 0);
        assert_eq!(shared.groups(), 0, "a group without members is gone");
    }

    #[tokio::test]
    async fn a_newcomer_ahead_of_the_group_waits_for_its_first_response_and_joins() {
        let fake = Fake::default();
        let shared = Shared::new(fake.clone(), ActiveSubscriptions::default());
        let mut first = subscribe(&shared, WATCH, "w1", "token");
        let mut second = subscribe(&shared, WATCH, "w1", "token");
        fake.send(1, 1);
        assert!(futures::poll!(second.next()).is_pending(), "the group has nothing to compare with yet");
        fake.send(0, 1);
        assert_eq!(next_sequence(&mut second).await, Some(1));
        assert!(fake.dropped(1), "it joined");
        fake.send(0, 2);
        assert_eq!(next_sequence(&mut first).await, Some(1));
        assert_eq!(next_sequence(&mut first).await, Some(2));
        assert_eq!(next_sequence(&mut second).await, Some(2));
    }

    #[tokio::test]
    async fn nobody_joins_a_stream_that_has_ended() {
        let fake = Fake::default();
        let shared = Shared::new(fake.clone(), ActiveSubscriptions::default());
        let mut first = subscribe(&shared, WATCH, "w1", "token");
        fake.send(0, 1);
        fake.end(0);
        assert_eq!(next_sequence(&mut first).await, Some(1));
        // `first` has not read the end yet, so the group is still there; its workflow may have been resumed since.
        let mut second = subscribe(&shared, WATCH, "w1", "token");
        fake.send(1, 1);
        fake.send(1, 2);
        assert_eq!(next_sequence(&mut second).await, Some(1));
        assert_eq!(next_sequence(&mut second).await, Some(2), "it goes on with its own stream");
        assert!(!fake.dropped(1));
        assert_eq!(next_sequence(&mut first).await, None);
    }

    #[tokio::test]
    async fn a_newcomer_whose_stream_began_differently_keeps_its_own() {
        let fake = Fake::default();
        let shared = Shared::new(fake.clone(), ActiveSubscriptions::default());
        let mut first = opened(&shared, &fake, 0).await;
        let mut second = subscribe(&shared, WATCH, "w1", "token");
        fake.send(1, 7);
        assert_eq!(next_sequence(&mut second).await, Some(7));
        assert!(!fake.dropped(1));
        fake.send(1, 8);
        fake.send(0, 2);
        assert_eq!(next_sequence(&mut second).await, Some(8), "it reads its own stream");
        assert_eq!(next_sequence(&mut first).await, Some(2));
    }

    #[tokio::test]
    async fn the_group_outlives_the_subscriber_that_started_it() {
        let fake = Fake::default();
        let active = fake.1.clone();
        let shared = Shared::new(fake.clone(), active.clone());
        let first = opened(&shared, &fake, 0).await;
        let mut second = opened(&shared, &fake, 1).await;
        drop(first);
        assert_eq!(active.get(), 1);
        fake.send(0, 2);
        assert_eq!(next_sequence(&mut second).await, Some(2));
        drop(second);
        tokio::task::yield_now().await;
        assert!(fake.dropped(0), "the last member gone, the shared execution stops");
    }

    #[tokio::test]
    async fn other_credentials_variables_and_fields_are_not_shared() {
        let fake = Fake::default();
        let shared = Shared::new(fake.clone(), ActiveSubscriptions::default());
        let mut streams = vec![subscribe(&shared, WATCH, "w1", "token")];
        fake.send(0, 1);
        assert_eq!(next_sequence(&mut streams[0]).await, Some(1));
        streams.push(subscribe(&shared, WATCH, "w1", "another token"));
        streams.push(subscribe(&shared, WATCH, "w2", "token"));
        streams.push(subscribe(&shared, "subscription { events { sequence } }", "w1", "token"));
        assert_eq!(shared.groups(), 3, "one group per credential and workflow; the firehose has none");
        for (i, stream) in streams.iter_mut().enumerate().skip(1) {
            fake.send(i, 1);
            if i < 3 {
                assert_eq!(next_sequence(stream).await, Some(1));
            }
        }
        fake.send(0, 2);
        assert_eq!(next_sequence(&mut streams[0]).await, Some(2));
        assert!(!fake.dropped(1) && !fake.dropped(2) && !fake.dropped(3));
    }

    #[tokio::test]
    async fn a_long_stream_drops_what_everyone_read_and_then_takes_no_newcomers() {
        let fake = Fake::default();
        let shared = Shared::new(fake.clone(), ActiveSubscriptions::default());
        let mut first = subscribe(&shared, WATCH, "w1", "token");
        let total = 3 * KEEP as i64;
        for s in 1..=total {
            fake.send(0, s);
            assert_eq!(next_sequence(&mut first).await, Some(s));
        }
        let group = lock(&shared.groups).values().find_map(Weak::upgrade).expect("a group");
        assert!(group.lock().base > 0 && group.lock().items.len() <= KEEP + 1, "read responses are dropped");
        assert!(!group.joinable());
        let mut late = subscribe(&shared, WATCH, "w1", "token");
        fake.send(1, 1);
        assert_eq!(next_sequence(&mut late).await, Some(1));
        assert!(!fake.dropped(1), "a newcomer that would miss dropped responses keeps its own stream");
    }
}
