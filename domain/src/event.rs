//! Domain events: every state change appends one, with a per-workflow sequence number.

use std::fmt;
use std::str::FromStr;

use crate::status::UnknownStatus;

macro_rules! event_types {
    ($($variant:ident => $text:literal),+ $(,)?) => {
        /// The kind of a domain event. The names are part of the public API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum EventType { $($variant),+ }

        impl EventType {
            /// Every event type.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            /// The stable, upper-case name.
            pub const fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $text),+ }
            }
        }

        impl FromStr for EventType {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(EventType::$variant),)+
                    other => Err(UnknownStatus(other.to_owned())),
                }
            }
        }
    };
}

event_types! {
    WorkflowStarted => "WORKFLOW_STARTED",
    TaskQueued => "TASK_QUEUED",
    TaskStarted => "TASK_STARTED",
    TaskCompleted => "TASK_COMPLETED",
    TaskFailed => "TASK_FAILED",
    TaskRetrying => "TASK_RETRYING",
    TaskCancelled => "TASK_CANCELLED",
    WorkflowCompleted => "WORKFLOW_COMPLETED",
    WorkflowFailed => "WORKFLOW_FAILED",
    CompensationStarted => "COMPENSATION_STARTED",
    TaskCompensating => "TASK_COMPENSATING",
    TaskCompensated => "TASK_COMPENSATED",
    TaskCompensationFailed => "TASK_COMPENSATION_FAILED",
    WorkflowCompensated => "WORKFLOW_COMPENSATED",
    WorkflowCancelled => "WORKFLOW_CANCELLED",
    WorkflowPaused => "WORKFLOW_PAUSED",
    WorkflowResumed => "WORKFLOW_RESUMED",
}

impl EventType {
    /// Whether this event ends a workflow run (a subscription completes after it).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventType::WorkflowCompleted
                | EventType::WorkflowFailed
                | EventType::WorkflowCompensated
                | EventType::WorkflowCancelled
        )
    }

    /// Whether the workflow may have ended with this event: a terminal one, or the end of a compensation. A failed
    /// saga ends the workflow COMPENSATION_FAILED without an event of its own, with the last compensation to end:
    /// the one failing for good, or one completing after another one failed for good.
    pub fn may_end_workflow(self) -> bool {
        self.is_terminal() || matches!(self, EventType::TaskCompensationFailed | EventType::TaskCompensated)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event about to be appended; the store assigns its sequence number and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: EventType,
    pub task_key: Option<String>,
    pub data: serde_json::Value,
}

impl NewEvent {
    /// A workflow-level event without data.
    pub fn workflow(event_type: EventType) -> Self {
        Self { event_type, task_key: None, data: serde_json::Value::Null }
    }

    /// A task-level event without data.
    pub fn task(event_type: EventType, key: impl Into<String>) -> Self {
        Self { event_type, task_key: Some(key.into()), data: serde_json::Value::Null }
    }

    /// The same event with data attached.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip() {
        assert_eq!(EventType::ALL.len(), 17);
        for &e in EventType::ALL {
            assert_eq!(e.as_str().parse::<EventType>().unwrap(), e);
        }
    }

    #[test]
    fn terminal_events_end_a_run() {
        let terminal: Vec<_> = EventType::ALL.iter().copied().filter(|e| e.is_terminal()).collect();
        assert_eq!(
            terminal,
            vec![
                EventType::WorkflowCompleted,
                EventType::WorkflowFailed,
                EventType::WorkflowCompensated,
                EventType::WorkflowCancelled
            ]
        );
    }

    #[test]
    fn a_workflow_may_end_with_a_terminal_event_or_a_compensation_s_end() {
        let ending: Vec<_> = EventType::ALL.iter().copied().filter(|e| e.may_end_workflow()).collect();
        assert_eq!(ending.len(), 6, "{ending:?}");
        assert!(ending.contains(&EventType::TaskCompensated) && ending.contains(&EventType::TaskCompensationFailed));
        assert!(!EventType::TaskCompensating.may_end_workflow() && !EventType::TaskCompleted.may_end_workflow());
    }
}
