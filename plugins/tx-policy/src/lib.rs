//! `tx-policy`: entry rules an operator sets per chain, as a Ledger plugin.
//!
//! Config (JSON from the node's `[plugins.config]`, every key optional):
//!
//! ```toml
//! [plugins.config]
//! max_bytes = 1024          # largest entry data accepted
//! require_author = true     # only signed entries (the node checks the signature)
//! content = "json"          # "any" (default), "utf8" or "json": what data must be
//! ```
//!
//! Deterministic: the verdict depends on the entry and the config only.

use std::ffi::CStr;

use ledger_plugin_api::{export_plugin, Entry, Hooks, Plugin};
use serde::Deserialize;

/// What entry data must be.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    /// Anything.
    #[default]
    Any,
    /// UTF-8 text.
    Utf8,
    /// One JSON value.
    Json,
}

/// The policy.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TxPolicy {
    /// Largest data accepted, bytes.
    pub max_bytes: Option<usize>,
    /// Only signed entries.
    #[serde(default)]
    pub require_author: bool,
    /// What data must be.
    #[serde(default)]
    pub content: Content,
}

impl Plugin for TxPolicy {
    const NAME: &'static CStr = c"tx-policy";
    const VERSION: &'static CStr = c"0.1.0";
    const HOOKS: Hooks = Hooks {
        validate_entry: true,
        ..Hooks::NONE
    };

    fn init(config: &str) -> Result<Self, String> {
        serde_json::from_str(config).map_err(|error| format!("tx-policy config: {error}"))
    }

    fn validate_entry(&self, entry: &Entry<'_>) -> Result<(), String> {
        if let Some(max) = self.max_bytes {
            if entry.data.len() > max {
                return Err(format!(
                    "entry data is {} bytes; this chain takes at most {max}",
                    entry.data.len()
                ));
            }
        }
        if self.require_author && entry.author.is_none() {
            return Err("this chain takes signed entries only (add author and sig)".into());
        }
        match self.content {
            Content::Any => {}
            Content::Utf8 => {
                std::str::from_utf8(entry.data)
                    .map_err(|_| "entry data must be UTF-8 text".to_string())?;
            }
            Content::Json => {
                serde_json::from_slice::<serde::de::IgnoredAny>(entry.data)
                    .map_err(|error| format!("entry data must be JSON: {error}"))?;
            }
        }
        Ok(())
    }
}

export_plugin!(TxPolicy);

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &[u8]) -> Entry<'_> {
        Entry {
            data,
            author: None,
            reconfiguration: false,
        }
    }

    #[test]
    fn an_empty_config_accepts_everything() {
        let policy = TxPolicy::init("{}").expect("config");
        assert_eq!(policy, TxPolicy::default());
        assert!(policy.validate_entry(&entry(&[0xff; 5000])).is_ok());
    }

    #[test]
    fn each_rule_rejects_with_a_reason() {
        let policy =
            TxPolicy::init(r#"{"max_bytes": 16, "require_author": true, "content": "json"}"#)
                .expect("config");
        let too_big = policy.validate_entry(&entry(&[b'1'; 17])).unwrap_err();
        assert!(too_big.contains("at most 16"), "{too_big}");
        let unsigned = policy.validate_entry(&entry(b"{}")).unwrap_err();
        assert!(unsigned.contains("signed entries only"), "{unsigned}");
        let (key, sig) = ([1; 32], [2; 64]);
        let author = Some(ledger_plugin_api::Author {
            public_key: &key,
            signature: &sig,
        });
        let not_json = Entry {
            data: b"{nope",
            author,
            reconfiguration: false,
        };
        assert!(policy
            .validate_entry(&not_json)
            .unwrap_err()
            .contains("JSON"));
        let fine = Entry {
            data: br#"{"a":1}"#,
            author,
            reconfiguration: false,
        };
        assert!(policy.validate_entry(&fine).is_ok());
    }

    #[test]
    fn a_bad_config_is_refused() {
        assert!(TxPolicy::init(r#"{"content": "xml"}"#).is_err());
        assert!(TxPolicy::init(r#"{"max_byte": 3}"#)
            .unwrap_err()
            .contains("unknown field"));
    }
}
