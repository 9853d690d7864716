//! The soak: the cluster under a steady paced load with no faults, sampled at a
//! fixed interval. Each sample holds, per member: resident memory, open
//! descriptors, database bytes, pool size, waiting clients. For the cluster it
//! holds the entries committed, and for the load the latencies of the entries
//! acknowledged since the last sample. The samples go to `soak.csv`. Growth
//! without bound fails the run; growth with the chain is stated per entry.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::cluster::{self, Cluster};

/// One member at one sample.
#[derive(Clone, Debug, Default)]
pub struct MemberSample {
    pub rss_kib: u64,
    pub fds: u64,
    pub db_bytes: u64,
    pub pool: u64,
    pub waiters: u64,
}

/// The whole cluster at one sample.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at_s: u64,
    pub entries: u64,
    pub acknowledged: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub members: Vec<MemberSample>,
}

/// Takes a sample now; `latencies` are those of the entries acknowledged since
/// the last one, sorted.
pub fn sample(cluster: &Cluster, at_s: u64, latencies: &[Duration]) -> Sample {
    let (members, committed): (Vec<MemberSample>, Vec<u64>) = (0..cluster.members.len())
        .map(|m| member(cluster, m))
        .unzip();
    let quantile = |q: f64| match latencies.len() {
        0 => 0.0,
        n => latencies[((n - 1) as f64 * q) as usize].as_secs_f64() * 1000.0,
    };
    Sample {
        at_s,
        entries: committed.first().copied().unwrap_or(0),
        acknowledged: latencies.len(),
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        members,
    }
}

