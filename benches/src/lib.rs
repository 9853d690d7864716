//! Baselines the benches compare against, and the ratio report they print.
//!
//! - [`article`]: the miner of the article the project grew from (`shared/seed`), ported
//!   line for line: decimal strings concatenated, SHA-256, hex-encoded, compared as a
//!   string prefix, the whole header rehashed for every nonce.
//! - [`rate`]: a steady-state rate measurement that interleaves its contenders, so
//!   machine noise hits them alike and their ratio stays meaningful.
//! - [`proxy`]: a delaying and dropping TCP proxy, for links this kernel cannot shape
//!   (the fault-injection harness's and the delayed cluster benchmark's).

use std::time::{Duration, Instant};

pub mod proxy;

/// The article's block and miner (its chapter 1), ported to Rust.
pub mod article {
    use sha2::{Digest, Sha256};

    /// The article's block: every field a string or a decimal integer.
    #[derive(Clone, Debug)]
    pub struct Block {
        /// Block index.
        pub index: i64,
        /// `time.Now().String()` in the article.
        pub timestamp: String,
        /// Parent hash as hex.
        pub prev_hash: String,
        /// Payload.
        pub data: String,
        /// This block's hash as hex.
        pub hash: String,
        /// Proof-of-work counter.
        pub nonce: i64,
    }

    impl Block {
        /// `CalculateHash`: `strconv.Itoa(index) + timestamp + prevHash + data +
        /// strconv.Itoa(nonce)`, SHA-256, hex.
        pub fn calculate_hash(&self) -> String {
            let record = self.index.to_string()
                + &self.timestamp
                + &self.prev_hash
                + &self.data
                + &self.nonce.to_string();
            hex::encode(Sha256::digest(record.as_bytes()))
        }

        /// `MineBlock`, bounded to `max_tries` nonces so a bench can measure it;
        /// returns the nonces tried.
        pub fn mine(&mut self, difficulty: usize, max_tries: u64) -> u64 {
            let target = "0".repeat(difficulty);
            let mut tries = 0;
            while !self.hash.starts_with(&target) && tries < max_tries {
                self.nonce += 1;
                self.hash = self.calculate_hash();
                tries += 1;
            }
            tries
        }
    }

    /// A block shaped like the article's example.
    pub fn sample() -> Block {
        Block {
            index: 1,
            timestamp: "2026-01-01 00:00:00.000000000 +0000 UTC m=+0.000000001".into(),
            prev_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            data: "Genesis Block".into(),
            hash: String::new(),
            nonce: 0,
        }
    }
}

/// Rate measurement for ratio reports.
pub mod rate {
    use super::*;

    /// A contender: does `units` of work per call and says how many it did.
    pub struct Contender<'a> {
        /// Label in the report.
        pub name: &'a str,
        /// Runs one round of work, returning the work units done.
        pub run: Box<dyn FnMut() -> u64 + 'a>,
    }

    /// Runs each contender for about `slice` per round, round-robin, `rounds` times,
    /// and returns each one's median rate in units per second.
    pub fn measure(contenders: &mut [Contender<'_>], rounds: usize, slice: Duration) -> Vec<f64> {
        let mut samples = vec![Vec::with_capacity(rounds); contenders.len()];
        for _ in 0..rounds {
            for (contender, samples) in contenders.iter_mut().zip(&mut samples) {
                let started = Instant::now();
                let mut units = 0u64;
                while started.elapsed() < slice {
                    units += (contender.run)();
                }
                samples.push(units as f64 / started.elapsed().as_secs_f64());
            }
        }
        samples
            .into_iter()
            .map(|mut rates| {
                rates.sort_by(f64::total_cmp);
                rates[rates.len() / 2]
            })
            .collect()
    }

    /// Formats a rate with an SI suffix.
    pub fn human(rate: f64) -> String {
        match rate {
            r if r >= 1e6 => format!("{:.2} M/s", r / 1e6),
            r if r >= 1e3 => format!("{:.2} k/s", r / 1e3),
            r => format!("{r:.1} /s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::article;

    #[test]
    fn article_miner_finds_a_hex_prefix() {
        let mut block = article::sample();
        block.hash = block.calculate_hash();
        let tries = block.mine(2, 1 << 20);
        assert!(block.hash.starts_with("00"), "{tries} tries");
        assert_eq!(block.hash, block.calculate_hash());
    }
}
