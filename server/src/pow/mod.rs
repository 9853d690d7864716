//! The proof-of-work miner.
//!
//! The header's first 128 bytes never change while mining, so they are compressed once
//! into a SHA-256 midstate; each nonce then costs exactly one compression of the last
//! block (nonce ‖ padding ‖ length). On x86-64 with the SHA extensions two nonces'
//! compressions run interleaved (`lanes`), 2.3× the rate of one at a time. Threads
//! take disjoint batches of nonces and stop within one batch of a cancel or a find.
//!
//! The miner hashes on the calling thread and on `threads` − 1 helper threads,
//! started at the first run that needs them and parked between runs, and blocks the
//! caller until they are done: run it from a dedicated thread or `spawn_blocking`,
//! never on an async worker. Helpers are shared by the process: a share that a helper
//! busy with another caller's run has not begun, the caller searches itself.

use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use sha2::block_api::compress256;

use crate::chain::{Hash, Header, HEADER_LEN, NONCE_OFFSET};

#[cfg(target_arch = "x86_64")]
mod lanes;

/// SHA-256 initial hash value (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
/// Nonces a thread tries between looks at the stop flag: 20–60 µs of one core,
/// so the other threads stop soon after one finds (a block waits for all of them)
/// and a look costs nothing beside a batch.
const BATCH: u64 = 1_024;
/// Nonces per pass of the two-lane path: three measured slower than two (registers spill).
#[cfg(target_arch = "x86_64")]
const LANES: usize = 2;

/// A header prepared for mining: the midstate and the last block with its padding.
#[derive(Clone, Debug)]
pub struct Template {
    midstate: [u32; 8],
    last_block: [u8; 64],
    /// `last_block` as big-endian words, as the two-lane path takes it.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    words: [u32; 16],
    difficulty: u32,
}

impl Template {
    /// Prepares `header` (its nonce is ignored) for mining at its own difficulty.
    pub fn new(header: &Header) -> Template {
        let bytes = header.encode();
        let mut midstate = SHA256_IV;
        let mut prefix = [[0u8; 64]; 2];
        prefix[0].copy_from_slice(&bytes[..64]);
        prefix[1].copy_from_slice(&bytes[64..NONCE_OFFSET]);
        compress256(&mut midstate, &prefix);

        let mut last_block = [0u8; 64];
        let tail = HEADER_LEN - NONCE_OFFSET;
        last_block[..tail].copy_from_slice(&bytes[NONCE_OFFSET..]);
        last_block[tail] = 0x80;
        let bit_len = (HEADER_LEN as u64) * 8;
        last_block[56..].copy_from_slice(&bit_len.to_be_bytes());
        let mut words = [0u32; 16];
        for (word, bytes) in words.iter_mut().zip(last_block.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        Template {
            midstate,
            last_block,
            words,
            difficulty: header.difficulty,
        }
    }

    /// The block hash for `nonce`: one compression.
    pub fn hash(&self, nonce: u64) -> Hash {
        let state = self.state_for(nonce, &mut self.last_block.clone());
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Hash(out)
    }

    #[inline(always)]
    fn state_for(&self, nonce: u64, block: &mut [u8; 64]) -> [u32; 8] {
        block[..8].copy_from_slice(&nonce.to_be_bytes());
        let mut state = self.midstate;
        compress256(&mut state, std::slice::from_ref(block));
        state
    }

    /// Tries `count` nonces `start, start + stride, ...`; returns the first that meets
    /// the difficulty. The hot loop: no allocation, one compression per nonce.
    pub fn search(&self, start: u64, stride: u64, count: u64) -> Option<u64> {
        #[cfg(target_arch = "x86_64")]
        if let Some(lanes) = lanes::Lanes::detect() {
            return self.search_in_pairs(lanes, start, stride, count);
        }
        self.search_one_by_one(start, stride, count)
    }

    /// [`Template::search`] two nonces at a time (see `lanes`).
    #[cfg(target_arch = "x86_64")]
    fn search_in_pairs(
        &self,
        lanes: lanes::Lanes,
        start: u64,
        stride: u64,
        count: u64,
    ) -> Option<u64> {
        let needed = self.difficulty.min(32);
        let mut block = self.last_block;
        let mut nonce = start;
        for _ in 0..count / LANES as u64 {
            let pair: [u64; LANES] =
                std::array::from_fn(|i| nonce.wrapping_add(stride.wrapping_mul(i as u64)));
            let firsts = lanes.first_words(&self.midstate, &self.words, pair);
            for (nonce, first) in pair.into_iter().zip(firsts) {
                // The first word decides up to 32 bits; the scalar path confirms.
                if first.leading_zeros() >= needed
                    && meets(&self.state_for(nonce, &mut block), self.difficulty)
                {
                    return Some(nonce);
                }
            }
            nonce = nonce.wrapping_add(stride.wrapping_mul(LANES as u64));
        }
        self.search_one_by_one(nonce, stride, count % LANES as u64)
    }

    fn search_one_by_one(&self, start: u64, stride: u64, count: u64) -> Option<u64> {
        let mut block = self.last_block;
        let mut nonce = start;
        for _ in 0..count {
            let state = self.state_for(nonce, &mut block);
            if meets(&state, self.difficulty) {
                return Some(nonce);
            }
            nonce = nonce.wrapping_add(stride);
        }
        None
    }
}

/// Whether a hash, as SHA-256 state words, has `difficulty` leading zero bits.
#[inline(always)]
fn meets(state: &[u32; 8], difficulty: u32) -> bool {
    let mut needed = difficulty;
    for word in state {
        if needed == 0 {
            return true;
        }
        let zeros = word.leading_zeros();
        if zeros < needed.min(32) {
            return false;
        }
        needed = needed.saturating_sub(32);
    }
    needed == 0
}

/// How a mining run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A nonce meeting the difficulty; `header` with this nonce hashes to `hash`.
    Found {
        /// The winning nonce.
        nonce: u64,
        /// The block hash with that nonce.
        hash: Hash,
    },
    /// The cancel flag was raised first.
    Cancelled,
    /// Every nonce of the range was tried; change the timestamp and mine again.
    Exhausted,
}

