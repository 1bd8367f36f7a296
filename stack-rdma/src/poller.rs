//! Completion polling with a busy-poll window (`ms_async_rdma_polling_us`).
//!
//! After the last completion, the CQ is polled without sleeping for the window; only then
//! is notification re-armed and the caller told to wait on the completion channel's fd
//! (the fd the worker's event driver watches). [`BusyPollWindow`] is the decision logic
//! (time passed in, host-testable); [`CqPoller`] applies it to a [`CompletionQueue`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::verbs::{CompletionQueue, WorkCompletion};

/// What to do after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollDecision {
    /// Keep polling without sleeping.
    KeepPolling,
    /// Re-arm notification and wait for the channel fd.
    Arm,
}

/// Busy-poll window state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyPollWindow {
    window: Duration,
    last_activity: Option<Instant>,
}

impl BusyPollWindow {
    /// A window of `window` (zero: arm as soon as a poll comes back empty).
    pub fn new(window: Duration) -> Self {
        BusyPollWindow { window, last_activity: None }
    }

    /// Records a poll at `now` that returned `got` completions, and decides.
    pub fn on_poll(&mut self, now: Instant, got: usize) -> PollDecision {
        if got > 0 {
            self.last_activity = Some(now);
            return PollDecision::KeepPolling;
        }
        match self.last_activity {
            Some(t) if now.saturating_duration_since(t) < self.window => PollDecision::KeepPolling,
            _ => {
                self.last_activity = None;
                PollDecision::Arm
            }
        }
    }
}

/// Result of [`CqPoller::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    /// This many completions were appended.
    Completions(usize),
    /// None yet, but within the busy-poll window: poll again without sleeping.
    Busy,
    /// None; notification is armed: wait for the channel fd to become readable, then call
    /// [`crate::verbs::CompChannel::take_event`] and poll again.
    Armed,
}

/// A CQ with its busy-poll window.
pub struct CqPoller {
    cq: Arc<CompletionQueue>,
    window: BusyPollWindow,
    batch: usize,
}

impl CqPoller {
    /// Polls `cq` in batches of `batch` with a busy-poll window of `window`.
    pub fn new(cq: Arc<CompletionQueue>, window: Duration, batch: usize) -> Self {
        CqPoller { cq, window: BusyPollWindow::new(window), batch: batch.max(1) }
    }

    /// The CQ.
    pub fn cq(&self) -> &Arc<CompletionQueue> {
        &self.cq
    }

    /// Polls once, appending completions to `out`.
    ///
    /// # Errors
    ///
    /// The `ibv_poll_cq` / `ibv_req_notify_cq` error.
    pub fn poll(&mut self, out: &mut Vec<WorkCompletion>) -> io::Result<PollOutcome> {
        let n = self.cq.poll(out, self.batch)?;
        match self.window.on_poll(Instant::now(), n) {
            _ if n > 0 => Ok(PollOutcome::Completions(n)),
            PollDecision::KeepPolling => Ok(PollOutcome::Busy),
            PollDecision::Arm => {
                self.cq.arm()?;
                // A completion that arrived between the poll and arming raises no event.
                let n = self.cq.poll(out, self.batch)?;
                if n > 0 {
                    self.window.on_poll(Instant::now(), n);
                    Ok(PollOutcome::Completions(n))
                } else {
                    Ok(PollOutcome::Armed)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_polls_within_window_then_arms() {
        let t0 = Instant::now();
        let mut w = BusyPollWindow::new(Duration::from_micros(1000));
        assert_eq!(w.on_poll(t0, 0), PollDecision::Arm, "no recent activity");
        assert_eq!(w.on_poll(t0, 3), PollDecision::KeepPolling);
        assert_eq!(w.on_poll(t0 + Duration::from_micros(500), 0), PollDecision::KeepPolling);
        assert_eq!(w.on_poll(t0 + Duration::from_micros(999), 0), PollDecision::KeepPolling);
        assert_eq!(w.on_poll(t0 + Duration::from_micros(1000), 0), PollDecision::Arm);
        assert_eq!(w.on_poll(t0 + Duration::from_micros(1001), 0), PollDecision::Arm, "stays armed");
    }

    #[test]
    fn activity_extends_window() {
        let t0 = Instant::now();
        let mut w = BusyPollWindow::new(Duration::from_millis(1));
        w.on_poll(t0, 1);
        w.on_poll(t0 + Duration::from_micros(900), 1);
        assert_eq!(w.on_poll(t0 + Duration::from_micros(1500), 0), PollDecision::KeepPolling);
        assert_eq!(w.on_poll(t0 + Duration::from_micros(1900), 0), PollDecision::Arm);
    }

    #[test]
    fn zero_window_arms_immediately() {
        let t0 = Instant::now();
        let mut w = BusyPollWindow::new(Duration::ZERO);
        w.on_poll(t0, 5);
        assert_eq!(w.on_poll(t0, 0), PollDecision::Arm);
    }
}
