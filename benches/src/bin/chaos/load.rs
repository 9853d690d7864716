//! The client load and its record: clients submitting through every member, each
//! waiting for its entry's commit and checking the receipt at once; every
//! acknowledged entry is recorded with where its receipt puts it, and its answer
//! saved for `ledgerctl verify`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger_chain::Entry;
use ledger_client::{Client, Submitted, Verified, Verifier};

use crate::cluster;

/// An entry a member acknowledged as committed, with a receipt that verified.
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: String,
    pub height: u64,
    pub block_hash: String,
    pub member: usize,
    /// The answer as received: `submit --wait`'s or `get`'s JSON.
    pub answer: PathBuf,
}

/// What the clients saw.
#[derive(Default)]
pub struct Record {
    pub acks: Vec<Ack>,
    /// Entries whose fate no member told (a timeout, a member gone): each may be
    /// committed, once at most.
    pub unknown: Vec<String>,
    /// Answers that claimed a commit and did not prove it: each is a failure.
    pub bad: Vec<String>,
    pub submits: u64,
    /// When each acknowledged entry was acknowledged, and how long after its first
    /// submit.
    pub latencies: Vec<(Instant, Duration)>,
}

/// Clients running until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    record: Arc<Mutex<Record>>,
}

/// How long a client waits for one commit; a member paused longer than this
/// leaves the entry unknown and the client tries another member.
const COMMIT_WAIT: Duration = Duration::from_secs(8);
/// Tries per entry, each through another member.
const TRIES: usize = 3;

impl Load {
    /// Starts `clients` clients over `members` members, tagging entries with `seed`;
    /// with a `rate`, the clients together start at most that many entries a second.
    pub fn start(
        clients: usize,
        members: usize,
        seed: u64,
        rate: Option<f64>,
        verifier: Verifier,
        answers: &Path,
    ) -> anyhow::Result<Load> {
        let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
        fs::create_dir_all(answers)?;
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let mut threads = Vec::new();
        for c in 0..clients {
            let apis: Vec<Client> = (0..members)
                .map(|m| cluster::client(m, COMMIT_WAIT + Duration::from_secs(4)))
                .collect::<anyhow::Result<_>>()?;
            let client = Worker {
                c,
                seed,
                interval,
                apis,
                verifier: verifier.clone(),
                answers: answers.to_owned(),
                record: record.clone(),
            };
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || client.run(&stop)));
        }
        Ok(Load {
            stop,
            threads,
            record,
        })
    }

    /// Stops the clients (each ends its current submit) and returns the record.
    pub fn stop(self) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.record.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Acknowledged entries so far.
    pub fn acknowledged(&self) -> usize {
        self.record.lock().map(|r| r.acks.len()).unwrap_or(0)
    }

    /// The latencies of entries acknowledged since `since`, sorted.
    pub fn latencies_since(&self, since: Instant) -> Vec<Duration> {
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut recent: Vec<Duration> = record
            .latencies
            .iter()
            .rev()
            .take_while(|(at, _)| *at >= since)
            .map(|(_, latency)| *latency)
            .collect();
        recent.sort_unstable();
        recent
    }
}

struct Worker {
    c: usize,
    seed: u64,
    /// Between the starts of two entries of this client, when paced.
    interval: Option<Duration>,
    apis: Vec<Client>,
    verifier: Verifier,
    answers: PathBuf,
    record: Arc<Mutex<Record>>,
}

/// What one try told of an entry.
enum Outcome {
    Acked(Ack),
    Unknown,
    Bad(String),
}

impl Worker {
    fn run(&self, stop: &AtomicBool) {
        let n = self.apis.len();
        let mut sequence = 0u64;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some(interval) = self.interval {
                // A client behind its pace starts at once, without bursting to
                // catch up.
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                let now = Instant::now();
                next = next.max(now.checked_sub(interval).unwrap_or(now)) + interval;
            }
            let began = Instant::now();
            sequence += 1;
            let mut data = format!(
                "chaos seed {} client {} entry {sequence} ",
                self.seed, self.c
            );
            data.extend(std::iter::repeat_n(
                '.',
                100usize.saturating_sub(data.len()),
            ));
            let entry = Entry::new(data);
            let mut outcome = Outcome::Unknown;
            for t in 0..TRIES {
                let member = (self.c + sequence as usize + t) % n;
                self.with_record(|r| r.submits += 1);
                outcome = self.try_submit(member, &entry);
                if !matches!(outcome, Outcome::Unknown) || stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let id = entry.id().to_hex();
            self.with_record(|r| match outcome {
                Outcome::Acked(ack) => {
                    r.latencies.push((Instant::now(), began.elapsed()));
                    r.acks.push(ack)
                }
                Outcome::Unknown => r.unknown.push(id),
                Outcome::Bad(why) => r.bad.push(why),
            });
        }
    }

    fn with_record(&self, change: impl FnOnce(&mut Record)) {
        change(&mut self.record.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// One submit through `member`; a member that already has the entry (a try
    /// before this one reached it) is asked for its receipt.
    fn try_submit(&self, member: usize, entry: &Entry) -> Outcome {
        let api = &self.apis[member];
        match api.submit_wait(entry, COMMIT_WAIT) {
            Ok(Submitted::Committed(view)) => {
                let checked = self.verifier.committed(&view, entry);
                self.outcome(member, entry, checked, &*view)
            }
            Err(error) if error.code() == Some("duplicate") => match api.get(&entry.id()) {
                Ok(view) if view.status == "committed" => {
                    let checked = self.verifier.entry(&view);
                    self.outcome(member, entry, checked, &view)
                }
                _ => Outcome::Unknown,
            },
            _ => Outcome::Unknown,
        }
    }

    fn outcome<E: std::fmt::Display>(
        &self,
        member: usize,
        entry: &Entry,
        checked: Result<Verified, E>,
        answer: &impl serde::Serialize,
    ) -> Outcome {
        let id = entry.id().to_hex();
        let verified = match checked {
            Ok(verified)
                if verified.receipt.entry_id == entry.id()
                    && verified.entry.as_ref().is_none_or(|e| e == entry) =>
            {
                verified
            }
            Ok(_) => return Outcome::Bad(format!("member {member}: entry {id}: other data")),
            Err(error) => return Outcome::Bad(format!("member {member}: entry {id}: {error}")),
        };
        let path = self.answers.join(format!("{id}.json"));
        if let Ok(json) = serde_json::to_vec_pretty(answer) {
            let _ = fs::write(&path, json);
        }
        Outcome::Acked(Ack {
            id,
            height: verified.receipt.header.height,
            block_hash: verified.receipt.header.hash().to_hex(),
            member,
            answer: path,
        })
    }
}
