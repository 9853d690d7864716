//! `difficulty-retarget`: Bitcoin's retarget rule as a Ledger plugin.
//!
//! Every `interval` blocks the difficulty is set again from how long the last
//! `interval` blocks took against `interval × target_ms`. Bitcoin scales its target
//! by actual/expected, clamped to a factor of 4; here difficulty is whole leading
//! zero bits, a factor of 2 each, so the same rule moves it by one bit per doubling:
//! +1 if the blocks came at least twice too fast, +2 at four times, −1 and −2 the
//! other way, and never below `min` or above `max`. Between retargets a block keeps
//! its parent's difficulty.
//!
//! Config (every key optional):
//!
//! ```toml
//! [plugins.config]
//! interval = 16        # blocks between retargets, 1..=255
//! target_ms = 1000     # wanted time between blocks
//! min = 8              # difficulty floor, bits
//! max = 40             # difficulty ceiling, bits
//! ```
//!
//! Pure and deterministic: integer arithmetic on header fields only.

use std::ffi::CStr;

use ledger_plugin_api::{export_plugin, Header, Hooks, Plugin};
use serde::Deserialize;

/// Headers the host passes: enough for the longest interval plus its start.
pub const WINDOW: u32 = 256;

/// The retarget rule.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Retarget {
    /// Blocks between retargets.
    pub interval: u64,
    /// Wanted time between blocks, milliseconds.
    pub target_ms: u64,
    /// Lowest difficulty, bits.
    pub min: u32,
    /// Highest difficulty, bits.
    pub max: u32,
}

impl Default for Retarget {
    fn default() -> Retarget {
        Retarget {
            interval: 16,
            target_ms: 1000,
            min: 8,
            max: 40,
        }
    }
}

impl Retarget {
    /// The difficulty of the block after `recent.last()`.
    pub fn next(&self, recent: &[Header]) -> Result<u32, String> {
        let parent = recent.last().ok_or("no parent header")?;
        let height = parent.height + 1;
        // The span is `interval` gaps, from the block `interval` before the parent
        // to the parent, so the first retarget comes at `2 × interval`.
        if height % self.interval != 0 || height <= self.interval {
            return Ok(parent.difficulty);
        }
        let first = parent.height - self.interval;
        let start = recent
            .iter()
            .find(|h| h.height == first)
            .ok_or_else(|| format!("header {first} not among the {} passed", recent.len()))?;
        let actual = parent
            .timestamp_ms
            .saturating_sub(start.timestamp_ms)
            .max(1);
        let expected = self.interval.saturating_mul(self.target_ms).max(1);
        let mut difficulty = i64::from(parent.difficulty);
        if actual.saturating_mul(4) <= expected {
            difficulty += 2;
        } else if actual.saturating_mul(2) <= expected {
            difficulty += 1;
        } else if actual >= expected.saturating_mul(4) {
            difficulty -= 2;
        } else if actual >= expected.saturating_mul(2) {
            difficulty -= 1;
        }
        Ok(difficulty.clamp(i64::from(self.min), i64::from(self.max)) as u32)
    }
}

impl Plugin for Retarget {
    const NAME: &'static CStr = c"difficulty-retarget";
    const VERSION: &'static CStr = c"0.1.0";
    const HOOKS: Hooks = Hooks::NONE;
    const DIFFICULTY_WINDOW: u32 = WINDOW;

    fn init(config: &str) -> Result<Self, String> {
        let rule: Retarget = serde_json::from_str(config)
            .map_err(|error| format!("difficulty-retarget config: {error}"))?;
        if rule.interval == 0 || rule.interval >= u64::from(WINDOW) {
            return Err(format!("interval must be 1..={}", WINDOW - 1));
        }
        if rule.target_ms == 0 || rule.min > rule.max || rule.max > 256 {
            return Err("need target_ms > 0 and min <= max <= 256".into());
        }
        Ok(rule)
    }

    fn required_difficulty(&self, recent: &[Header]) -> Result<u32, String> {
        self.next(recent)
    }
}

export_plugin!(Retarget);

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers 0..=last, `gap_ms` apart, all at `difficulty`.
    fn chain(last: u64, gap_ms: u64, difficulty: u32) -> Vec<Header> {
        (0..=last)
            .map(|height| Header {
                version: 1,
                chain_hash: [0; 32],
                height,
                timestamp_ms: 1_000_000 + height * gap_ms,
                prev_hash: [0; 32],
                log_size: 0,
                log_root: [0; 32],
                difficulty,
                nonce: 0,
            })
            .collect()
    }

    fn rule() -> Retarget {
        Retarget::init(r#"{"interval": 4, "target_ms": 100, "min": 4, "max": 20}"#).unwrap()
    }

    #[test]
    fn between_retargets_the_parent_difficulty_stays() {
        let headers = chain(5, 1, 10); // next height 6: no retarget at interval 4
        assert_eq!(rule().next(&headers), Ok(10));
        // Height 4 = interval: not yet a whole span behind it.
        assert_eq!(rule().next(&chain(3, 1, 10)), Ok(10));
    }

    #[test]
    fn the_difficulty_follows_the_block_rate_by_whole_bits() {
        // Next height 8 retargets over heights 3..=7 (span: 4 gaps).
        for (gap_ms, expected) in [(10, 12), (50, 11), (100, 10), (199, 10), (200, 9), (400, 8)] {
            assert_eq!(
                rule().next(&chain(7, gap_ms, 10)),
                Ok(expected),
                "gap {gap_ms}"
            );
        }
    }

    #[test]
    fn the_clamps_hold() {
        assert_eq!(rule().next(&chain(7, 1, 20)), Ok(20));
        assert_eq!(rule().next(&chain(7, 10_000, 5)), Ok(4));
    }

    #[test]
    fn missing_history_and_bad_configs_are_refused() {
        let headers = chain(7, 100, 10);
        assert!(rule().next(&headers[5..]).unwrap_err().contains("header 3"));
        assert!(Retarget::init(r#"{"interval": 0}"#).is_err());
        assert!(Retarget::init(r#"{"interval": 300}"#).is_err());
        assert!(Retarget::init(r#"{"min": 30, "max": 20}"#).is_err());
        assert_eq!(Retarget::init("{}"), Ok(Retarget::default()));
    }
}
