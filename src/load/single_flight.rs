//! Single-flight: concurrent requests for one key share one computation.
//!
//! The first caller for a key becomes the *leader* and runs the load; every
//! caller that arrives while it runs becomes a *follower* and waits for the
//! leader's result, blocking on a condition variable (threads) or awaiting
//! a `tokio::sync::Notify` (tasks); both kinds can wait on one flight.
//!
//! If the leader goes away without a result (its loader panicked, or its
//! task was cancelled), the flight is *abandoned*: followers wake up and
//! race to lead a new flight, so nobody waits forever and nobody gets an
//! error that no loader produced.
//!
//! The flight is removed from the map when it completes. The cache layer
//! stores a loaded value *before* completing, and a new leader checks the
//! cache again before loading; together that makes a caller that missed
//! the flight by a hair find the value instead of loading it again.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

enum Slot<V> {
    Running,
    Done(V),
    Abandoned,
}

struct Flight<V> {
    slot: Mutex<Slot<V>>,
    cv: Condvar,
    #[cfg(feature = "async")]
    notify: tokio::sync::Notify,
}

impl<V: Clone> Flight<V> {
    fn new() -> Self {
        Flight {
            slot: Mutex::new(Slot::Running),
            cv: Condvar::new(),
            #[cfg(feature = "async")]
            notify: tokio::sync::Notify::new(),
        }
    }

    fn finish(&self, s: Slot<V>) {
        *self.slot.lock() = s;
        self.cv.notify_all();
        #[cfg(feature = "async")]
        self.notify.notify_waiters();
    }

    /// `Some(v)` when done, `None` when abandoned; blocks while running.
    fn wait(&self) -> Option<V> {
        let mut g = self.slot.lock();
        loop {
            match &*g {
                Slot::Running => self.cv.wait(&mut g),
                Slot::Done(v) => return Some(v.clone()),
                Slot::Abandoned => return None,
            }
        }
    }

    #[cfg(feature = "async")]
    async fn wait_async(&self) -> Option<V> {
        loop {
            // Register interest before looking, so a completion between the
            // look and the await is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match &*self.slot.lock() {
                Slot::Running => {}
                Slot::Done(v) => return Some(v.clone()),
                Slot::Abandoned => return None,
            }
            notified.await;
        }
    }
}

type Map<K, V> = Arc<Mutex<HashMap<K, Arc<Flight<V>>>>>;

/// A map of flights in progress, keyed by `K`. Clones share the map.
pub(crate) struct SingleFlight<K, V> {
    map: Map<K, V>,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            map: self.map.clone(),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// What [`SingleFlight::join`] made of the caller.
pub(crate) enum Role<K: Hash + Eq + Clone, V: Clone> {
    /// Run the load and call [`Leader::complete`].
    Leader(Leader<K, V>),
    /// Wait for the leader with [`Follower::wait`] / [`Follower::wait_async`].
    Follower(Follower<V>),
}

/// The caller that runs the load. Dropping it without completing abandons
/// the flight (followers retry).
/// It owns a handle on the map, so it can move to a background thread or task.
pub(crate) struct Leader<K: Hash + Eq + Clone, V: Clone> {
    sf: SingleFlight<K, V>,
    key: K,
    flight: Arc<Flight<V>>,
    done: bool,
}

pub(crate) struct Follower<V> {
    flight: Arc<Flight<V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Leads a new flight for `key`, or follows the one in progress.
    pub(crate) fn join(&self, key: &K) -> Role<K, V> {
        let mut m = self.map.lock();
        if let Some(f) = m.get(key) {
            return Role::Follower(Follower { flight: f.clone() });
        }
        let flight = Arc::new(Flight::new());
        m.insert(key.clone(), flight.clone());
        Role::Leader(Leader {
            sf: self.clone(),
            key: key.clone(),
            flight,
            done: false,
        })
    }

    /// Leads a new flight only if none is in progress (background
    /// refreshes: one at a time per key, nobody waits for them).
    pub(crate) fn try_lead(&self, key: &K) -> Option<Leader<K, V>> {
        match self.join(key) {
            Role::Leader(l) => Some(l),
            Role::Follower(_) => None,
        }
    }

    /// Whether a flight for `key` is in progress.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, key: &K) -> bool {
        self.map.lock().contains_key(key)
    }

