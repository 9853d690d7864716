//! The checks after healing: the cluster commits again, the members converge on
//! one chain, every acknowledged entry is in it once at the place its receipt
//! gave, and every saved receipt verifies with `ledgerctl verify`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ledger_chain::Entry;
use ledger_client::types::BlockView;
use ledger_client::Submitted;

use crate::cluster::client;
use crate::load::Record;

/// How long after `healed` an entry submitted through each member committed; an
/// error naming the members that did not within `bound`.
pub fn commits_again(
    members: &[usize],
    healed: Instant,
    bound: Duration,
) -> Result<Duration, String> {
    let mut slowest = Duration::ZERO;
    for &m in members {
        let api = client(m, Duration::from_secs(12)).map_err(|e| e.to_string())?;
        let entry = Entry::new(format!("chaos: member {m} commits after healing"));
        loop {
            if let Ok(Submitted::Committed(_)) = api.submit_wait(&entry, Duration::from_secs(8)) {
                break;
            }
            // A try that timed out may still commit it: asking again finds it.
            if let Ok(view) = api.get(&entry.id()) {
                if view.status == "committed" {
                    break;
                }
            }
            if healed.elapsed() > bound {
                return Err(format!(
                    "member {m} committed nothing within {} s of healing",
                    bound.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        slowest = slowest.max(healed.elapsed());
    }
    Ok(slowest)
}

/// Waits until `members` report the same tip and hold the whole history; the
/// tip's height, or what differed at the deadline.
pub fn converge(members: &[usize], bound: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + bound;
    loop {
        let statuses: Vec<_> = members
            .iter()
            .map(|&m| client(m, Duration::from_secs(5)).ok()?.status().ok())
            .collect();
        let same = statuses.iter().all(|s| {
            matches!((s, &statuses[0]), (Some(s), Some(first))
                if s.tip_hash == first.tip_hash && s.history_from <= 1)
        });
        if same {
            return Ok(statuses[0].as_ref().map_or(0, |s| s.height));
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = statuses
                .iter()
                .zip(members)
                .map(|(s, m)| match s {
                    Some(s) => format!("member {m}: height {} from {}", s.height, s.history_from),
                    None => format!("member {m}: no answer"),
                })
                .collect();
            return Err(format!("the members did not converge: {}", seen.join("; ")));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every block from 1 to `tip` as `member` serves it.
pub fn chain(member: usize, tip: u64) -> anyhow::Result<Vec<BlockView>> {
    let api = client(member, Duration::from_secs(30))?;
    let mut blocks = Vec::with_capacity(tip as usize);
    while (blocks.len() as u64) < tip {
        let from = blocks.len() as u64 + 1;
        let page = api.blocks(from, 100.min(tip + 1 - from))?;
        anyhow::ensure!(
            !page.is_empty(),
            "member {member} served no block from {from}"
        );
        blocks.extend(page);
    }
    Ok(blocks)
}

/// The failures of the record against the chain every member holds: an entry in
/// two places, an acknowledged entry missing or elsewhere than its receipt said.
pub fn record_check(chain: &[BlockView], record: &Record) -> Vec<String> {
    let mut failures = Vec::new();
    let mut places: HashMap<&str, (u64, &str)> = HashMap::new();
    for block in chain {
        for id in &block.entries {
            let place = (block.header.height, block.header.hash.as_str());
            if let Some(first) = places.insert(id, place) {
                failures.push(format!(
                    "entry {id} is committed twice: at heights {} and {}",
                    first.0, place.0
                ));
            }
        }
    }
    for ack in &record.acks {
        match places.get(ack.id.as_str()) {
            None => failures.push(format!(
                "acknowledged entry {} (height {}, through member {}) is not in the chain",
                ack.id, ack.height, ack.member
            )),
            Some(&(height, hash)) if height != ack.height || hash != ack.block_hash => failures
                .push(format!(
                    "acknowledged entry {} is at height {height}, its receipt said {}",
                    ack.id, ack.height
                )),
            Some(_) => {}
        }
    }
    failures.extend(
        record
            .bad
            .iter()
            .map(|b| format!("a receipt did not verify: {b}")),
    );
    failures
}

/// Runs `ledgerctl verify` on every `every`-th saved answer, two at a time; the
/// failures.
pub fn receipts(ledgerctl: &Path, genesis: &Path, record: &Record, every: usize) -> Vec<String> {
    let mut failures = Vec::new();
    let chosen: Vec<_> = record.acks.iter().step_by(every).collect();
    for pair in chosen.chunks(2) {
        let running: Vec<_> = pair
            .iter()
            .map(|ack| {
                let child = Command::new(ledgerctl)
                    .arg("verify")
                    .arg("--genesis")
                    .arg(genesis)
                    .arg(&ack.answer)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn();
                (ack, child)
            })
            .collect();
        for (ack, child) in running {
            match child.and_then(|c| c.wait_with_output()) {
                Ok(out) if out.status.success() => {}
                Ok(out) => failures.push(format!(
                    "ledgerctl verify refused the receipt of {}: {}",
                    ack.id,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(error) => failures.push(format!("cannot run ledgerctl: {error}")),
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use ledger_client::types::HeaderView;

    use super::*;
    use crate::load::Ack;

    fn block(height: u64, entries: &[&str]) -> BlockView {
        BlockView {
            header: HeaderView {
                height,
                hash: format!("hash{height}"),
                prev_hash: String::new(),
                timestamp_ms: 0,
                log_size: 0,
                log_root: String::new(),
                difficulty: 0,
                nonce: 0,
                version: 1,
                chain_hash: String::new(),
            },
            entries: entries.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn ack(id: &str, height: u64) -> Ack {
        Ack {
            id: id.into(),
            height,
            block_hash: format!("hash{height}"),
            member: 0,
            answer: Default::default(),
        }
    }

    #[test]
    fn the_record_check_finds_what_an_operator_fears() {
        let chain = [
            block(1, &["a", "b"]),
            block(2, &["c"]),
            block(3, &["d", "a"]),
        ];
        let mut record = Record {
            acks: vec![ack("b", 1), ack("c", 2)],
            ..Record::default()
        };
        let failures = record_check(&chain, &record);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("entry a is committed twice: at heights 1 and 3"));

        let chain = &chain[..2];
        assert!(record_check(chain, &record).is_empty());
        record.acks.push(ack("e", 2)); // acknowledged, lost
        record.acks.push(ack("a", 2)); // acknowledged, elsewhere
        record
            .bad
            .push("member 1: entry f: a forged certificate".into());
        let failures = record_check(chain, &record);
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0]
            .contains("acknowledged entry e (height 2, through member 0) is not in the chain"));
        assert!(failures[1].contains("acknowledged entry a is at height 1, its receipt said 2"));
        assert!(failures[2].contains("a receipt did not verify"));
    }
}
