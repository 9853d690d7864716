//! `jsonl-export`: appends every committed entry to a JSON-lines file, as a Ledger
//! `on_commit` plugin. One line per entry:
//!
//! ```json
//! {"height":7,"log_index":41,"data_hex":"68656c6c6f","author":null}
//! ```
//!
//! Config: `path` (required), the file to append to; created if missing.
//!
//! Delivery is at most once: the node hands blocks over after applying them and
//! does not replay them after a restart, so a consumer that must see every entry
//! reads the gap from `GET /v1/blocks` (a line's height says where it stands).
//! Lines are flushed per block, not fsynced.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::Mutex;

use ledger_plugin_api::{export_plugin, Block, Hooks, Plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: String,
}

/// One exported entry.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    /// The block's height.
    pub height: u64,
    /// The entry's position in the Merkle log.
    pub log_index: u64,
    /// The entry's data, hex.
    pub data_hex: String,
    /// The author's public key, hex, for a signed entry.
    pub author: Option<String>,
}

/// The exporter: the open file.
#[derive(Debug)]
pub struct JsonlExport {
    file: Mutex<File>,
}

impl Plugin for JsonlExport {
    const NAME: &'static CStr = c"jsonl-export";
    const VERSION: &'static CStr = c"0.1.0";
    const HOOKS: Hooks = Hooks {
        on_commit: true,
        ..Hooks::NONE
    };

    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config)
            .map_err(|error| format!("jsonl-export config: {error}"))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|error| format!("cannot open {}: {error}", config.path))?;
        Ok(JsonlExport {
            file: Mutex::new(file),
        })
    }

    fn on_commit(&self, block: &Block<'_>) -> Result<(), String> {
        let first = block.header.log_size - block.entries.len() as u64;
        let file = self.file.lock().map_err(|_| "a previous write panicked")?;
        let mut out = BufWriter::new(&*file);
        for (log_index, entry) in (first..).zip(&block.entries) {
            let line = Line {
                height: block.header.height,
                log_index,
                data_hex: hex::encode(entry.data),
                author: entry.author.map(|author| hex::encode(author.public_key)),
            };
            serde_json::to_writer(&mut out, &line).map_err(|error| error.to_string())?;
            out.write_all(b"\n").map_err(|error| error.to_string())?;
        }
        out.flush()
            .map_err(|error| format!("writing the export: {error}"))
    }
}

export_plugin!(JsonlExport);

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_plugin_api::{Entry, Header};

    fn header(height: u64, log_size: u64) -> Header {
        Header {
            version: 1,
            chain_hash: [0; 32],
            height,
            timestamp_ms: 0,
            prev_hash: [0; 32],
            log_size,
            log_root: [0; 32],
            difficulty: 0,
            nonce: 0,
        }
    }

    #[test]
    fn committed_entries_become_lines_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let config = serde_json::json!({ "path": path }).to_string();
        let export = JsonlExport::init(&config).expect("init");
        let (key, sig) = ([9u8; 32], [0u8; 64]);
        let entries = vec![
            Entry {
                data: b"hi",
                author: None,
                reconfiguration: false,
            },
            Entry {
                data: b"yo",
                author: Some(ledger_plugin_api::Author {
                    public_key: &key,
                    signature: &sig,
                }),
                reconfiguration: false,
            },
        ];
        export
            .on_commit(&Block {
                header: header(3, 12),
                entries,
            })
            .expect("written");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Line> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].height, lines[0].log_index), (3, 10));
        assert_eq!(lines[0].data_hex, "6869");
        assert_eq!(
            lines[1].author.as_deref(),
            Some(hex::encode([9u8; 32]).as_str())
        );
    }

    #[test]
    fn a_config_without_a_usable_path_is_refused() {
        assert!(JsonlExport::init("{}").unwrap_err().contains("path"));
        let error = JsonlExport::init(r#"{"path": "/nonexistent/dir/x.jsonl"}"#).unwrap_err();
        assert!(error.contains("cannot open"), "{error}");
    }
}
