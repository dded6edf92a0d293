//! Single flight: concurrent misses for one key share one upstream call.
//!
//! The call runs as a detached task, so a caller that gives up (its deadline
//! passes, it is cancelled) cancels nothing for the others. The task runs
//! under a shared [`Deadline`] that each caller joining it extends to its
//! own, so it goes on for as long as anyone still waits; a background
//! refresh has no deadline and is bounded by the provider's own limits.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::deadline::{self, Deadline};

/// A call in flight: where its result will appear, and the deadline its
/// waiters share (none for a background refresh).
struct Running<V> {
    result: watch::Receiver<Option<V>>,
    deadline: Option<Deadline>,
}

type Flights<K, V> = Arc<Mutex<HashMap<K, Running<V>>>>;

/// Calls in flight, by key.
pub struct SingleFlight<K, V> {
    flights: Flights<K, V>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Arc::default(),
        }
    }
}

impl<K, V> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").finish_non_exhaustive()
    }
}

/// Whether a caller started the call or joined one already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flight {
    Led,
    Joined,
}

/// The call ended without a result: its work panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared call ended without a result")]
pub struct Abandoned;

/// Forgets a flight when its task ends, however it ends: a panicking call
/// must not leave behind an entry that every later caller would join.
struct Forget<K: Eq + Hash, V> {
    flights: Flights<K, V>,
    key: K,
    result: watch::Receiver<Option<V>>,
}

impl<K: Eq + Hash, V> Drop for Forget<K, V> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|running| running.result.same_channel(&self.result))
        {
            flights.remove(&self.key);
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Returns the result of `work` for `key`: started now as a detached
    /// task, or joined if one is already running. `work` is only polled when
    /// this caller leads. It runs until the latest `deadline` of the callers
    /// waiting on it, so a caller with a short deadline does not cut the
    /// call short for those that joined it with longer ones.
    pub async fn run<F>(
        &self,
        key: K,
        deadline: Option<Instant>,
        work: F,
    ) -> Result<(V, Flight), Abandoned>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut receiver, flight) = self.join_or_start(key, deadline, work);
        let value = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Abandoned)?
            .clone()
            .expect("waited for Some");
        Ok((value, flight))
    }

    /// Starts `work` for `key` unless a call is already running; returns at
    /// once (for refreshing ahead of expiry in the background).
    pub fn spawn<F>(&self, key: K, work: F)
    where
        F: Future<Output = V> + Send + 'static,
    {
        self.join_or_start(key, None, work);
    }

    fn join_or_start<F>(
        &self,
        key: K,
        deadline: Option<Instant>,
        work: F,
    ) -> (watch::Receiver<Option<V>>, Flight)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut flights = self.flights.lock().expect("flights lock");
        if let Some(running) = flights.get(&key) {
            if let (Some(shared), Some(mine)) = (&running.deadline, deadline) {
                shared.extend_to(mine);
            }
            return (running.result.clone(), Flight::Joined);
        }
        let (sender, receiver) = watch::channel(None);
        let shared = deadline.map(Deadline::new);
        flights.insert(
            key.clone(),
            Running {
                result: receiver.clone(),
                deadline: shared.clone(),
            },
        );
        drop(flights);
        let forget = Forget {
            flights: self.flights.clone(),
            key,
            result: receiver.clone(),
        };
        tokio::spawn(async move {
            let value = match shared {
                Some(shared) => deadline::scope_shared(shared, work).await,
                None => work.await,
            };
            // Forget the flight before announcing the result: a caller that
            // arrives after this finds the value in the cache `work` filled.
            drop(forget);
            let _ = sender.send(Some(value));
        });
        (receiver, Flight::Led)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_call_and_a_cancelled_one_cancels_nothing() {
        let flights = Arc::new(SingleFlight::<&'static str, u32>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let work = |calls: Arc<AtomicUsize>| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            7
        };
        // The leader gives up at once; the work goes on for the others.
        let leader = tokio::time::timeout(
            Duration::from_millis(1),
            flights.run("k", None, work(calls.clone())),
        );
        assert!(leader.await.is_err());
        let joined: Vec<_> = (0..100)
            .map(|_| {
                let flights = flights.clone();
                let calls = calls.clone();
                tokio::spawn(async move { flights.run("k", None, work(calls)).await })
            })
            .collect();
        for handle in joined {
            assert_eq!(handle.await.unwrap(), Ok((7, Flight::Joined)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Once finished, the next call starts afresh.
        assert_eq!(
            flights.run("k", None, work(calls.clone())).await,
            Ok((7, Flight::Led))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_call_fails_its_callers_and_leaves_nothing_behind() {
        let flights = Arc::new(SingleFlight::<&'static str, u32>::default());
        let panicking = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("a bug inside a shared fill");
        };
        let joiner = {
            let flights = flights.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                flights.run("k", None, async { 0 }).await
            })
        };
        assert_eq!(flights.run("k", None, panicking).await, Err(Abandoned));
        assert_eq!(joiner.await.unwrap(), Err(Abandoned));
        // The key is not stuck: the next caller leads a new call.
        assert_eq!(
            flights.run("k", None, async { 8 }).await,
            Ok((8, Flight::Led))
        );
    }

    #[tokio::test]
    async fn a_call_runs_until_the_latest_deadline_of_its_callers() {
        let flights = Arc::new(SingleFlight::<&'static str, Option<Instant>>::default());
        let short = Instant::now() + Duration::from_millis(50);
        let long = Instant::now() + Duration::from_secs(10);
        let work = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            deadline::current()
        };
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", Some(short), work).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (seen, flight) = flights.run("k", Some(long), async { None }).await.unwrap();
        assert_eq!(flight, Flight::Joined);
        assert_eq!(seen, Some(long), "the joiner's later deadline applies");
        assert_eq!(leader.await.unwrap().unwrap().0, Some(long));
    }
}
