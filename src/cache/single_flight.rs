//! Single flight: concurrent misses for one key share one upstream call.
//!
//! The call runs as a detached task, so a caller that gives up (its deadline
//! passes, it is cancelled) cancels nothing for the others; the task is
//! bounded by the provider's own request timeout instead.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Flights<K, V> = Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>;

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

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Returns the result of `work` for `key`: started now as a detached
    /// task, or joined if one is already running. `work` is only polled when
    /// this caller leads.
    pub async fn run<F>(&self, key: K, work: F) -> (V, Flight)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut receiver, flight) = self.join_or_start(key, work);
        let value = receiver
            .wait_for(Option::is_some)
            .await
            .expect("a flight always sends its result before it ends")
            .clone()
            .expect("waited for Some");
        (value, flight)
    }

    /// Starts `work` for `key` unless a call is already running; returns at
    /// once (for refreshing ahead of expiry in the background).
    pub fn spawn<F>(&self, key: K, work: F)
    where
        F: Future<Output = V> + Send + 'static,
    {
        self.join_or_start(key, work);
    }

    fn join_or_start<F>(&self, key: K, work: F) -> (watch::Receiver<Option<V>>, Flight)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut flights = self.flights.lock().expect("flights lock");
        if let Some(receiver) = flights.get(&key) {
            return (receiver.clone(), Flight::Joined);
        }
        let (sender, receiver) = watch::channel(None);
        flights.insert(key.clone(), receiver.clone());
        drop(flights);
        let registry = self.flights.clone();
        tokio::spawn(async move {
            let value = work.await;
            // Forget the flight before announcing the result: a caller that
            // arrives after this finds the value in the cache `work` filled.
            registry.lock().expect("flights lock").remove(&key);
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
            flights.run("k", work(calls.clone())),
        );
        assert!(leader.await.is_err());
        let joined: Vec<_> = (0..100)
            .map(|_| {
                let flights = flights.clone();
                let calls = calls.clone();
                tokio::spawn(async move { flights.run("k", work(calls)).await })
            })
            .collect();
        for handle in joined {
            assert_eq!(handle.await.unwrap(), (7, Flight::Joined));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Once finished, the next call starts afresh.
        assert_eq!(
            flights.run("k", work(calls.clone())).await,
            (7, Flight::Led)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
