//! A deliberately broken plugin for the host's tests: every hook but `init` panics.
//! The SDK must turn each panic into a failure with a reason.

use std::ffi::CStr;

use ledger_plugin_api::{export_plugin, Block, Entry, Header, Plugin};

struct Panicky;

impl Plugin for Panicky {
    const NAME: &'static CStr = c"panicky";
    const VERSION: &'static CStr = c"0.0.1";
    const DIFFICULTY_WINDOW: u32 = 1;

    fn init(_config: &str) -> Result<Self, String> {
        Ok(Panicky)
    }

    fn required_difficulty(&self, _recent: &[Header]) -> Result<u32, String> {
        panic!("required_difficulty always panics")
    }

    fn validate_entry(&self, _entry: &Entry<'_>) -> Result<(), String> {
        panic!("validate_entry always panics")
    }

    fn validate_block(&self, _header: &Header, _entries: &[Entry<'_>]) -> Result<(), String> {
        panic!("validate_block always panics")
    }

    fn on_commit(&self, _block: &Block<'_>) -> Result<(), String> {
        panic!("on_commit always panics")
    }
}

export_plugin!(Panicky);