    /// Flights in progress.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }

    fn remove(&self, key: &K, flight: &Arc<Flight<V>>) {
        let mut m = self.map.lock();
        if m.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            m.remove(key);
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Leader<K, V> {
    /// Hands `v` to every follower and ends the flight.
    pub(crate) fn complete(mut self, v: V) {
        self.done = true;
        self.flight.finish(Slot::Done(v));
        self.sf.remove(&self.key, &self.flight);
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Leader<K, V> {
    fn drop(&mut self) {
        if !self.done {
            self.flight.finish(Slot::Abandoned);
            self.sf.remove(&self.key, &self.flight);
        }
    }
}

impl<V: Clone> Follower<V> {
    /// Blocks until the leader finishes: `Some(result)`, or `None` if it
    /// abandoned the flight (join again).
    pub(crate) fn wait(self) -> Option<V> {
        self.flight.wait()
    }

    /// [`Follower::wait`] for tasks: never blocks the runtime.
    #[cfg(feature = "async")]
    pub(crate) async fn wait_async(self) -> Option<V> {
        self.flight.wait_async().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Barrier, mpsc};

    #[test]
    fn one_leader_many_threads() {
        let sf = SingleFlight::<u32, u64>::default();
        let Role::Leader(l) = sf.join(&1) else {
            panic!("first join must lead")
        };
        // Every thread joins while the flight runs, then the leader finishes.
        let joined = Barrier::new(65);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            for _ in 0..64 {
                let tx = tx.clone();
                let (sf, joined) = (&sf, &joined);
                s.spawn(move || {
                    let role = sf.join(&1);
                    joined.wait();
                    let got = match role {
                        Role::Leader(_) => None,
                        Role::Follower(f) => f.wait(),
                    };
                    tx.send(got).unwrap();
                });
            }
            joined.wait();
            l.complete(42);
        });
        drop(tx);
        let got: Vec<Option<u64>> = rx.iter().collect();
        assert_eq!(got.len(), 64);
        assert!(got.iter().all(|&v| v == Some(42)), "{got:?}");
        assert_eq!(sf.len(), 0);
    }

    #[test]
    fn followers_of_one_flight_share_the_result() {
        let sf = SingleFlight::<u32, Result<u64, String>>::default();
        let Role::Leader(l) = sf.join(&7) else {
            panic!("first join must lead")
        };
        let followers: Vec<_> = (0..8)
            .map(|_| match sf.join(&7) {
                Role::Follower(f) => f,
                Role::Leader(_) => panic!("second join must follow"),
            })
            .collect();
        let waiting = std::thread::spawn(move || {
            followers
                .into_iter()
                .map(Follower::wait)
                .collect::<Vec<_>>()
        });
        l.complete(Err("upstream down".into()));
        let got = waiting.join().unwrap();
        assert!(
            got.iter()
                .all(|r| r.as_ref() == Some(&Err("upstream down".to_string())))
        );
        assert!(!sf.in_flight(&7));
    }

    #[test]
    fn abandoned_flight_wakes_followers() {
        let sf = SingleFlight::<u32, u64>::default();
        let Role::Leader(l) = sf.join(&1) else {
            panic!()
        };
        let Role::Follower(f) = sf.join(&1) else {
            panic!()
        };
        let t = std::thread::spawn(move || f.wait());
        drop(l);
        assert_eq!(t.join().unwrap(), None);
        assert!(sf.try_lead(&1).is_some());
    }

    #[cfg(feature = "async")]
    #[test]
    fn tasks_and_threads_wait_on_one_flight() {
        let sf = Arc::new(SingleFlight::<u32, u64>::default());
        let Role::Leader(l) = sf.join(&1) else {
            panic!()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let Role::Follower(f) = sf.join(&1) else {
                panic!()
            };
            tasks.push(rt.spawn(f.wait_async()));
        }
        let Role::Follower(f) = sf.join(&1) else {
            panic!()
        };
        let thread = std::thread::spawn(move || f.wait());
        let done = std::thread::spawn(move || l.complete(9));
        rt.block_on(async {
            for t in tasks {
                assert_eq!(t.await.unwrap(), Some(9));
            }
        });
        done.join().unwrap();
        assert_eq!(thread.join().unwrap(), Some(9));
    }
}
