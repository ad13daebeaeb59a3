//! Who may act when: one operation per service at a time ([`ServiceLocks`]),
//! and at most one call of a kind per node per interval ([`RateLimiter`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use crate::error::{FleetError, Result};

/// Per-service locks: deploys, stops, snapshots and migrations of one
/// service run one after the other.
#[derive(Debug)]
pub struct ServiceLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How long a caller waits for the lock before it is told to retry.
    wait: Duration,
}

impl ServiceLocks {
    /// Locks whose callers wait at most `wait`.
    pub fn new(wait: Duration) -> ServiceLocks {
        ServiceLocks {
            locks: Mutex::default(),
            wait,
        }
    }

    /// Takes the lock of `service`, or fails with `Busy` after the wait.
    pub async fn lock(&self, service: &str) -> Result<OwnedMutexGuard<()>> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(service.to_string()).or_default().clone()
        };
        match tokio::time::timeout(self.wait, m.lock_owned()).await {
            Ok(g) => Ok(g),
            Err(_) => Err(FleetError::Busy(format!(
                "another operation on service {service} is still running; try again when it has finished"
            ))),
        }
    }
}

/// "At most one `rpc` per interval per node", for agent calls.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// (node, rpc) → last accepted call.
    calls: Mutex<HashMap<(String, &'static str), Instant>>,
}

impl RateLimiter {
    /// Accepts the call and remembers it, or refuses it with `Exhausted`
    /// when the last accepted one is less than `min` seconds old (0: no limit).
    pub fn check(&self, node: &str, rpc: &'static str, min: u64, now: Instant) -> Result<()> {
        if min == 0 {
            return Ok(());
        }
        let min_gap = Duration::from_secs(min);
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let key = (node.to_string(), rpc);
        if let Some(last) = calls.get(&key)
            && now.duration_since(*last) < min_gap
        {
            let wait = min_gap - now.duration_since(*last);
            return Err(FleetError::Exhausted(format!(
                "{rpc} of node {node} is limited to once per {min} s; retry in {} s",
                wait.as_secs() + 1
            )));
        }
        calls.insert(key, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_per_node_and_rpc() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (node, rpc, min, seconds after t0, accepted)
        let cases: &[(&str, &'static str, u64, u64, bool)] = &[
            ("a", "Register", 60, 0, true),
            ("a", "Register", 60, 59, false),
            ("a", "Heartbeat", 60, 59, true),
            ("b", "Register", 60, 59, true),
            ("a", "Register", 60, 60, true),
            ("a", "Register", 0, 60, true),
            ("a", "Register", 60, 61, false),
        ];
        for (i, (node, rpc, min, at, accepted)) in cases.iter().enumerate() {
            let got = limiter.check(node, rpc, *min, t0 + s(*at));
            assert_eq!(got.is_ok(), *accepted, "case {i}: {got:?}");
            if let Err(e) = got {
                assert!(matches!(e, FleetError::Exhausted(_)), "case {i}: {e:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lock_waits_then_refuses() {
        let locks = ServiceLocks::new(Duration::from_secs(5));
        let held = locks.lock("web").await.expect("free lock");
        assert!(matches!(locks.lock("web").await, Err(FleetError::Busy(_))));
        assert!(locks.lock("db").await.is_ok(), "other services are not held up");
        drop(held);
        assert!(locks.lock("web").await.is_ok());
    }
}
