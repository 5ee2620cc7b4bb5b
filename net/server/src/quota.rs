//! Quotas: bytes and requests per second per principal, as token
//! buckets a node keeps in memory (clients send everything to the leader,
//! so the leader's buckets are the ones that count).
//!
//! Each limit is a bucket holding up to one second's worth, refilled
//! continuously. A request passes when every bucket holds what it costs,
//! or, for a request larger than a whole second's worth, when the bucket
//! is full; it then takes its cost, which may leave the bucket in debt. So
//! a request of any size passes eventually, and the long-run rate stays
//! within the quota. A request that does not pass takes nothing and is
//! answered with how long until it would: the client waits that long and
//! sends it again. (`governor`'s GCRA refuses outright a request larger
//! than its burst, which would leave a large publish throttled for ever.)
//!
//! Buckets live only for principals with a quota in the replicated state
//! (at most `QUOTAS_MAX`); one whose quota is removed or changed is
//! dropped or started afresh at its next request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_model::constants::THROTTLE_WAIT_MS_MAX;
use sluice_model::security::Quota;

/// One limit: `rate` units a second, bursts up to one second's worth.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u64, now: Instant) -> Bucket {
        assert!(rate > 0, "the state refuses a quota of 0");
        Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
    }

    /// How long until `cost` may be taken; zero if now.
    fn wait(&self, cost: f64) -> Duration {
        let need = cost.min(self.rate);
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.rate)
        }
    }
}

/// A principal's buckets, for the quota they were made for.
#[derive(Debug)]
struct Buckets {
    quota: Quota,
    bytes: Option<Bucket>,
    requests: Option<Bucket>,
}

impl Buckets {
    fn new(quota: Quota, now: Instant) -> Buckets {
        Buckets {
            quota,
            bytes: quota.bytes_per_second.map(|rate| Bucket::full(rate, now)),
            requests: quota
                .requests_per_second
                .map(|rate| Bucket::full(rate, now)),
        }
    }
}

/// Every principal's buckets on this node.
#[derive(Debug, Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<Arc<str>, Buckets>>,
}

impl Quotas {
    /// Charges one request of `bytes` to `principal` (a user name) under
    /// `quota` (its quota in the replicated state, if any): `Ok` if it may
    /// be served now, else how long to wait before sending it again
    /// (at least 1 ms, at most [`THROTTLE_WAIT_MS_MAX`]).
    pub fn charge(
        &self,
        principal: &Arc<str>,
        quota: Option<Quota>,
        bytes: usize,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("quota lock");
        let Some(quota) = quota else {
            buckets.remove(principal);
            return Ok(());
        };
        let entry = buckets
            .entry(Arc::clone(principal))
            .or_insert_with(|| Buckets::new(quota, now));
        if entry.quota != quota {
            *entry = Buckets::new(quota, now);
        }
        let costs = [(&mut entry.bytes, bytes as f64), (&mut entry.requests, 1.0)];
        let mut wait = Duration::ZERO;
        for (bucket, cost) in &costs {
            if let Some(bucket) = bucket {
                let mut refilled = *bucket;
                refilled.refill(now);
                wait = wait.max(refilled.wait(*cost));
            }
        }
        if wait > Duration::ZERO {
            let wait = wait
                .max(Duration::from_millis(1))
                .min(Duration::from_millis(THROTTLE_WAIT_MS_MAX));
            return Err(wait);
        }
        for (bucket, cost) in costs {
            if let Some(bucket) = bucket {
                bucket.refill(now);
                bucket.tokens -= cost;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(bytes: Option<u64>, requests: Option<u64>) -> Option<Quota> {
        Some(Quota {
            bytes_per_second: bytes,
            requests_per_second: requests,
        })
    }

    #[test]
    fn a_burst_of_one_second_passes_then_the_rate_holds() {
        let quotas = Quotas::default();
        let alice: Arc<str> = Arc::from("alice");
        let start = Instant::now();
        let limit = quota(None, Some(10));
        for _ in 0..10 {
            quotas.charge(&alice, limit, 100, start).unwrap();
        }
        let wait = quotas.charge(&alice, limit, 100, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // A refused request took nothing: after the wait it passes, and
        // the next one waits again.
        let later = start + wait;
        quotas.charge(&alice, limit, 100, later).unwrap();
        assert!(quotas.charge(&alice, limit, 100, later).is_err());
        // Over ten seconds, 10 a second and the first second's burst.
        let mut passed = 0;
        for step in 1..=1000 {
            let now = later + Duration::from_millis(10 * step);
            if quotas.charge(&alice, limit, 1, now).is_ok() {
                passed += 1;
            }
        }
        assert!((99..=100).contains(&passed), "{passed}");
    }

    #[test]
    fn a_request_larger_than_a_second_passes_when_full_and_leaves_a_debt() {
        let quotas = Quotas::default();
        let bob: Arc<str> = Arc::from("bob");
        let start = Instant::now();
        let limit = quota(Some(1000), None);
        quotas.charge(&bob, limit, 5000, start).unwrap();
        // 4000 bytes in debt, then 1000 needed for a full bucket: 5 s.
        let wait = quotas.charge(&bob, limit, 5000, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(THROTTLE_WAIT_MS_MAX.min(5000)));
        assert!(
            quotas
                .charge(&bob, limit, 5000, start + Duration::from_millis(4900))
                .is_err()
        );
        quotas
            .charge(&bob, limit, 5000, start + Duration::from_secs(5))
            .unwrap();
    }

    #[test]
    fn both_limits_count_and_a_changed_quota_starts_afresh() {
        let quotas = Quotas::default();
        let carol: Arc<str> = Arc::from("carol");
        let start = Instant::now();
        let limit = quota(Some(100), Some(1000));
        quotas.charge(&carol, limit, 100, start).unwrap();
        let wait = quotas.charge(&carol, limit, 50, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        let raised = quota(Some(1000), Some(1000));
        quotas.charge(&carol, raised, 50, start).unwrap();
        // No quota: nothing is kept, everything passes.
        quotas.charge(&carol, None, 1 << 30, start).unwrap();
        assert!(quotas.buckets.lock().unwrap().is_empty());
    }
}
