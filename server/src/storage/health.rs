//! What the store knows of its own condition: an I/O failure (a full disk, a failed
//! fsync) that closing and reopening the file may cure, and damage found in what it
//! read, which only an operator can repair (README, "Recovering a damaged
//! database"). The node reads both to refuse submits and to turn `/readyz` to 503.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::StoreError;
use crate::throttle::{Backoff, Throttle};

/// Distinct damage reports logged before further ones are only counted.
const DAMAGE_LOGGED: usize = 1024;
/// Shortest interval between two log lines about a failure that persists.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);
/// A failure within this long of the last recovery continues the same episode (a
/// disk with just enough room to reopen fills again): it is not logged as new.
const EPISODE: Duration = Duration::from_secs(60);

/// The store's condition, shared by every caller.
#[derive(Debug)]
pub(super) struct Health {
    /// The I/O failure the store is in, until a reopen cures it.
    failure: Mutex<Option<String>>,
    damage: Mutex<Damage>,
    /// Failures logged at a bounded rate while an episode lasts.
    failure_log: Mutex<Throttle<()>>,
    /// When the last failure was cured.
    recovered_at: Mutex<Option<Instant>>,
    failures: AtomicU64,
    damage_found: AtomicU64,
    recoveries: AtomicU64,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            failure: Mutex::default(),
            damage: Mutex::default(),
            failure_log: Mutex::new(Throttle::new(FAILURE_LOG_EVERY)),
            recovered_at: Mutex::default(),
            failures: AtomicU64::default(),
            damage_found: AtomicU64::default(),
            recoveries: AtomicU64::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Damage {
    /// The first damage found since the node started.
    first: Option<String>,
    /// Reports already logged, so each is logged once.
    logged: HashSet<String>,
}

/// Counters of the store's condition, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthCounters {
    /// Store calls that failed on I/O.
    pub failures: u64,
    /// Reads that found damaged data.
    pub damage_found: u64,
    /// Reopens that cured a failure.
    pub recoveries: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Health {
    /// Takes note of what `error` says about the store: damage, or an I/O failure.
    pub(super) fn saw(&self, error: &StoreError) {
        if let Some(reason) = error.damage() {
            self.damaged(reason);
        } else if error.is_io_failure() && !error.is_closed_handle() {
            self.failed(&error.to_string());
        }
    }

    fn damaged(&self, reason: String) {
        self.damage_found.fetch_add(1, Ordering::Relaxed);
        let mut damage = lock(&self.damage);
        if damage.logged.len() < DAMAGE_LOGGED && damage.logged.insert(reason.clone()) {
            tracing::error!(
                damage = %reason,
                "the database is damaged: this node serves no data it cannot check and \
                 reports not ready; stop it, run `ledgerd check`, and recover (README, \
                 \"Recovering a damaged database\")"
            );
        }
        damage.first.get_or_insert(reason);
    }

    fn failed(&self, reason: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let new = lock(&self.failure).replace(reason.to_owned()).is_none();
        let recently_cured = lock(&self.recovered_at).is_some_and(|at| at.elapsed() < EPISODE);
        let mut throttle = lock(&self.failure_log);
        if new && !recently_cured {
            // The first failure of an episode is always logged; the rest of it, while
            // it lasts and across reopens that do not hold, at a bounded rate.
            throttle.reset();
            let _ = throttle.allow(());
            tracing::error!(
                error = reason,
                "the database failed; submits are refused and the node reopens it once \
                 writes succeed again"
            );
        } else if let Some(held) = throttle.allow(()) {
            tracing::error!(
                error = reason,
                repeated = held,
                "the database is still failing"
            );
        }
    }

    /// The failure is over: the file was reopened and takes writes. A reopen soon
    /// after an earlier one is still counted but logged only at the bounded rate.
    pub(super) fn recovered(&self) {
        let Some(failure) = lock(&self.failure).take() else {
            return;
        };
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        let recently_cured = lock(&self.recovered_at)
            .replace(Instant::now())
            .is_some_and(|at| at.elapsed() < EPISODE);
        if !recently_cured {
            tracing::info!(%failure, "the database was reopened and takes writes again");
        }
    }

    /// The I/O failure the store is in, if any.
    pub(super) fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// The first damage found, if any.
    pub(super) fn damage(&self) -> Option<String> {
        lock(&self.damage).first.clone()
    }

    pub(super) fn counters(&self) -> HealthCounters {
        HealthCounters {
            failures: self.failures.load(Ordering::Relaxed),
            damage_found: self.damage_found.load(Ordering::Relaxed),
            recoveries: self.recoveries.load(Ordering::Relaxed),
        }
    }
}

/// Bytes a write probe writes and syncs: room for a few blocks.
const PROBE_BYTES: usize = 1 << 20;

/// Writes, syncs and removes a scratch file beside `database`: a file system that is
/// still full, or still failing, refuses it, and the database is left untouched.
pub(super) fn probe_writes(database: &Path) -> Result<(), StoreError> {
    let dir = match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let probe = dir.join(".ledger-write-probe");
    let written = (|| {
        let mut file = File::create(&probe)?;
        // Not zeros, which a compressing file system would store in no space.
        let bytes: Vec<u8> = (0..PROBE_BYTES).map(|i| (i % 251) as u8).collect();
        file.write_all(&bytes)?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    written.map_err(|error| {
        StoreError::Unavailable(format!(
            "{} does not take writes yet ({error})",
            dir.display()
        ))
    })
}

/// How an engine spaces its attempts to recover a failed store: 0.1 s doubling to
/// 5 s, starting over only after a minute without a failure.
pub fn recovery_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5), EPISODE)
}
