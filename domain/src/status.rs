//! Task and workflow status machines. Every change of status goes through `transition`, which refuses an
//! illegal move with a typed error.

use std::fmt;
use std::str::FromStr;

/// A status change that the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {entity} transition from {from} to {to}")]
pub struct TransitionError {
    pub entity: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

/// A status name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

macro_rules! status_enum {
    ($name:ident, $entity:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every status, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable, upper-case name used in the API and the database.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Moves to `to` if the state machine allows it.
            pub fn transition(self, to: $name) -> Result<$name, TransitionError> {
                if self.can_transition_to(to) {
                    Ok(to)
                } else {
                    Err(TransitionError { entity: $entity, from: self.as_str(), to: to.as_str() })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownStatus(other.to_owned())),
                }
            }
        }
    };
}

status_enum!(TaskStatus, "task", {
    Pending => "PENDING",
    Queued => "QUEUED",
    Running => "RUNNING",
    Retrying => "RETRYING",
    Completed => "COMPLETED",
    Failed => "FAILED",
    Cancelled => "CANCELLED",
    Compensating => "COMPENSATING",
    Compensated => "COMPENSATED",
    CompensationFailed => "COMPENSATION_FAILED",
});

status_enum!(WorkflowStatus, "workflow", {
    Pending => "PENDING",
    Running => "RUNNING",
    Paused => "PAUSED",
    Completed => "COMPLETED",
    Failed => "FAILED",
    Compensating => "COMPENSATING",
    Compensated => "COMPENSATED",
    CompensationFailed => "COMPENSATION_FAILED",
    Cancelled => "CANCELLED",
});

impl TaskStatus {
    /// Whether the state machine allows a move from `self` to `to`.
    pub fn can_transition_to(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, to),
            // waiting on dependencies → ready, or never run
            (Pending, Queued) | (Pending, Cancelled)
            // claimed by a worker, or never run
            | (Queued, Running) | (Queued, Cancelled)
            // an attempt ends; a released attempt (graceful shutdown) goes back to the queue
            | (Running, Completed) | (Running, Failed) | (Running, Retrying) | (Running, Cancelled)
            | (Running, Queued)
            // a retry comes due and is claimed
            | (Retrying, Running) | (Retrying, Cancelled)
            // saga: a completed task is compensated
            | (Completed, Compensating)
            | (Compensating, Compensated) | (Compensating, CompensationFailed)
            // operator retries
            | (Failed, Pending) | (Failed, Queued) | (Cancelled, Pending) | (Cancelled, Queued)
            | (CompensationFailed, Compensating)
        )
    }

    /// No further change happens without an operator.
    pub fn is_final(self) -> bool {
        use TaskStatus::*;
        matches!(self, Completed | Failed | Cancelled | Compensated | CompensationFailed)
    }
}

impl WorkflowStatus {
    /// Whether the state machine allows a move from `self` to `to`.
    pub fn can_transition_to(self, to: WorkflowStatus) -> bool {
        use WorkflowStatus::*;
        matches!(
            (self, to),
            (Pending, Running)
                | (Pending, Cancelled)
                | (Running, Paused)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Compensating)
                | (Running, Cancelled)
                | (Paused, Running)
                | (Paused, Cancelled)
                | (Paused, Failed)
                | (Paused, Compensating)
                | (Paused, Completed)
                | (Compensating, Compensated)
                | (Compensating, CompensationFailed)
                | (Failed, Running)
                | (Cancelled, Running)
                | (CompensationFailed, Compensating)
        )
    }

    /// The workflow has stopped: its last event has been written (an operator retry may reopen it).
    pub fn is_terminal(self) -> bool {
        use WorkflowStatus::*;
        matches!(self, Completed | Failed | Compensated | CompensationFailed | Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_transition_table_is_exactly_the_documented_one() {
        use TaskStatus::*;
        let legal = [
            (Pending, Queued),
            (Pending, Cancelled),
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Completed),
            (Running, Failed),
            (Running, Retrying),
            (Running, Cancelled),
            (Running, Queued),
            (Retrying, Running),
            (Retrying, Cancelled),
            (Completed, Compensating),
            (Compensating, Compensated),
            (Compensating, CompensationFailed),
            (Failed, Pending),
            (Failed, Queued),
            (Cancelled, Pending),
            (Cancelled, Queued),
            (CompensationFailed, Compensating),
        ];
        for &from in TaskStatus::ALL {
            for &to in TaskStatus::ALL {
                let expected = legal.contains(&(from, to));
                let got = from.transition(to);
                assert_eq!(got.is_ok(), expected, "{from} -> {to}");
                if let Err(e) = got {
                    assert_eq!(e.to_string(), format!("illegal task transition from {from} to {to}"));
                }
            }
        }
    }

    #[test]
    fn workflow_transition_table_is_exactly_the_documented_one() {
        use WorkflowStatus::*;
        let legal = [
            (Pending, Running),
            (Pending, Cancelled),
            (Running, Paused),
            (Running, Completed),
            (Running, Failed),
            (Running, Compensating),
            (Running, Cancelled),
            (Paused, Running),
            (Paused, Cancelled),
            (Paused, Failed),
            (Paused, Compensating),
            (Paused, Completed),
            (Compensating, Compensated),
            (Compensating, CompensationFailed),
            (Failed, Running),
            (Cancelled, Running),
            (CompensationFailed, Compensating),
        ];
        for &from in WorkflowStatus::ALL {
            for &to in WorkflowStatus::ALL {
                assert_eq!(from.transition(to).is_ok(), legal.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for &s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
        }
        for &s in WorkflowStatus::ALL {
            assert_eq!(s.as_str().parse::<WorkflowStatus>().unwrap(), s);
        }
        assert_eq!("running".parse::<TaskStatus>(), Err(UnknownStatus("running".into())));
    }

    #[test]
    fn terminal_workflow_statuses() {
        use WorkflowStatus::*;
        let terminal: Vec<_> = WorkflowStatus::ALL.iter().copied().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![Completed, Failed, Compensated, CompensationFailed, Cancelled]);
    }
}