/// The result of [`mine`], with the work done, for the hash-rate metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MineReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Nonces tried by all threads.
    pub hashes: u64,
}

/// Threads to mine with when the operator does not say: every core.
pub fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Mines `header` on `threads` threads until a nonce meets its difficulty or `cancel`
/// is raised. Blocks the caller; see the module docs.
pub fn mine(header: &Header, threads: NonZeroUsize, cancel: &AtomicBool) -> MineReport {
    mine_range(header, threads, 0..u64::MAX, cancel)
}

/// Like [`mine`], trying only `nonces`: a caller that wants to refresh the template
/// (a newer timestamp, more entries) mines a range at a time; benches measure a fixed
/// amount of work. Ends `Exhausted` when the range is done without a find.
pub fn mine_range(
    header: &Header,
    threads: NonZeroUsize,
    nonces: Range<u64>,
    cancel: &AtomicBool,
) -> MineReport {
    let len = nonces.end.saturating_sub(nonces.start);
    let threads = threads.get();
    let mut claimed = vec![false; threads];
    claimed[0] = true; // the caller's
    let run = Arc::new(Run {
        template: Template::new(header),
        start: nonces.start,
        len,
        batches: len.div_ceil(BATCH),
        threads: threads as u64,
        stop: AtomicBool::new(false),
        hashes: AtomicU64::new(0),
        found: Mutex::new(None),
        shares: Mutex::new(Shares {
            claimed,
            searching: 0,
            lost: false,
        }),
        searched: Condvar::new(),
    });
    helpers().hand_out(&run);
    // The caller is the first of the threads: it hashes instead of waiting. Then it
    // takes every share no helper has begun (a helper may be busy with another
    // caller's run, or not be there), and waits only for those that have.
    run.search(0, Some(cancel));
    for share in run.claim_the_rest() {
        run.search(share, Some(cancel));
    }
    run.wait_for_helpers(cancel);
    let hashes = run.hashes.load(Ordering::Relaxed);
    let found = *run.found.lock().unwrap_or_else(PoisonError::into_inner);
    let outcome = match found {
        Some(nonce) => Outcome::Found {
            nonce,
            hash: run.template.hash(nonce),
        },
        None if cancel.load(Ordering::Relaxed) => Outcome::Cancelled,
        None => Outcome::Exhausted,
    };
    MineReport { outcome, hashes }
}

