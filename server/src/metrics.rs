//! The node's Prometheus metrics: a handful of atomics rendered as text exposition
//! format. Small enough that a metrics crate would add more than it saves.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::chain::Header;
use crate::storage::HealthCounters;

/// Upper bounds of the commit latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
    }
}

/// A counter per value of one label (a message kind, a drop reason). Labels come
/// from fixed sets in the code, so the map stays small.
#[derive(Debug, Default)]
pub struct Labelled(Mutex<BTreeMap<&'static str, u64>>);

impl Labelled {
    /// Adds `n` to the counter of `label`.
    pub fn add(&self, label: &'static str, n: u64) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(label).or_default() += n;
    }

    /// The counter of `label`.
    pub fn get(&self, label: &str) -> u64 {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(label).copied().unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (value, count) in counts.iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
        }
    }
}

/// How a metric's atomic is shown.
enum Value<'a> {
    /// As the integer it holds.
    Count(&'a AtomicU64),
    /// Microseconds, shown as seconds (Prometheus' base unit).
    Micros(&'a AtomicU64),
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Height of the last applied block.
    pub height: AtomicU64,
    /// Entries waiting to be committed (what `pool_capacity` bounds).
    pub pool_size: AtomicU64,
    /// Clients waiting for their entries' commits (members).
    pub commit_waiters: AtomicU64,
    /// Entries accepted into the pool.
    pub entries_accepted: AtomicU64,
    /// Entries refused at submit.
    pub entries_rejected: AtomicU64,
    /// Entries committed.
    pub entries_committed: AtomicU64,
    /// Blocks applied.
    pub blocks_applied: AtomicU64,
    /// Nonces tried by the miner.
    pub pow_hashes: AtomicU64,
    /// Time spent mining, microseconds.
    pub pow_micros: AtomicU64,
    /// Hash rate of the last mined block, hashes per second.
    pub pow_hash_rate: AtomicU64,
    /// From an entry's acceptance to its block's commit.
    pub commit_latency: Histogram,
    /// Applying one block to the store.
    pub apply_latency: Histogram,
    /// The PBFT view (clusters).
    pub view: AtomicU64,
    /// Views entered or started since start.
    pub view_changes: AtomicU64,
    /// Members connected both ways.
    pub peers_connected: AtomicU64,
    /// Frames received from members, by kind.
    pub messages_in: Labelled,
    /// Frames queued to members, by kind (one per recipient).
    pub messages_out: Labelled,
    /// Inputs refused, by reason.
    pub messages_dropped: Labelled,
    /// Client API requests refused before their handler, by reason.
    pub api_refused: Labelled,
    /// Plugin hook calls, by hook.
    pub plugin_calls: Labelled,
    /// Time in plugin hooks, by hook, in microseconds.
    pub plugin_micros: Labelled,
    /// Plugin hook calls that rejected or failed, by hook.
    pub plugin_rejections: Labelled,
    /// Store calls that failed on I/O (a full disk, a failed write).
    pub store_failures: AtomicU64,
    /// Reads that found damaged data.
    pub store_damage_found: AtomicU64,
    /// Reopens that cured an I/O failure.
    pub store_recoveries: AtomicU64,
    /// 1 while the store is in an I/O failure.
    pub store_failed: AtomicU64,
    /// 1 once damage was found (until the node restarts on a repaired database).
    pub store_damaged: AtomicU64,
    /// Snapshot chunks served to joining nodes.
    pub snapshot_chunks_served: AtomicU64,
    /// Bytes of snapshot chunks served.
    pub snapshot_bytes_served: AtomicU64,
    /// Snapshot chunks this node fetched and checked when it joined.
    pub snapshot_chunks_fetched: AtomicU64,
    /// Bytes of snapshot chunks fetched.
    pub snapshot_bytes_fetched: AtomicU64,
    /// Blocks below a snapshot fetched and checked since start.
    pub history_blocks_fetched: AtomicU64,
    /// The lowest height above genesis whose block is held (1 once it holds all).
    pub history_from: AtomicU64,
    /// The height of the snapshot this node is joining from (0 before one is chosen).
    pub join_height: AtomicU64,
    /// Chunks of that snapshot.
    pub join_chunks: AtomicU64,
    /// Chunks of it checked and written so far, a resumed join's earlier ones included.
    pub join_chunks_held: AtomicU64,
    /// Voting members in the membership in force, n.
    pub members: AtomicU64,
    /// Votes a certificate needs, q.
    pub quorum: AtomicU64,
    /// 1 when this node reaches a quorum of members (itself included), else 0.
    pub has_quorum: AtomicU64,
    /// 1 when this node votes on blocks ([`crate::node::Node::votes`]).
    pub voting: AtomicU64,
    /// 1 while a member catches up with the others, else 0.
    pub catching_up: AtomicU64,
    /// On a follower or learner: blocks the member it reads from is ahead of it.
    pub behind: AtomicU64,
}

impl Metrics {
    /// Records a block applied to the store: the one place either engine reports it.
    pub fn block_applied(&self, header: &Header, entries: usize, elapsed: Duration) {
        self.apply_latency.observe(elapsed);
        self.height.store(header.height, Ordering::Relaxed);
        self.blocks_applied.fetch_add(1, Ordering::Relaxed);
        self.entries_committed
            .fetch_add(entries as u64, Ordering::Relaxed);
    }

    /// Records a finished mining run.
    pub fn record_mining(&self, hashes: u64, elapsed: Duration) {
        self.pow_hashes.fetch_add(hashes, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.pow_micros.fetch_add(micros, Ordering::Relaxed);
        if let Some(rate) = hashes.saturating_mul(1_000_000).checked_div(micros) {
            self.pow_hash_rate.store(rate, Ordering::Relaxed);
        }
    }

    /// Copies the store's condition into the metrics.
    pub fn record_store(&self, counters: HealthCounters, failed: bool, damaged: bool) {
        self.store_failures
            .store(counters.failures, Ordering::Relaxed);
        self.store_damage_found
            .store(counters.damage_found, Ordering::Relaxed);
        self.store_recoveries
            .store(counters.recoveries, Ordering::Relaxed);
        self.store_failed
            .store(u64::from(failed), Ordering::Relaxed);
        self.store_damaged
            .store(u64::from(damaged), Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP ledger_build_info The build: its version and commit.\n\
             # TYPE ledger_build_info gauge\n\
             ledger_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::cli::COMMIT
        );
        let metrics: [(&str, &str, &str, Value); 33] = [
            (
                "ledger_has_quorum",
                "gauge",
                "1 when this node reaches a quorum of members, itself included (a node alone or a follower: always).",
                Value::Count(&self.has_quorum),
            ),
            (
                "ledger_voting",
                "gauge",
                "1 when this node votes on blocks (a member, or a node alone); 0 on a follower or learner, on a member whose consensus stopped, and on one that abstains after it started without the record of what it signed. Summed over a cluster's members: the voters, which must be at least ledger_quorum.",
                Value::Count(&self.voting),
            ),
            (
                "ledger_catching_up",
                "gauge",
                "1 while this member fetches blocks the others committed ahead of it.",
                Value::Count(&self.catching_up),
            ),
            (
                "ledger_behind_blocks",
                "gauge",
                "On a follower or learner: blocks the member it reads from is ahead of it (0 on a member).",
                Value::Count(&self.behind),
            ),
            (
                "ledger_members",
                "gauge",
                "Voting members in the membership in force (n).",
                Value::Count(&self.members),
            ),
            (
                "ledger_quorum",
                "gauge",
                "Votes a certificate needs (q); fewer members reachable commit nothing.",
                Value::Count(&self.quorum),
            ),
            (
                "ledger_height",
                "gauge",
                "Height of the last applied block.",
                Value::Count(&self.height),
            ),
            (
                "ledger_pool_size",
                "gauge",
                "Entries waiting to be committed, what pool_capacity bounds.",
                Value::Count(&self.pool_size),
            ),
            (
                "ledger_commit_waiters",
                "gauge",
                "Clients waiting for their entries' commits (?wait=commit) on a member.",
                Value::Count(&self.commit_waiters),
            ),
            (
                "ledger_entries_accepted_total",
                "counter",
                "Entries accepted into the pool.",
                Value::Count(&self.entries_accepted),
            ),
            (
                "ledger_entries_rejected_total",
                "counter",
                "Entries refused at submit.",
                Value::Count(&self.entries_rejected),
            ),
            (
                "ledger_entries_committed_total",
                "counter",
                "Entries committed.",
                Value::Count(&self.entries_committed),
            ),
            (
                "ledger_blocks_applied_total",
                "counter",
                "Blocks applied to the store.",
                Value::Count(&self.blocks_applied),
            ),
            (
                "ledger_pow_hashes_total",
                "counter",
                "Nonces tried by the miner.",
                Value::Count(&self.pow_hashes),
            ),
            (
                "ledger_pow_hash_rate",
                "gauge",
                "Miner hash rate over the last block, hashes per second.",
                Value::Count(&self.pow_hash_rate),
            ),
            (
                "ledger_pow_seconds_total",
                "counter",
                "Time spent mining.",
                Value::Micros(&self.pow_micros),
            ),
            (
                "ledger_view",
                "gauge",
                "The PBFT view.",
                Value::Count(&self.view),
            ),
            (
                "ledger_view_changes_total",
                "counter",
                "Views this node moved to since it started.",
                Value::Count(&self.view_changes),
            ),
            (
                "ledger_peers_connected",
                "gauge",
                "Members connected to this node both ways.",
                Value::Count(&self.peers_connected),
            ),
            (
                "ledger_store_failures_total",
                "counter",
                "Database calls that failed on I/O (a full disk, a failed write or fsync).",
                Value::Count(&self.store_failures),
            ),
            (
                "ledger_store_recoveries_total",
                "counter",
                "Reopens of the database that cured an I/O failure.",
                Value::Count(&self.store_recoveries),
            ),
            (
                "ledger_store_failed",
                "gauge",
                "1 while the database is in an I/O failure and submits are refused.",
                Value::Count(&self.store_failed),
            ),
            (
                "ledger_store_damage_found_total",
                "counter",
                "Reads that found damaged data in the database.",
                Value::Count(&self.store_damage_found),
            ),
            (
                "ledger_store_damaged",
                "gauge",
                "1 once damage was found in the database: the node is not ready until repaired.",
                Value::Count(&self.store_damaged),
            ),
            (
                "ledger_snapshot_chunks_served_total",
                "counter",
                "Snapshot chunks served to joining nodes.",
                Value::Count(&self.snapshot_chunks_served),
            ),
            (
                "ledger_snapshot_bytes_served_total",
                "counter",
                "Bytes of snapshot chunks served to joining nodes.",
                Value::Count(&self.snapshot_bytes_served),
            ),
            (
                "ledger_snapshot_chunks_fetched_total",
                "counter",
                "Snapshot chunks fetched and checked when this node joined.",
                Value::Count(&self.snapshot_chunks_fetched),
            ),
            (
                "ledger_snapshot_bytes_fetched_total",
                "counter",
                "Bytes of snapshot chunks fetched when this node joined.",
                Value::Count(&self.snapshot_bytes_fetched),
            ),
            (
                "ledger_history_blocks_fetched_total",
                "counter",
                "Blocks below the snapshot this node joined from, fetched and checked.",
                Value::Count(&self.history_blocks_fetched),
            ),
            (
                "ledger_history_from",
                "gauge",
                "Lowest height above genesis whose block this node holds (1: the whole chain).",
                Value::Count(&self.history_from),
            ),
            (
                "ledger_join_height",
                "gauge",
                "Height of the snapshot this node joined, or is joining, from (0: none).",
                Value::Count(&self.join_height),
            ),
            (
                "ledger_join_chunks",
                "gauge",
                "Chunks of the snapshot this node joined, or is joining, from.",
                Value::Count(&self.join_chunks),
            ),
            (
                "ledger_join_chunks_held",
                "gauge",
                "Chunks of that snapshot checked and written so far.",
                Value::Count(&self.join_chunks_held),
            ),
        ];
        for (name, kind, help, value) in metrics {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match value {
                Value::Count(count) => {
                    let _ = writeln!(out, "{name} {}", count.load(Ordering::Relaxed));
                }
                Value::Micros(micros) => {
                    let seconds = micros.load(Ordering::Relaxed) as f64 / 1e6;
                    let _ = writeln!(out, "{name} {seconds}");
                }
            }
        }
        self.commit_latency.render(
            &mut out,
            "ledger_commit_latency_seconds",
            "From an entry's acceptance to the commit of its block.",
        );
        self.apply_latency.render(
            &mut out,
            "ledger_apply_seconds",
            "Applying one block in one durable write transaction.",
        );
        self.messages_in.render(
            &mut out,
            "ledger_messages_in_total",
            "kind",
            "Frames received from members.",
        );
        self.messages_out.render(
            &mut out,
            "ledger_messages_out_total",
            "kind",
            "Frames queued to members, one per recipient.",
        );
        self.messages_dropped.render(
            &mut out,
            "ledger_messages_dropped_total",
            "reason",
            "Inputs refused: frames, messages, entries and blocks.",
        );
        self.api_refused.render(
            &mut out,
            "ledger_api_refused_total",
            "reason",
            "Client API requests refused before their handler: unauthorized (no or an \
             unknown token), forbidden (a role too low), rate_limited.",
        );
        self.plugin_calls.render(
            &mut out,
            "ledger_plugin_calls_total",
            "hook",
            "Plugin hook calls.",
        );
        self.plugin_rejections.render(
            &mut out,
            "ledger_plugin_rejections_total",
            "hook",
            "Plugin hook calls that rejected or failed.",
        );
        let _ = writeln!(
            out,
            "# HELP ledger_plugin_seconds_total Time spent in plugin hooks.\n\
             # TYPE ledger_plugin_seconds_total counter"
        );
        let micros = self
            .plugin_micros
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (hook, micros) in micros.iter() {
            let seconds = *micros as f64 / 1e6;
            let _ = writeln!(
                out,
                "ledger_plugin_seconds_total{{hook=\"{hook}\"}} {seconds}"
            );
        }
        drop(micros);
        process_metrics(&mut out);
        out
    }
}

/// The process's limit on open file descriptors (its soft `RLIMIT_NOFILE`), from
/// `/proc/self/limits` (Linux; elsewhere unknown).
pub fn max_open_files() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse::<u64>().ok())
}

