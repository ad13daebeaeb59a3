//! One shape for background work: a pass run on a [`Schedule`] (period,
//! jitter, first delay, backoff after failures) until a [`Shutdown`] fires,
//! with its [`Status`] readable at any time through an [`Observer`].
//!
//! The period is measured from the end of one pass to the start of the next
//! (fixed delay, not fixed rate): a slow pass pushes the next one out instead
//! of causing a burst of catch-up passes.

use std::error::Error;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};

/// What a failed pass reports; anything `?` converts from (anyhow, io, String).
pub type PassError = Box<dyn Error + Send + Sync>;

/// What a pass returns.
pub type PassResult = Result<Next, PassError>;

/// Floor on every wait after a pass, so a zero period cannot spin the runtime.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// What the worker does after a successful pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait the current period.
    Period,
    /// Make this the period from now on, and wait it.
    Every(Duration),
    /// Stop the worker.
    Stop,
}

/// Exponential backoff after failed passes: `initial` doubling up to `max`, jittered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    /// Backoff from `initial` doubling to `max`, ±20 % jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        // `Ord::max` is not const; a max below initial means initial.
        let max = if max.as_nanos() < initial.as_nanos() {
            initial
        } else {
            max
        };
        Backoff {
            initial,
            max,
            jitter: 0.2,
        }
    }

    /// Sets the jitter fraction (0 = none, clamped to 1).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Un-jittered wait after `failures` failures in a row (0 and 1 both give `initial`).
    pub fn base(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Jittered wait after `failures` failures in a row; `unit` is a random draw in [0, 1].
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        // Jitter after the cap, not before: nodes that all lost the master
        // at once and sit at the cap must still spread out, not reconnect
        // together every `max`.
        jitter(self.base(failures), self.jitter, unit)
    }
}

/// Spreads `base` over `base × (1 ± fraction)`; `unit` in [0, 1] picks the point. Pure.
pub fn jitter(base: Duration, fraction: f64, unit: f64) -> Duration {
    // NaN would slip through `min` and `clamp`; treat it as no jitter.
    if fraction.is_nan() || fraction <= 0.0 {
        return base;
    }
    let f = fraction.min(1.0);
    let u = if unit.is_nan() { 0.5 } else { unit.clamp(0.0, 1.0) };
    Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 - f + 2.0 * f * u)).unwrap_or(base)
}

/// When a worker runs its pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    period: Duration,
    jitter: f64,
    first: Duration,
    backoff: Option<Backoff>,
    abort_pass: bool,
}

impl Schedule {
    /// Every `period`, first pass after one period, no jitter, failures wait the period.
    pub fn every(period: Duration) -> Self {
        Schedule {
            period,
            jitter: 0.0,
            first: period,
            backoff: None,
            abort_pass: false,
        }
    }

    /// Runs the first pass at once instead of after one period.
    pub fn immediately(mut self) -> Self {
        self.first = Duration::ZERO;
        self
    }

    /// Runs the first pass after `delay` (not jittered).
    pub fn first_after(mut self, delay: Duration) -> Self {
        self.first = delay;
        self
    }

    /// Spreads each period over `period × (1 ± fraction)`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Backs off after failed passes instead of waiting the period.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Drops a pass in progress when shutdown fires (only for cancel-safe passes).
    pub fn abort_pass_on_shutdown(mut self) -> Self {
        self.abort_pass = true;
        self
    }
}

/// Fires a [`Shutdown`]; dropping it without firing also stops the workers.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Tells every worker holding the matching [`Shutdown`] to stop.
    pub fn fire(&self) {
        // `send_replace`, not `send`: it works with no receiver left too.
        self.0.send_replace(true);
    }
}

/// The stop signal workers wait on; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A new signal and the trigger that fires it.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown(rx))
    }

    /// Whether shutdown fired (or its trigger is gone).
    pub fn is_set(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Resolves once shutdown fires; at once if it already has.
    pub async fn wait(&self) {
        // A dropped sender counts as shutdown: a worker nobody can stop any
        // more should not outlive its owner. Hence the ignored error.
        let _ = self.0.clone().wait_for(|stop| *stop).await;
    }
}

