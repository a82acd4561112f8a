//! Workflow definitions as DAGs of tasks, and their validation.

use std::collections::HashMap;

use crate::retry::RetryPolicy;

/// Per-task execution settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskConfig {
    /// An attempt running longer than this is cancelled and fails.
    pub timeout_ms: Option<u64>,
    /// 0–9, higher first; default 5.
    pub priority: Priority,
    /// Handed to the handler so side effects can be de-duplicated downstream.
    pub idempotency_key: Option<String>,
}

/// Task priority, 0–9, higher runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Priority(u8);

impl Priority {
    pub const MAX: u8 = 9;

    /// A priority, if `value` is within 0–9.
    pub fn new(value: i64) -> Option<Self> {
        (0..=i64::from(Self::MAX)).contains(&value).then_some(Self(value as u8))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self(5)
    }
}

/// The compensating action of a task (saga).
#[derive(Debug, Clone, PartialEq)]
pub struct CompensationSpec {
    pub kind: String,
    pub payload: serde_json::Value,
    pub retry: RetryPolicy,
}

/// One task of a workflow definition.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub key: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub depends_on: Vec<String>,
    pub retry: RetryPolicy,
    pub config: TaskConfig,
    pub compensation: Option<CompensationSpec>,
}

impl TaskSpec {
    /// A task with default settings.
    pub fn new(key: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            kind: kind.into(),
            payload: serde_json::Value::Null,
            depends_on: Vec::new(),
            retry: RetryPolicy::default(),
            config: TaskConfig::default(),
            compensation: None,
        }
    }

    /// The same task depending on `deps`.
    pub fn after(mut self, deps: &[&str]) -> Self {
        self.depends_on = deps.iter().map(|d| (*d).to_owned()).collect();
        self
    }
}

/// A workflow definition as submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSpec {
    pub name: String,
    pub idempotency_key: Option<String>,
    pub tasks: Vec<TaskSpec>,
}

impl WorkflowSpec {
    /// A stable fingerprint of the whole definition (FNV-1a, 64 bit, over its canonical JSON form), used to tell
    /// a true resubmission from a reused idempotency key.
    pub fn content_hash(&self) -> String {
        let tasks: Vec<serde_json::Value> = self
            .tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "key": t.key, "kind": t.kind, "payload": t.payload, "dependsOn": t.depends_on,
                    "retry": t.retry, "timeoutMs": t.config.timeout_ms, "priority": t.config.priority.get(),
                    "idempotencyKey": t.config.idempotency_key,
                    "compensation": t.compensation.as_ref().map(|c| serde_json::json!({
                        "kind": c.kind, "payload": c.payload, "retry": c.retry
                    })),
                })
            })
            .collect();
        let canonical = serde_json::json!({ "name": self.name, "tasks": tasks }).to_string();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in canonical.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

/// Configured bounds of a workflow definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_tasks: usize,
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_tasks: 10_000, max_payload_bytes: 256 * 1024 }
    }
}

/// Why a workflow definition is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("a workflow needs at least one task")]
    Empty,
    #[error("workflow name must be 1 to 200 characters")]
    InvalidName,
    #[error("a workflow may have at most {max} tasks, this one has {count}")]
    TooManyTasks { count: usize, max: usize },
    #[error("task key `{key}` is invalid: keys are 1 to 128 characters of A-Z a-z 0-9 _ . -")]
    InvalidKey { key: String },
    #[error("task key `{key}` is used more than once")]
    DuplicateKey { key: String },
    #[error("task `{key}` has an invalid kind: kinds are 1 to 128 characters of A-Z a-z 0-9 _ . -")]
    InvalidKind { key: String },
    #[error("task `{key}` depends on itself")]
    SelfDependency { key: String },
    #[error("task `{key}` lists its dependency `{dependency}` more than once")]
    RepeatedDependency { key: String, dependency: String },
    #[error("task `{key}` depends on `{dependency}`, which is not a task of this workflow")]
    UnknownDependency { key: String, dependency: String },
    #[error("the dependencies form a cycle: {}", path.join(" -> "))]
    Cycle { path: Vec<String> },
    #[error("the payload of task `{key}` is {size} bytes, more than the limit of {max} bytes")]
    PayloadTooLarge { key: String, size: usize, max: usize },
    #[error("task `{key}` has priority {priority}: priorities are 0 to 9")]
    InvalidPriority { key: String, priority: i64 },
    #[error("task `{key}` has timeoutMs {timeout_ms}: it must be between 1 and 86400000")]
    InvalidTimeout { key: String, timeout_ms: i64 },
    #[error("task `{key}`: {source}")]
    InvalidRetry { key: String, source: crate::retry::Error },
    #[error("the payload of task `{key}` nests arrays and objects {depth} levels deep, more than the limit of {max}")]
    PayloadTooDeep { key: String, depth: usize, max: usize },
    #[error("idempotency keys are 1 to 256 characters")]
    InvalidIdempotencyKey,
    #[error("task `{key}`: idempotency keys are 1 to 256 characters")]
    InvalidTaskIdempotencyKey { key: String },
}

