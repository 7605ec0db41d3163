//! The one-shot answer the writer gives a caller waiting for its commit.
//!
//! Why not a `crossbeam_channel::bounded(1)`: its blocking `recv` spins and
//! then calls `sched_yield` several times before it parks. With 16 or 64
//! `Sync` writers on two cores, those waiting callers took about a quarter
//! of the CPU (W5 profile), away from the writer thread that would answer
//! them. A waiter here parks on a condition variable at once.

use crate::error::WriteError;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;

type Answer = Result<(), WriteError>;

struct Slot {
    state: Mutex<State>,
    ready: Condvar,
}

struct State {
    answer: Option<Answer>,
    /// Live [`Done`] handles: when the last one goes without an answer
    /// (the writer is gone, or the op was never queued), the waiter gets
    /// `WriteError::Closed`.
    senders: usize,
}

/// The writer's side: answers once (later answers are ignored).
pub(crate) struct Done(Arc<Slot>);

/// The caller's side.
pub(crate) struct Reply(Arc<Slot>);

/// A connected pair.
pub(crate) fn pair() -> (Done, Reply) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State {
            answer: None,
            senders: 1,
        }),
        ready: Condvar::new(),
    });
    (Done(slot.clone()), Reply(slot))
}

impl Done {
    /// Delivers `answer` unless one was delivered already.
    pub(crate) fn send(&self, answer: Answer) {
        let mut s = self.0.state.lock();
        if s.answer.is_none() {
            s.answer = Some(answer);
            drop(s);
            self.0.ready.notify_one();
        }
    }
}

impl Clone for Done {
    fn clone(&self) -> Self {
        self.0.state.lock().senders += 1;
        Done(self.0.clone())
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.senders -= 1;
        if s.senders == 0 && s.answer.is_none() {
            drop(s);
            self.0.ready.notify_one();
        }
    }
}

impl Reply {
    /// Waits for the answer; `Closed` if every `Done` went without one.
    pub(crate) fn recv(self) -> Answer {
        let mut s = self.0.state.lock();
        loop {
            if let Some(a) = s.answer.take() {
                return a;
            }
            if s.senders == 0 {
                return Err(WriteError::Closed);
            }
            self.0.ready.wait(&mut s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_answer_wins() {
        let (d, r) = pair();
        let d2 = d.clone();
        d2.send(Err(WriteError::Closed));
        d.send(Ok(()));
        assert!(matches!(r.recv(), Err(WriteError::Closed)));
    }

    #[test]
    fn dropped_senders_mean_closed() {
        let (d, r) = pair();
        let d2 = d.clone();
        let t = std::thread::spawn(move || {
            drop(d);
            drop(d2);
        });
        assert!(matches!(r.recv(), Err(WriteError::Closed)));
        t.join().expect("join");
    }

    #[test]
    fn answer_from_another_thread() {
        let (d, r) = pair();
        let t = std::thread::spawn(move || d.send(Ok(())));
        assert!(r.recv().is_ok());
        t.join().expect("join");
    }
}