/// Adopts the `watch::channel(false)` the daemons already pass around.
impl From<watch::Receiver<bool>> for Shutdown {
    fn from(rx: watch::Receiver<bool>) -> Self {
        Shutdown(rx)
    }
}

/// One unit of background work; closures `FnMut() -> impl Future<Output = PassResult>` are passes.
pub trait Pass: Send + 'static {
    /// Runs one pass; state kept in `self` survives to the next pass.
    fn run(&mut self) -> impl Future<Output = PassResult> + Send;
}

impl<F, Fut> Pass for F
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = PassResult> + Send,
{
    fn run(&mut self) -> impl Future<Output = PassResult> + Send {
        self()
    }
}

/// Where a worker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the next pass.
    Waiting,
    /// A pass is running.
    Running,
    /// The worker has ended.
    Stopped,
}

/// What a worker shows to a status RPC or metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The worker's name (for logs and status).
    pub name: &'static str,
    /// Where the worker is in its cycle.
    pub phase: Phase,
    /// Passes finished, failed ones included.
    pub passes: u64,
    /// Failed passes since the last success.
    pub failures: u32,
    /// Text of the most recent failure; kept after a success, for "last seen".
    pub last_error: Option<String>,
    /// Wall-clock end of the last pass.
    pub last_pass: Option<SystemTime>,
    /// The current period (a pass may change it).
    pub period: Duration,
}

/// A cheap, clonable view of a worker's [`Status`].
#[derive(Debug, Clone)]
pub struct Observer(watch::Receiver<Status>);

impl Observer {
    /// A copy of the current status.
    pub fn get(&self) -> Status {
        self.0.borrow().clone()
    }

    /// Waits until the status satisfies `f`; None if the worker ended first.
    pub async fn wait_for(&mut self, f: impl FnMut(&Status) -> bool) -> Option<Status> {
        self.0.wait_for(f).await.ok().map(|s| s.clone())
    }
}

/// A worker not yet started: its name, schedule and pass.
pub struct Worker<P> {
    schedule: Schedule,
    pass: P,
    status: watch::Sender<Status>,
}

/// A spawned worker: await [`Handle::join`] at shutdown.
#[derive(Debug)]
pub struct Handle {
    task: JoinHandle<()>,
    status: Observer,
}

impl Handle {
    /// A view of the worker's status.
    pub fn status(&self) -> Observer {
        self.status.clone()
    }

    /// Waits for the worker to end (fire its [`Shutdown`] first).
    pub async fn join(self) -> Result<(), JoinError> {
        self.task.await
    }
}

impl<P: Pass> Worker<P> {
    /// A worker named `name` running `pass` on `schedule`.
    pub fn new(name: &'static str, schedule: Schedule, pass: P) -> Self {
        let (status, _) = watch::channel(Status {
            name,
            phase: Phase::Waiting,
            passes: 0,
            failures: 0,
            last_error: None,
            last_pass: None,
            period: schedule.period,
        });
        Worker { schedule, pass, status }
    }

    /// A view of the status, to hand out before the worker starts.
    pub fn status(&self) -> Observer {
        Observer(self.status.subscribe())
    }

    /// Runs the worker on a task of its own.
    pub fn spawn(self, shutdown: Shutdown) -> Handle {
        let status = self.status();
        Handle {
            task: tokio::spawn(self.run(shutdown)),
            status,
        }
    }

