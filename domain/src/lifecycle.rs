//! Operator actions on a workflow: which statuses allow them, and what an operator retry re-runs.

use crate::status::{TaskStatus, WorkflowStatus};

/// An operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Pause,
    Resume,
    Retry,
}

impl Action {
    /// The verb for messages ("cannot be cancelled").
    pub fn past_participle(self) -> &'static str {
        match self {
            Action::Cancel => "cancelled",
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Retry => "retried",
        }
    }

    /// The status the workflow moves to, if `action` is allowed from `current`.
    pub fn target(self, current: WorkflowStatus) -> Option<WorkflowStatus> {
        use WorkflowStatus::*;
        let to = match (self, current) {
            (Action::Cancel, Pending | Running | Paused) => Cancelled,
            (Action::Pause, Running) => Paused,
            (Action::Resume, Paused) => Running,
            (Action::Retry, Failed | Cancelled) => Running,
            (Action::Retry, CompensationFailed) => Compensating,
            _ => return None,
        };
        debug_assert!(current.can_transition_to(to));
        Some(to)
    }
}

/// What an operator retry does to one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStep {
    /// Its dependencies are complete: queue it now.
    Queue,
    /// Wait for this many dependencies that will re-run first.
    Wait { pending: usize },
}

/// For a retry of a failed or cancelled workflow: every FAILED or CANCELLED task runs again (COMPLETED results are
/// kept). `deps[i]` are the indexes of task `i`'s dependencies.
pub fn retry_plan(statuses: &[TaskStatus], deps: &[Vec<usize>]) -> Vec<(usize, RetryStep)> {
    statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, TaskStatus::Failed | TaskStatus::Cancelled))
        .map(|(i, _)| {
            let pending = deps[i].iter().filter(|&&d| statuses[d] != TaskStatus::Completed).count();
            (i, if pending == 0 { RetryStep::Queue } else { RetryStep::Wait { pending } })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    #[test]
    fn allowed_actions_by_status() {
        use WorkflowStatus as W;
        let table = [
            (Action::Cancel, W::Running, Some(W::Cancelled)),
            (Action::Cancel, W::Paused, Some(W::Cancelled)),
            (Action::Cancel, W::Completed, None),
            (Action::Cancel, W::Cancelled, None),
            (Action::Pause, W::Running, Some(W::Paused)),
            (Action::Pause, W::Paused, None),
            (Action::Resume, W::Paused, Some(W::Running)),
            (Action::Resume, W::Running, None),
            (Action::Retry, W::Failed, Some(W::Running)),
            (Action::Retry, W::Cancelled, Some(W::Running)),
            (Action::Retry, W::CompensationFailed, Some(W::Compensating)),
            (Action::Retry, W::Completed, None),
            (Action::Retry, W::Compensated, None),
        ];
        for (action, from, to) in table {
            assert_eq!(action.target(from), to, "{action:?} from {from}");
        }
    }

    #[test]
    fn retry_reruns_failed_and_cancelled_and_keeps_completed() {
        // a (completed) -> b (failed) -> c (cancelled); d (cancelled) depends on a only
        let statuses = [Completed, Failed, Cancelled, Cancelled];
        let deps = vec![vec![], vec![0], vec![1], vec![0]];
        assert_eq!(
            retry_plan(&statuses, &deps),
            vec![(1, RetryStep::Queue), (2, RetryStep::Wait { pending: 1 }), (3, RetryStep::Queue)]
        );
    }
}