/// One mining run, shared by the caller and its helpers.
struct Run {
    template: Template,
    start: u64,
    len: u64,
    /// Batch b covers nonces [start + b·BATCH, start + (b+1)·BATCH), and share t
    /// holds batches t, t + threads, ...: shares never overlap and together cover
    /// the range.
    batches: u64,
    threads: u64,
    stop: AtomicBool,
    hashes: AtomicU64,
    found: Mutex<Option<u64>>,
    shares: Mutex<Shares>,
    /// Signalled when the last helper searching this run is done.
    searched: Condvar,
}

/// Who searches which share of a run.
struct Shares {
    /// Share t has been taken, by a helper or by the caller; each is searched once.
    claimed: Vec<bool>,
    /// Helpers searching a share of this run now.
    searching: u64,
    /// A helper panicked inside its share.
    lost: bool,
}

impl Run {
    fn shares(&self) -> std::sync::MutexGuard<'_, Shares> {
        self.shares.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Searches share `share`'s batches until they end, a find, or a stop. Only the
    /// caller holds `cancel`; it passes a cancel on to the helpers as a stop.
    fn search(&self, share: u64, cancel: Option<&AtomicBool>) {
        let mut batch = share;
        while batch < self.batches {
            if cancel.is_some_and(|cancel| cancel.load(Ordering::Relaxed)) {
                self.stop.store(true, Ordering::Relaxed);
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let offset = batch * BATCH;
            let count = BATCH.min(self.len - offset);
            let result = self.template.search(self.start + offset, 1, count);
            let tried = result.map_or(count, |nonce| nonce - (self.start + offset) + 1);
            self.hashes.fetch_add(tried, Ordering::Relaxed);
            if let Some(nonce) = result {
                let mut slot = self.found.lock().unwrap_or_else(PoisonError::into_inner);
                if slot.is_none_or(|other| nonce < other) {
                    *slot = Some(nonce);
                }
                self.stop.store(true, Ordering::Relaxed);
                return;
            }
            batch += self.threads;
        }
    }

    /// The shares no helper has begun, now the caller's.
    fn claim_the_rest(&self) -> Vec<u64> {
        let mut shares = self.shares();
        let mut rest = Vec::new();
        for (share, claimed) in (0..).zip(shares.claimed.iter_mut()) {
            if !*claimed {
                *claimed = true;
                rest.push(share);
            }
        }
        rest
    }

    /// Blocks until no helper searches this run, passing a cancel on meanwhile (the
    /// caller's own shares may end first, in a bounded range). A helper's panic
    /// reaches the caller, as it did when helpers were scoped threads.
    fn wait_for_helpers(&self, cancel: &AtomicBool) {
        let mut shares = self.shares();
        while shares.searching > 0 {
            if cancel.load(Ordering::Relaxed) {
                self.stop.store(true, Ordering::Relaxed);
            }
            shares = self
                .searched
                .wait_timeout(shares, Duration::from_millis(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        assert!(!shares.lost, "a mining helper thread panicked");
    }

    /// Helper side: searches `share` unless the caller has taken it already.
    fn help(&self, share: u64) {
        {
            let mut shares = self.shares();
            if std::mem::replace(&mut shares.claimed[share as usize], true) {
                return;
            }
            shares.searching += 1;
        }
        let _searching = Searching(self);
        self.search(share, None);
    }
}

/// A helper searching a share: counts it out when dropped, even by a panic, so the
/// caller never waits for a helper that is gone.
struct Searching<'a>(&'a Run);

impl Drop for Searching<'_> {
    fn drop(&mut self) {
        let mut shares = self.0.shares();
        shares.searching -= 1;
        shares.lost |= std::thread::panicking();
        if shares.searching == 0 {
            self.0.searched.notify_all();
        }
    }
}

/// Threads that mine beside the callers, started once and parked between runs.
///
/// With a thread spawned for each block, a four-member cluster on two cores mined
/// at 41–42 M hashes/s (the same calls back to back on an idle machine: 58–63 M/s);
/// with these, 57–58 M/s, and a block's proof of work at difficulty 16 took 1.1–1.2
/// instead of 1.5 ms for a lone waiting client (`benches/README.md`).
struct Helpers {
    /// Helper k searches share k + 1 of the runs it is sent, unless the caller has
    /// taken it already.
    queues: Mutex<Vec<mpsc::Sender<Arc<Run>>>>,
}

fn helpers() -> &'static Helpers {
    static HELPERS: OnceLock<Helpers> = OnceLock::new();
    HELPERS.get_or_init(|| Helpers {
        queues: Mutex::new(Vec::new()),
    })
}

impl Helpers {
    /// Sends `run` to the helpers of shares 1.., starting any not yet there and
    /// replacing any that is gone. A share no helper gets stays the caller's.
    fn hand_out(&self, run: &Arc<Run>) {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        for share in 1..run.threads {
            let index = (share - 1) as usize;
            if let Some(queue) = queues.get(index) {
                if queue.send(run.clone()).is_ok() {
                    continue;
                }
            }
            match Self::start(share, run.clone()) {
                Ok(queue) if index < queues.len() => queues[index] = queue,
                Ok(queue) => queues.push(queue),
                Err(error) => {
                    tracing::warn!(%error, "cannot start a mining thread");
                    return;
                }
            }
        }
    }