    /// Runs passes in this task until `shutdown` fires or a pass says [`Next::Stop`].
    pub async fn run(mut self, shutdown: Shutdown) {
        let name = self.status.borrow().name;
        let s = self.schedule;
        let mut rng = Rng::seeded();
        let mut period = s.period;
        let mut failures = 0u32;
        let mut wait = s.first;
        loop {
            tokio::select! {
                // Biased: when the wait and shutdown end together, stop
                // rather than start one more pass.
                biased;
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            self.status.send_modify(|st| st.phase = Phase::Running);
            let result = if s.abort_pass {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    r = self.pass.run() => r,
                }
            } else {
                self.pass.run().await
            };
            let mut stop = false;
            let error = match result {
                Ok(next) => {
                    failures = 0;
                    match next {
                        Next::Period => {}
                        Next::Every(p) => period = p,
                        Next::Stop => stop = true,
                    }
                    wait = jitter(period, s.jitter, rng.unit());
                    None
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    wait = match s.backoff {
                        Some(b) => b.delay(failures, rng.unit()),
                        None => jitter(period, s.jitter, rng.unit()),
                    };
                    tracing::warn!(worker = name, error = %e, failures, retry_in = ?wait, "background pass failed");
                    Some(e.to_string())
                }
            };
            wait = wait.max(MIN_WAIT);
            self.status.send_modify(|st| {
                st.phase = Phase::Waiting;
                st.passes += 1;
                st.failures = failures;
                st.last_pass = Some(SystemTime::now());
                st.period = period;
                if error.is_some() {
                    st.last_error = error;
                }
            });
            if stop {
                break;
            }
        }
        self.status.send_modify(|st| st.phase = Phase::Stopped);
        tracing::debug!(worker = name, "background worker stopped");
    }
}