/// Member `m`'s sample, and the entries it counts committed.
fn member(cluster: &Cluster, m: usize) -> (MemberSample, u64) {
    let pid = cluster.pid(m);
    let rss_kib = pid
        .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    let fds = pid
        .and_then(|pid| fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map_or(0, |dir| dir.count() as u64);
    let db_bytes = fs::metadata(cluster.members[m].data.join("ledger.redb")).map_or(0, |m| m.len());
    let metrics = metrics(m);
    let sample = MemberSample {
        rss_kib,
        fds,
        db_bytes,
        pool: value(&metrics, "ledger_pool_size"),
        waiters: value(&metrics, "ledger_commit_waiters"),
    };
    (sample, value(&metrics, "ledger_entries_committed_total"))
}

/// Member `m`'s `/metrics`, empty when it cannot be read.
fn metrics(m: usize) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(format!("{}/metrics", cluster::api(m)))
        .call()
        .ok()
        .and_then(|mut answer| answer.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

/// A gauge or counter in `/metrics` text, 0 when absent.
fn value(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The CSV header and one row per sample.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from("seconds,entries,acknowledged,p50_ms,p99_ms");
    for m in 0..samples.first().map_or(0, |s| s.members.len()) {
        let _ = write!(
            out,
            ",rss_kib_{m},fds_{m},db_bytes_{m},pool_{m},waiters_{m}"
        );
    }
    out.push('\n');
    for s in samples {
        let _ = write!(
            out,
            "{},{},{},{:.1},{:.1}",
            s.at_s, s.entries, s.acknowledged, s.p50_ms, s.p99_ms
        );
        for m in &s.members {
            let _ = write!(
                out,
                ",{},{},{},{},{}",
                m.rss_kib, m.fds, m.db_bytes, m.pool, m.waiters
            );
        }
        out.push('\n');
    }
    out
}

/// One line for the log.
pub fn line(s: &Sample) -> String {
    let each = |f: fn(&MemberSample) -> u64| s.members.iter().map(f).collect::<Vec<_>>();
    format!(
        "[{:5} s] {} committed, {} acknowledged since the last, p50 {:.1} ms p99 {:.1} ms; \
         RSS MiB {:?} fds {:?} db MiB {:?} pool {:?} waiters {:?}",
        s.at_s,
        s.entries,
        s.acknowledged,
        s.p50_ms,
        s.p99_ms,
        each(|m| m.rss_kib / 1024),
        each(|m| m.fds),
        each(|m| m.db_bytes >> 20),
        each(|m| m.pool),
        each(|m| m.waiters),
    )
}

/// What grew, judged from the sample after warm-up (the second) to the last:
/// descriptors and waiting clients must not grow, the pool must stay below a
/// second of load; memory and database grow with the chain, stated per entry.
pub fn judge(samples: &[Sample], clients: usize, rate: f64) -> (Vec<String>, Vec<String>) {
    let (mut findings, mut failures) = (Vec::new(), Vec::new());
    let (Some(first), Some(last)) = (samples.get(1), samples.last()) else {
        failures.push("the soak took fewer than two samples".to_owned());
        return (findings, failures);
    };
    let entries = last.entries.saturating_sub(first.entries).max(1);
    for (m, (a, b)) in first.members.iter().zip(&last.members).enumerate() {
        let rss_per_entry = (b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / entries as f64;
        let db_per_entry = b.db_bytes as f64 / last.entries.max(1) as f64;
        let after_warm_up = || samples[1..].iter().map(|s| &s.members[m]);
        findings.push(format!(
            "member {m}: RSS {} -> {} MiB ({rss_per_entry:+.1} bytes per entry committed \
             meanwhile), descriptors {} -> {}, database {:.0} bytes per entry at the end",
            a.rss_kib / 1024,
            b.rss_kib / 1024,
            a.fds,
            b.fds,
            db_per_entry
        ));
        if b.fds > a.fds + 16 {
            failures.push(format!(
                "member {m}: open descriptors grew from {} to {}",
                a.fds, b.fds
            ));
        }
        let most_waiters = after_warm_up().map(|s| s.waiters).max().unwrap_or(0);
        if most_waiters > 2 * clients as u64 {
            failures.push(format!(
                "member {m}: {most_waiters} waiting clients at once, with {clients} clients"
            ));
        }
        let most_pool = after_warm_up().map(|s| s.pool).max().unwrap_or(0);
        if most_pool as f64 > rate.max(1.0) {
            failures.push(format!(
                "member {m}: {most_pool} entries pooled at once, more than a second of load"
            ));
        }
    }
    let p99s: Vec<f64> = samples[1..].iter().map(|s| s.p99_ms).collect();
    let most = p99s.iter().copied().fold(0.0, f64::max);
    let least = p99s.iter().copied().fold(f64::MAX, f64::min);
    findings.push(format!(
        "p99 per interval after warm-up: {least:.1} to {most:.1} ms, over {} intervals",
        p99s.len()
    ));
    (findings, failures)
}

/// Writes the samples as CSV into `work`.
pub fn save(work: &Path, samples: &[Sample]) -> std::io::Result<()> {
    fs::write(work.join("soak.csv"), csv(samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_s: u64, entries: u64, fds: u64, waiters: u64) -> Sample {
        let member = MemberSample {
            rss_kib: 50_000 + entries / 10,
            fds,
            db_bytes: entries * 300,
            pool: 3,
            waiters,
        };
        Sample {
            at_s,
            entries,
            acknowledged: 100,
            p50_ms: 5.0,
            p99_ms: 20.0 + at_s as f64 / 60.0,
            members: vec![member.clone(), member],
        }
    }

    #[test]
    fn steady_samples_pass_and_growth_fails() {
        let steady: Vec<Sample> = (1..=10).map(|k| at(60 * k, 10_000 * k, 40, 8)).collect();
        let (findings, failures) = judge(&steady, 8, 200.0);
        assert!(failures.is_empty(), "{failures:?}");
        assert!(
            findings[0].contains("database 300 bytes per entry"),
            "{findings:?}"
        );
        assert!(
            findings[2].contains("p99 per interval after warm-up: 22.0 to 30.0 ms"),
            "{findings:?}"
        );

        let leaking: Vec<Sample> = (1..=10)
            .map(|k| at(60 * k, 10_000 * k, 40 + 5 * k, 8 * k))
            .collect();
        let (_, failures) = judge(&leaking, 8, 200.0);
        assert_eq!(failures.len(), 4, "{failures:?}");
        assert!(failures[0].contains("member 0: open descriptors grew from 50 to 90"));
        assert!(failures[1].contains("member 0: 80 waiting clients at once, with 8 clients"));
        let csv = csv(&leaking);
        assert_eq!(csv.lines().count(), 11);
        assert!(csv.starts_with("seconds,entries,acknowledged,p50_ms,p99_ms,rss_kib_0,"));
    }
}