    /// Starts the helper of `share` with `first` as its first run.
    fn start(share: u64, first: Arc<Run>) -> std::io::Result<mpsc::Sender<Arc<Run>>> {
        let (queue, runs) = mpsc::channel::<Arc<Run>>();
        // Cannot fail: the receiver is still here.
        let _ = queue.send(first);
        std::thread::Builder::new()
            .name(format!("miner-{share}"))
            .spawn(move || {
                for run in runs {
                    run.help(share);
                }
            })?;
        Ok(queue)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::testing::header;

    #[test]
    fn midstate_hash_equals_plain_sha256_of_the_header() {
        let mut header = header(0);
        let template = Template::new(&header);
        for nonce in [0, 1, 0xdead_beef, u64::MAX] {
            header.nonce = nonce;
            assert_eq!(template.hash(nonce), header.hash());
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn two_lanes_agree_with_one_compression_at_a_time() {
        let Some(lanes) = lanes::Lanes::detect() else {
            eprintln!("no SHA extensions on this CPU: the miner takes one nonce at a time");
            return;
        };
        let template = Template::new(&header(0));
        for pair in [[0, 1], [0xdead_beef, 7], [u64::MAX, 1 << 40]] {
            let firsts = lanes.first_words(&template.midstate, &template.words, pair);
            for (nonce, first) in pair.into_iter().zip(firsts) {
                assert_eq!(first.to_be_bytes(), template.hash(nonce).0[..4]);
            }
        }
        // Searches in pairs find what one at a time finds, at odd counts and strides,
        // with nothing to filter (0) and beyond what the first word settles (33: no
        // find in these ranges, so no false one either).
        for difficulty in [0, 4, 9, 33] {
            let template = Template::new(&header(difficulty));
            for (start, stride, count) in [(0, 1, 5000), (3, 3, 4097), (17, 2, 1)] {
                assert_eq!(
                    template.search_in_pairs(lanes, start, stride, count),
                    template.search_one_by_one(start, stride, count),
                    "{difficulty} {start} {stride} {count}"
                );
            }
        }
    }

    #[test]
    fn difficulty_check_matches_leading_zero_bits() {
        let template = Template::new(&header(0));
        for nonce in 0..2000u64 {
            let hash = template.hash(nonce);
            let mut state = [0u32; 8];
            for (word, chunk) in state.iter_mut().zip(hash.0.chunks_exact(4)) {
                *word = u32::from_be_bytes(chunk.try_into().unwrap());
            }
            let bits = hash.leading_zero_bits();
            for difficulty in [0, 1, bits, bits + 1, 31, 32, 33, 64, 256] {
                assert_eq!(
                    meets(&state, difficulty),
                    bits >= difficulty,
                    "{nonce} {difficulty}"
                );
            }
        }
    }

    #[test]
    fn finds_a_valid_nonce_on_one_and_many_threads() {
        for threads in [1, 2, 3] {
            let mut header = header(14);
            let report = mine(
                &header,
                NonZeroUsize::new(threads).unwrap(),
                &AtomicBool::new(false),
            );
            let Outcome::Found { nonce, hash } = report.outcome else {
                panic!("no nonce found: {report:?}");
            };
            header.nonce = nonce;
            assert_eq!(header.hash(), hash);
            assert!(header.meets_difficulty());
            assert!(report.hashes >= 1);
        }
    }

    #[test]
    fn a_range_is_searched_exactly_once() {
        let impossible = header(256);
        for threads in [1, 2, 3] {
            let threads = NonZeroUsize::new(threads).unwrap();
            let report = mine_range(
                &impossible,
                threads,
                5..5 + 3 * BATCH + 7,
                &AtomicBool::new(false),
            );
            assert_eq!(
                report,
                MineReport {
                    outcome: Outcome::Exhausted,
                    hashes: 3 * BATCH + 7
                }
            );
        }
        // A find inside the range is the lowest winning nonce at that difficulty.
        let easy = header(6);
        let template = Template::new(&easy);
        let lowest = (0..)
            .find(|&nonce| template.hash(nonce).leading_zero_bits() >= 6)
            .unwrap();
        let report = mine_range(
            &easy,
            NonZeroUsize::MIN,
            0..1 << 20,
            &AtomicBool::new(false),
        );
        assert!(matches!(report.outcome, Outcome::Found { nonce, .. } if nonce == lowest));
    }

    #[test]
    fn callers_at_once_share_the_helpers_and_each_range_is_searched_once() {
        // Helpers are shared by the process: runs queue on them, and every run still
        // ends with all of its nonces tried, once.
        let callers: Vec<_> = (0..6u64)
            .map(|caller| {
                std::thread::spawn(move || {
                    let threads = NonZeroUsize::new(2 + caller as usize % 3).unwrap();
                    let len = (caller + 2) * BATCH + caller;
                    let report =
                        mine_range(&header(256), threads, 9..9 + len, &AtomicBool::new(false));
                    (report, len)
                })
            })
            .collect();
        for caller in callers {
            let (report, len) = caller.join().unwrap();
            assert_eq!(
                report,
                MineReport {
                    outcome: Outcome::Exhausted,
                    hashes: len
                }
            );
        }
    }

    #[test]
    fn a_run_behind_another_callers_endless_run_still_ends() {
        // An endless run holds the helpers; another caller's runs end all the same,
        // the caller searching the shares no helper has begun.
        let threads = NonZeroUsize::new(3).unwrap();
        let endless = Arc::new(AtomicBool::new(false));
        let blocker = {
            let endless = Arc::clone(&endless);
            std::thread::spawn(move || mine(&header(256), threads, &endless))
        };
        std::thread::sleep(Duration::from_millis(20));
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let len = 5 * BATCH + 3;
            let bounded = mine_range(&header(256), threads, 0..len, &AtomicBool::new(false));
            let cancel = AtomicBool::new(false);
            let cancelled = std::thread::scope(|scope| {
                scope.spawn(|| {
                    std::thread::sleep(Duration::from_millis(20));
                    cancel.store(true, Ordering::Relaxed);
                });
                mine(&header(256), threads, &cancel)
            });
            let _ = done.send((bounded, len, cancelled.outcome));
        });
        let result = finished.recv_timeout(Duration::from_secs(20));
        endless.store(true, Ordering::Relaxed);
        assert_eq!(blocker.join().unwrap().outcome, Outcome::Cancelled);
        let (bounded, len, cancelled) = result.expect("the second caller's runs did not end");
        assert_eq!(
            bounded,
            MineReport {
                outcome: Outcome::Exhausted,
                hashes: len
            }
        );
        assert_eq!(cancelled, Outcome::Cancelled);
    }

    #[test]
    fn cancel_stops_all_threads_promptly() {
        let cancel = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let miner = {
            let cancel = Arc::clone(&cancel);
            std::thread::spawn(move || mine(&header(256), NonZeroUsize::new(2).unwrap(), &cancel))
        };
        std::thread::sleep(Duration::from_millis(50));
        cancel.store(true, Ordering::Relaxed);
        let cancelled_at = Instant::now();
        let report = miner.join().unwrap();
        assert_eq!(report.outcome, Outcome::Cancelled);
        assert!(report.hashes > 0);
        // A liveness bound generous enough for a loaded CI machine; the batch between
        // two looks at the flag is about 1 ms of work.
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