/// xorshift64* for jitter: spreading timers needs no cryptographic quality.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        // The counter keeps workers started in the same nanosecond from
        // jittering in lockstep; the pid does the same across processes.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // xorshift is stuck at zero forever, so never seed it with zero.
        Rng((nanos ^ seq ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        // The top 53 bits fill an f64 mantissa exactly: uniform in [0, 1).
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Times at which passes started, shared between a pass and its test.
    type Log = Arc<Mutex<Vec<Instant>>>;

    /// A pass that logs its start and returns the next scripted result (then `Next::Period`).
    fn scripted(log: Log, script: Vec<PassResult>) -> impl Pass {
        let mut script = script.into_iter();
        move || {
            log.lock()
                .expect("test log lock is never poisoned")
                .push(Instant::now());
            let r = script.next().unwrap_or(Ok(Next::Period));
            async move { r }
        }
    }

    fn gaps(log: &Log) -> Vec<Duration> {
        let t = log.lock().expect("test log lock is never poisoned");
        t.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Paused time advances in whole milliseconds: allow one of rounding.
    fn assert_gaps(got: &[Duration], want: &[Duration]) {
        assert_eq!(got.len(), want.len(), "gaps {got:?}, want {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.abs_diff(*w) <= MS, "gaps {got:?}, want {want:?}");
        }
    }

    async fn until_passes(obs: &mut Observer, n: u64) -> Status {
        obs.wait_for(|s| s.passes >= n)
            .await
            .expect("worker ended before the passes ran")
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let b = Backoff::new(secs(1.0), secs(60.0));
        for (failures, want) in [
            (0, 1.0),
            (1, 1.0),
            (2, 2.0),
            (4, 8.0),
            (6, 32.0),
            (7, 60.0),
            (40, 60.0),
            (u32::MAX, 60.0),
        ] {
            assert_eq!(b.base(failures), secs(want), "failures {failures}");
        }
        // A huge initial cannot overflow: it saturates at the cap.
        let huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(huge.base(5), Duration::MAX);
    }

    #[test]
    fn jitter_arithmetic() {
        let ten = secs(10.0);
        for (fraction, unit, want) in [
            (0.0, 0.9, 10.0),
            (0.2, 0.0, 8.0),
            (0.2, 0.5, 10.0),
            (0.2, 1.0, 12.0),
            (0.5, 0.25, 7.5),
            (3.0, 0.0, 0.0),  // fraction clamped to 1
            (0.2, 7.0, 12.0), // unit clamped to 1
            (0.2, -1.0, 8.0), // unit clamped to 0
            (f64::NAN, 0.0, 10.0),
            (0.2, f64::NAN, 10.0),
        ] {
            let got = jitter(ten, fraction, unit);
            assert!(
                got.abs_diff(secs(want)) < Duration::from_micros(1),
                "{fraction} {unit}: {got:?}"
            );
        }
        assert_eq!(
            jitter(Duration::MAX, 0.5, 1.0),
            Duration::MAX,
            "overflow keeps the base"
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut rng = Rng::seeded();
        let b = Backoff::new(secs(1.0), secs(60.0));
        for i in 0..10_000u32 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u), "draw {u}");
            let d = b.delay(i % 10 + 1, u);
            let base = b.base(i % 10 + 1);
            // 1 µs of slack: `1.0 - 0.2` is a hair under 0.8 in f64.
            let us = Duration::from_micros(1);
            assert!(
                d + us >= base.mul_f64(0.8) && d <= base.mul_f64(1.2) + us,
                "{d:?} around {base:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_the_period_and_counts_passes() {
        let log = Log::default();
        let w = Worker::new("t", Schedule::every(secs(5.0)), scripted(log.clone(), vec![]));
        let (trigger, shutdown) = Shutdown::new();
        let start = Instant::now();
        let h = w.spawn(shutdown);
        let st = until_passes(&mut h.status(), 3).await;
        assert_eq!((st.name, st.failures, st.last_error.clone()), ("t", 0, None));
        assert!(st.last_pass.is_some());
        assert_gaps(&[log.lock().expect("unpoisoned")[0] - start], &[secs(5.0)]);
        assert_gaps(&gaps(&log), &[secs(5.0), secs(5.0)]);
        trigger.fire();
        h.join().await.expect("worker does not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_then_resets_after_success() {
        let log = Log::default();
        let fail = || Err::<Next, PassError>("agent unreachable".into());
        let script = vec![fail(), fail(), fail(), Ok(Next::Period), fail(), Ok(Next::Period)];
        let sched = Schedule::every(secs(10.0))
            .immediately()
            .backoff(Backoff::new(secs(1.0), secs(3.0)).jitter(0.0));
        let w = Worker::new("t", sched, scripted(log.clone(), script));
        let mut obs = w.status();
        let (trigger, shutdown) = Shutdown::new();
        let h = w.spawn(shutdown);
        let st = until_passes(&mut obs, 3).await;
        assert_eq!((st.failures, st.last_error.as_deref()), (3, Some("agent unreachable")));
        let st = until_passes(&mut obs, 4).await;
        assert_eq!(st.failures, 0, "a success resets the count");
        assert_eq!(
            st.last_error.as_deref(),
            Some("agent unreachable"),
            "the last error stays visible"
        );
        until_passes(&mut obs, 7).await;
        // 1, 2, then 4 capped at 3; success waits the period; the next failure starts over at 1.
        assert_gaps(
            &gaps(&log),
            &[secs(1.0), secs(2.0), secs(3.0), secs(10.0), secs(1.0), secs(10.0)],
        );
        trigger.fire();
        h.join().await.expect("worker does not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn failure_without_backoff_waits_the_period() {
        let log = Log::default();
        let w = Worker::new(
            "t",
            Schedule::every(secs(4.0)).immediately(),
            scripted(log.clone(), vec![Err("x".into())]),
        );
        let (_trigger, shutdown) = Shutdown::new();
        let h = w.spawn(shutdown);
        until_passes(&mut h.status(), 3).await;
        assert_gaps(&gaps(&log), &[secs(4.0), secs(4.0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_once_while_waiting() {
        let log = Log::default();
        let w = Worker::new(
            "t",
            Schedule::every(secs(3600.0)).immediately(),
            scripted(log.clone(), vec![]),
        );
        let (trigger, shutdown) = Shutdown::new();
        let h = w.spawn(shutdown);
        let mut obs = h.status();
        until_passes(&mut obs, 1).await;
        let start = Instant::now();
        trigger.fire();
        h.join().await.expect("worker does not panic");
        // Paused time would have jumped the hour had the worker slept on.
        assert!(start.elapsed() < secs(1.0), "took {:?}", start.elapsed());
        assert_eq!(obs.get().phase, Phase::Stopped);
        assert_eq!(log.lock().expect("unpoisoned").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_trigger_or_early_fire_runs_no_pass() {
        let log = Log::default();
        let (trigger, shutdown) = Shutdown::new();
        trigger.fire();
        Worker::new(
            "t",
            Schedule::every(secs(1.0)).immediately(),
            scripted(log.clone(), vec![]),
        )
        .run(shutdown)
        .await;
        let (trigger, shutdown) = Shutdown::new();
        drop(trigger);
        assert!(shutdown.is_set());
        Worker::new(
            "t",
            Schedule::every(secs(1.0)).immediately(),
            scripted(log.clone(), vec![]),
        )
        .run(shutdown)
        .await;
        assert!(log.lock().expect("unpoisoned").is_empty());
    }

    /// A pass that sleeps `secs` and records whether it finished.
    fn slow(done: Arc<Mutex<bool>>) -> impl Pass {
        move || {
            let done = done.clone();
            async move {
                tokio::time::sleep(secs(10.0)).await;
                *done.lock().expect("unpoisoned") = true;
                Ok(Next::Period)
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pass_in_progress_finishes_unless_abort_asked() {
        for (abort, finished) in [(false, true), (true, false)] {
            let done = Arc::new(Mutex::new(false));
            let mut sched = Schedule::every(secs(60.0)).immediately();
            if abort {
                sched = sched.abort_pass_on_shutdown();
            }
            let w = Worker::new("t", sched, slow(done.clone()));
            let mut obs = w.status();
            let (trigger, shutdown) = Shutdown::new();
            let h = w.spawn(shutdown);
            obs.wait_for(|s| s.phase == Phase::Running).await.expect("pass starts");
            trigger.fire();
            h.join().await.expect("worker does not panic");
            assert_eq!(*done.lock().expect("unpoisoned"), finished, "abort {abort}");
            assert_eq!(obs.get().passes, u64::from(finished), "abort {abort}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pass_changes_the_period_or_stops() {
        let log = Log::default();
        let script = vec![
            Ok(Next::Every(secs(3.0))),
            Ok(Next::Period),
            Ok(Next::Every(secs(7.0))),
            Ok(Next::Period),
            Ok(Next::Stop),
        ];
        let w = Worker::new(
            "t",
            Schedule::every(secs(60.0)).immediately(),
            scripted(log.clone(), script),
        );
        let obs = w.status();
        let (_trigger, shutdown) = Shutdown::new();
        w.run(shutdown).await;
        assert_gaps(&gaps(&log), &[secs(3.0), secs(3.0), secs(7.0), secs(7.0)]);
        let st = obs.get();
        assert_eq!((st.phase, st.passes, st.period), (Phase::Stopped, 5, secs(7.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_periods_stay_within_bounds() {
        let log = Log::default();
        let sched = Schedule::every(secs(10.0)).immediately().jitter(0.2);
        let w = Worker::new("t", sched, scripted(log.clone(), vec![]));
        let (_trigger, shutdown) = Shutdown::new();
        let h = w.spawn(shutdown);
        until_passes(&mut h.status(), 50).await;
        for g in gaps(&log) {
            assert!(g + MS >= secs(8.0) && g <= secs(12.0) + MS, "gap {g:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn struct_pass_keeps_state_between_passes() {
        struct Counter(u32);
        impl Pass for Counter {
            async fn run(&mut self) -> PassResult {
                self.0 += 1;
                Ok(if self.0 == 3 { Next::Stop } else { Next::Period })
            }
        }
        let w = Worker::new("t", Schedule::every(secs(1.0)), Counter(0));
        let obs = w.status();
        // Keep the trigger alive: dropping it would count as shutdown.
        let (_trigger, shutdown) = Shutdown::new();
        w.spawn(shutdown).join().await.expect("worker does not panic");
        assert_eq!(obs.get().passes, 3, "the stopping pass counts too");
    }
}
