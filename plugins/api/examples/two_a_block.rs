//! A block rule that entries which pass one at a time can break together, for the
//! host's tests: at most two entries a block, and none whose data starts with
//! "blockless". Such entries pass at submit, where only entry hooks run, as a
//! stateful plugin may take an entry at submit and refuse it once its state moved on.

use std::ffi::CStr;

use ledger_plugin_api::{export_plugin, Entry, Header, Hooks, Plugin};

struct TwoABlock;

impl Plugin for TwoABlock {
    const NAME: &'static CStr = c"two-a-block";
    const VERSION: &'static CStr = c"0.0.1";
    const HOOKS: Hooks = Hooks {
        validate_block: true,
        ..Hooks::NONE
    };

    fn init(_config: &str) -> Result<Self, String> {
        Ok(TwoABlock)
    }

    fn validate_block(&self, _header: &Header, entries: &[Entry<'_>]) -> Result<(), String> {
        if entries
            .iter()
            .any(|entry| entry.data.starts_with(b"blockless"))
        {
            return Err("no block holds a blockless entry".into());
        }
        match entries.len() > 2 {
            true => Err(format!("{} entries; a block holds two", entries.len())),
            false => Ok(()),
        }
    }
}

export_plugin!(TwoABlock);