/// The standard `process_*` metrics, read from `/proc/self` (Linux; elsewhere none).
fn process_metrics(out: &mut String) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return;
    };
    // In kB, the one unit /proc/self/status uses.
    let kilobytes = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Field n of stat(5) is fields[n - 3]; times are in USER_HZ, 100 on Linux.
    let ticks = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = ticks(14)
        .zip(ticks(15))
        .map(|(user, system)| (user + system) as f64 / 100.0);
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse::<u64>().ok())
    });
    let start_seconds = ticks(22)
        .zip(boot_time)
        .map(|(start, boot)| boot as f64 + start as f64 / 100.0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as f64)
        .ok();
    let max_fds = max_open_files();
    let gauges = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, seconds.",
            cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, bytes.",
            kilobytes("VmRSS:").map(|b| b as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size, bytes.",
            kilobytes("VmSize:").map(|b| b as f64),
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "The limit on open file descriptors.",
            max_fds.map(|m| m as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process, seconds since the Unix epoch.",
            start_seconds,
        ),
    ];
    for (name, kind, help, value) in gauges {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.commit_latency.observe(Duration::from_millis(3));
        metrics.commit_latency.observe(Duration::from_millis(30));
        metrics.height.store(7, Ordering::Relaxed);
        metrics.record_mining(3_000, Duration::from_millis(1500));
        let text = metrics.render();
        assert!(text.contains("ledger_pow_seconds_total 1.5\n"), "{text}");
        assert!(text.contains("ledger_pow_hash_rate 2000\n"), "{text}");
        assert!(text.contains("ledger_height 7\n"), "{text}");
        assert!(text.contains("ledger_commit_latency_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("ledger_commit_latency_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("ledger_commit_latency_seconds_count 2\n"));
        metrics.messages_in.add("prepare", 2);
        metrics.messages_in.add("prepare", 1);
        metrics.messages_dropped.add("Stale", 1);
        let text = metrics.render();
        assert!(
            text.contains("ledger_messages_in_total{kind=\"prepare\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("ledger_messages_dropped_total{reason=\"Stale\"} 1\n"));
        assert!(text.contains("ledger_build_info{version=\""), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_come_from_proc() {
        let text = Metrics::default().render();
        let value = |name: &str| -> f64 {
            let prefix = format!("\n{name} ");
            let at = text
                .find(&prefix)
                .unwrap_or_else(|| panic!("{name}: {text}"));
            let rest = &text[at + prefix.len()..];
            rest[..rest.find('\n').unwrap()].parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }
}
