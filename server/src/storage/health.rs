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
use std::time::Duration;

use super::StoreError;
use crate::throttle::Throttle;

/// Distinct damage reports logged before further ones are only counted.
const DAMAGE_LOGGED: usize = 1024;
/// Shortest interval between two log lines about a failure that persists.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// The store's condition, shared by every caller.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// The I/O failure the store is in, until a reopen cures it.
    failure: Mutex<Option<String>>,
    damage: Mutex<Damage>,
    /// Failures logged at a bounded rate while they last.
    failure_log: Mutex<Option<Throttle<()>>>,
    failures: AtomicU64,
    damage_found: AtomicU64,
    recoveries: AtomicU64,
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
        } else if error.is_io_failure() {
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
        let first = {
            let mut failure = lock(&self.failure);
            let first = failure.is_none();
            failure.get_or_insert_with(|| reason.to_owned());
            first
        };
        let mut log = lock(&self.failure_log);
        let throttle = log.get_or_insert_with(|| Throttle::new(FAILURE_LOG_EVERY));
        if first {
            // The first failure of a spell is always logged; repeats at a bounded rate.
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

    /// The failure is over: the file was reopened and takes writes.
    pub(super) fn recovered(&self) {
        let cured = lock(&self.failure).take();
        *lock(&self.failure_log) = None;
        if let Some(failure) = cured {
            self.recoveries.fetch_add(1, Ordering::Relaxed);
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