/// Whether an idempotency key (of a workflow or a task) is 1–256 characters (not bytes).
pub fn is_valid_idempotency_key(key: &str) -> bool {
    !key.is_empty() && key.chars().count() <= 256
}

/// Whether `key` is 1–128 characters of `[A-Za-z0-9_.-]`.
pub fn is_valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a numeric priority from the API.
pub fn priority(key: &str, value: Option<i64>) -> Result<Priority, Error> {
    match value {
        None => Ok(Priority::default()),
        Some(v) => Priority::new(v).ok_or(Error::InvalidPriority { key: key.to_owned(), priority: v }),
    }
}

/// Checks a timeout from the API.
pub fn timeout(key: &str, value: Option<i64>) -> Result<Option<u64>, Error> {
    match value {
        None => Ok(None),
        Some(v) if (1..=86_400_000).contains(&v) => Ok(Some(v as u64)),
        Some(v) => Err(Error::InvalidTimeout { key: key.to_owned(), timeout_ms: v }),
    }
}

/// A workflow definition that passed validation, with its tasks in a topological order.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedWorkflow {
    pub spec: WorkflowSpec,
    /// Indexes into `spec.tasks`, every task after all of its dependencies.
    pub topological_order: Vec<usize>,
}

impl ValidatedWorkflow {
    /// Indexes of the tasks with no dependencies: they are ready at submission.
    pub fn roots(&self) -> impl Iterator<Item = usize> + '_ {
        self.spec.tasks.iter().enumerate().filter(|(_, t)| t.depends_on.is_empty()).map(|(i, _)| i)
    }
}

