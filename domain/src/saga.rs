//! The saga plan: which compensations may run, in reverse dependency order.

use crate::status::TaskStatus;

/// What the saga plan needs to know of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaNode {
    pub status: TaskStatus,
    pub has_compensation: bool,
    /// Indexes of the tasks that depend on this one.
    pub dependents: Vec<usize>,
}

impl SagaNode {
    /// Nothing of this task remains to be undone.
    fn undone(&self) -> bool {
        match self.status {
            TaskStatus::Completed => !self.has_compensation,
            TaskStatus::Compensating | TaskStatus::CompensationFailed => false,
            _ => true,
        }
    }
}

/// Where a compensating workflow stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaProgress {
    /// These tasks' compensations may start now (possibly none while others are running).
    Continue(Vec<usize>),
    /// Every compensation has finished.
    Compensated,
    /// A compensation failed for good and nothing else can make progress.
    Failed,
}

/// Decides the next compensations: a completed task's compensation starts only once every task that depends on
/// it has nothing left to undo. Independent branches come out together, so they run in parallel.
pub fn progress(nodes: &[SagaNode]) -> SagaProgress {
    let ready: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.status == TaskStatus::Completed && n.has_compensation)
        .filter(|(_, n)| n.dependents.iter().all(|&d| nodes[d].undone()))
        .map(|(i, _)| i)
        .collect();
    if !ready.is_empty() {
        return SagaProgress::Continue(ready);
    }
    let running = nodes.iter().any(|n| n.status == TaskStatus::Compensating);
    let failed = nodes.iter().any(|n| n.status == TaskStatus::CompensationFailed);
    match (running, failed) {
        (true, _) => SagaProgress::Continue(Vec::new()),
        (false, true) => SagaProgress::Failed,
        (false, false) => SagaProgress::Compensated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    fn node(status: TaskStatus, dependents: &[usize]) -> SagaNode {
        SagaNode { status, has_compensation: true, dependents: dependents.to_vec() }
    }

    #[test]
    fn chain_compensates_from_the_end() {
        // a -> b -> c, c failed
        let mut nodes = vec![node(Completed, &[1]), node(Completed, &[2]), node(Failed, &[])];
        assert_eq!(progress(&nodes), SagaProgress::Continue(vec![1]));
        nodes[1].status = Compensating;
        assert_eq!(progress(&nodes), SagaProgress::Continue(vec![]));
        nodes[1].status = Compensated;
        assert_eq!(progress(&nodes), SagaProgress::Continue(vec![0]));
        nodes[0].status = Compensated;
        assert_eq!(progress(&nodes), SagaProgress::Compensated);
    }

    #[test]
    fn diamond_branches_compensate_together_then_the_root() {
        // a -> (b, c) -> d, d failed
        let mut nodes = vec![node(Completed, &[1, 2]), node(Completed, &[3]), node(Completed, &[3]), node(Failed, &[])];
        assert_eq!(progress(&nodes), SagaProgress::Continue(vec![1, 2]));
        nodes[1].status = Compensated;
        nodes[2].status = Compensating;
        assert_eq!(progress(&nodes), SagaProgress::Continue(vec![]));
        nodes[2].status = Compensated;
        assert_eq!(progress(&nodes), SagaProgress::Continue(vec![0]));
    }

    #[test]
    fn tasks_without_compensation_are_skipped() {
        let mut nodes = vec![node(Completed, &[1]), node(Completed, &[2]), node(Failed, &[])];
        nodes[1].has_compensation = false;
        assert_eq!(progress(&nodes), SagaProgress::Continue(vec![0]));
    }

    #[test]
    fn a_failed_compensation_blocks_its_dependencies_and_fails_the_saga() {
        let mut nodes = vec![node(Completed, &[1]), node(CompensationFailed, &[2]), node(Failed, &[])];
        assert_eq!(progress(&nodes), SagaProgress::Failed);
        nodes[1].status = Compensated;
        assert_eq!(progress(&nodes), SagaProgress::Continue(vec![0]));
    }
}