/// Validates a workflow definition: non-empty, within limits, well-formed keys, known dependencies and no cycle.
pub fn validate(spec: WorkflowSpec, limits: &Limits) -> Result<ValidatedWorkflow, Error> {
    if spec.name.is_empty() || spec.name.chars().count() > 200 {
        return Err(Error::InvalidName);
    }
    if spec.idempotency_key.as_deref().is_some_and(|k| !is_valid_idempotency_key(k)) {
        return Err(Error::InvalidIdempotencyKey);
    }
    if spec.tasks.is_empty() {
        return Err(Error::Empty);
    }
    if spec.tasks.len() > limits.max_tasks {
        return Err(Error::TooManyTasks { count: spec.tasks.len(), max: limits.max_tasks });
    }
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(spec.tasks.len());
    for (i, task) in spec.tasks.iter().enumerate() {
        if !is_valid_key(&task.key) {
            return Err(Error::InvalidKey { key: task.key.clone() });
        }
        if !is_valid_key(&task.kind) {
            return Err(Error::InvalidKind { key: task.key.clone() });
        }
        if let Some(c) = &task.compensation
            && !is_valid_key(&c.kind)
        {
            return Err(Error::InvalidKind { key: task.key.clone() });
        }
        if task.config.idempotency_key.as_deref().is_some_and(|k| !is_valid_idempotency_key(k)) {
            return Err(Error::InvalidTaskIdempotencyKey { key: task.key.clone() });
        }
        if index.insert(task.key.as_str(), i).is_some() {
            return Err(Error::DuplicateKey { key: task.key.clone() });
        }
        let depth = crate::json::depth(&task.payload)
            .max(task.compensation.as_ref().map_or(0, |c| crate::json::depth(&c.payload)));
        if depth > crate::json::MAX_JSON_DEPTH {
            return Err(Error::PayloadTooDeep { key: task.key.clone(), depth, max: crate::json::MAX_JSON_DEPTH });
        }
        let size = payload_size(&task.payload) + task.compensation.as_ref().map_or(0, |c| payload_size(&c.payload));
        if size > limits.max_payload_bytes {
            return Err(Error::PayloadTooLarge { key: task.key.clone(), size, max: limits.max_payload_bytes });
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(spec.tasks.len());
    for task in &spec.tasks {
        let mut mine = Vec::with_capacity(task.depends_on.len());
        for dep in &task.depends_on {
            if dep == &task.key {
                return Err(Error::SelfDependency { key: task.key.clone() });
            }
            match index.get(dep.as_str()) {
                Some(&j) => {
                    // Counted once it would be waited for twice and never start: refused, like a repeated key.
                    if mine.contains(&j) {
                        return Err(Error::RepeatedDependency { key: task.key.clone(), dependency: dep.clone() });
                    }
                    mine.push(j);
                }
                None => {
                    return Err(Error::UnknownDependency { key: task.key.clone(), dependency: dep.clone() });
                }
            }
        }
        deps.push(mine);
    }
    let order = topological_order(&deps)
        .map_err(|cycle| Error::Cycle { path: cycle.into_iter().map(|i| spec.tasks[i].key.clone()).collect() })?;
    Ok(ValidatedWorkflow { spec, topological_order: order })
}

fn payload_size(value: &serde_json::Value) -> usize {
    if value.is_null() { 0 } else { serde_json::to_vec(value).map_or(usize::MAX, |v| v.len()) }
}

/// Kahn's algorithm over `deps[i]` = dependencies of node `i`. On a cycle, returns the nodes of one cycle with
/// the first node repeated at the end (`a -> b -> a`), following dependency edges.
pub fn topological_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        indegree[i] = ds.len();
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let node = order[next];
        next += 1;
        for &m in &dependents[node] {
            indegree[m] -= 1;
            if indegree[m] == 0 {
                order.push(m);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every node left has a dependency that is also left: walk dependencies until a node repeats.
    let start = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
    let mut seen_at = vec![usize::MAX; n];
    let mut path = Vec::new();
    let mut node = start;
    while seen_at[node] == usize::MAX {
        seen_at[node] = path.len();
        path.push(node);
        node = deps[node].iter().copied().find(|&d| indegree[d] > 0).unwrap_or(node);
    }
    let mut cycle: Vec<usize> = path[seen_at[node]..].to_vec();
    // Present the cycle in the direction of the arrows `a -> b` meaning "a is needed by b".
    cycle.reverse();
    let first = cycle[0];
    cycle.push(first);
    Ok(cycle).and_then(Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf(tasks: Vec<TaskSpec>) -> WorkflowSpec {
        WorkflowSpec { name: "wf".into(), idempotency_key: None, tasks }
    }

    fn check(tasks: Vec<TaskSpec>) -> Result<ValidatedWorkflow, Error> {
        validate(wf(tasks), &Limits::default())
    }

    #[test]
    fn diamond_is_valid_and_ordered() {
        let v = check(vec![
            TaskSpec::new("d", "noop").after(&["b", "c"]),
            TaskSpec::new("b", "noop").after(&["a"]),
            TaskSpec::new("c", "noop").after(&["a"]),
            TaskSpec::new("a", "noop"),
        ])
        .unwrap();
        let pos = |k: &str| v.topological_order.iter().position(|&i| v.spec.tasks[i].key == k).unwrap();
        assert!(pos("a") < pos("b") && pos("a") < pos("c") && pos("b") < pos("d") && pos("c") < pos("d"));
        assert_eq!(v.roots().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn cycle_is_named_in_arrow_order() {
        // a -> b -> c -> a: b depends on a, c on b, a on c
        let err = check(vec![
            TaskSpec::new("a", "noop").after(&["c"]),
            TaskSpec::new("b", "noop").after(&["a"]),
            TaskSpec::new("c", "noop").after(&["b"]),
        ])
        .unwrap_err();
        let Error::Cycle { path } = &err else { panic!("{err:?}") };
        assert_eq!(path.len(), 4);
        assert_eq!(path.first(), path.last());
        let text = err.to_string();
        assert!(
            ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"].iter().any(|c| text.ends_with(c)),
            "{text}"
        );
    }

    #[test]
    fn cycle_hanging_off_a_valid_part_names_only_the_cycle() {
        let err = check(vec![
            TaskSpec::new("root", "noop"),
            TaskSpec::new("x", "noop").after(&["root", "y"]),
            TaskSpec::new("y", "noop").after(&["x"]),
            TaskSpec::new("tail", "noop").after(&["y"]),
        ])
        .unwrap_err();
        let Error::Cycle { path } = err else { panic!() };
        let mut inner = path[..path.len() - 1].to_vec();
        inner.sort();
        assert_eq!(inner, vec!["x", "y"]);
    }

    #[test]
    fn each_invalid_definition_has_its_error() {
        let long = "k".repeat(129);
        let big = serde_json::json!({ "blob": "x".repeat(300 * 1024) });
        let cases: Vec<(Vec<TaskSpec>, Error)> = vec![
            (vec![], Error::Empty),
            (vec![TaskSpec::new("a", "noop").after(&["a"])], Error::SelfDependency { key: "a".into() }),
            (
                vec![TaskSpec::new("a", "noop").after(&["zz"])],
                Error::UnknownDependency { key: "a".into(), dependency: "zz".into() },
            ),
            (vec![TaskSpec::new("a", "noop"), TaskSpec::new("a", "echo")], Error::DuplicateKey { key: "a".into() }),
            (
                vec![
                    TaskSpec::new("a", "noop"),
                    TaskSpec::new("c", "noop"),
                    TaskSpec::new("b", "noop").after(&["a", "c", "a"]),
                ],
                Error::RepeatedDependency { key: "b".into(), dependency: "a".into() },
            ),
            (
                vec![TaskSpec {
                    config: TaskConfig { idempotency_key: Some(String::new()), ..TaskConfig::default() },
                    ..TaskSpec::new("a", "noop")
                }],
                Error::InvalidTaskIdempotencyKey { key: "a".into() },
            ),
            (vec![TaskSpec::new("bad key", "noop")], Error::InvalidKey { key: "bad key".into() }),
            (vec![TaskSpec::new("", "noop")], Error::InvalidKey { key: String::new() }),
            (vec![TaskSpec::new(long.clone(), "noop")], Error::InvalidKey { key: long }),
            (vec![TaskSpec::new("a", "no op")], Error::InvalidKind { key: "a".into() }),
            (
                vec![TaskSpec { payload: big, ..TaskSpec::new("a", "noop") }],
                Error::PayloadTooLarge { key: "a".into(), size: 307_211, max: 262_144 },
            ),
            (
                vec![TaskSpec {
                    payload: (0..101).fold(serde_json::json!(1), |v, _| serde_json::json!([v])),
                    ..TaskSpec::new("a", "noop")
                }],
                Error::PayloadTooDeep { key: "a".into(), depth: 101, max: 100 },
            ),
            (
                vec![TaskSpec {
                    config: TaskConfig { idempotency_key: Some("é".repeat(257)), ..TaskConfig::default() },
                    ..TaskSpec::new("a", "noop")
                }],
                Error::InvalidTaskIdempotencyKey { key: "a".into() },
            ),
        ];
        for (tasks, expected) in cases {
            assert_eq!(check(tasks).unwrap_err(), expected);
        }
        // Idempotency keys are counted in characters: 256 two-byte characters are fine.
        let accented = TaskSpec {
            config: TaskConfig { idempotency_key: Some("é".repeat(256)), ..TaskConfig::default() },
            ..TaskSpec::new("a", "noop")
        };
        assert!(check(vec![accented]).is_ok());
        let mut spec = wf(vec![TaskSpec::new("a", "noop")]);
        spec.idempotency_key = Some("é".repeat(256));
        assert!(validate(spec.clone(), &Limits::default()).is_ok());
        spec.idempotency_key = Some("é".repeat(257));
        assert_eq!(validate(spec, &Limits::default()).unwrap_err(), Error::InvalidIdempotencyKey);
    }

    #[test]
    fn content_hash_tells_content_apart() {
        let a = wf(vec![TaskSpec::new("a", "noop")]);
        let mut b = a.clone();
        assert_eq!(a.content_hash(), b.content_hash());
        b.tasks[0].payload = serde_json::json!({"x": 1});
        assert_ne!(a.content_hash(), b.content_hash());
        let mut c = a.clone();
        c.idempotency_key = Some("k".into());
        assert_eq!(a.content_hash(), c.content_hash(), "the key itself is not content");
    }

    #[test]
    fn key_alphabet_and_length() {
        assert!(is_valid_key("A-z_0.9"));
        assert!(is_valid_key(&"k".repeat(128)));
        assert!(!is_valid_key("é"));
        assert!(!is_valid_key("a/b"));
    }

    #[test]
    fn task_count_limit_is_configurable() {
        let tasks: Vec<_> = (0..11).map(|i| TaskSpec::new(format!("t{i}"), "noop")).collect();
        let limits = Limits { max_tasks: 10, ..Limits::default() };
        assert_eq!(validate(wf(tasks.clone()), &limits).unwrap_err(), Error::TooManyTasks { count: 11, max: 10 });
        assert!(validate(wf(tasks), &Limits::default()).is_ok());
    }

    #[test]
    fn ten_thousand_task_chain_validates_without_recursion() {
        let tasks: Vec<_> = (0..10_000)
            .map(|i| {
                let t = TaskSpec::new(format!("t{i}"), "noop");
                if i == 0 { t } else { t.after(&[&format!("t{}", i - 1)]) }
            })
            .collect();
        let v = check(tasks).unwrap();
        assert_eq!(v.topological_order, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn priority_and_timeout_bounds() {
        assert_eq!(priority("a", None).unwrap().get(), 5);
        assert_eq!(priority("a", Some(9)).unwrap().get(), 9);
        assert_eq!(priority("a", Some(10)), Err(Error::InvalidPriority { key: "a".into(), priority: 10 }));
        assert_eq!(priority("a", Some(-1)), Err(Error::InvalidPriority { key: "a".into(), priority: -1 }));
        assert_eq!(timeout("a", Some(200)), Ok(Some(200)));
        assert_eq!(timeout("a", Some(0)), Err(Error::InvalidTimeout { key: "a".into(), timeout_ms: 0 }));
    }
}
