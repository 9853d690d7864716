//! Ledger: a permissioned, Byzantine-fault-tolerant, persistent ledger node.
//!
//! # Layout
//!
//! - [`chain`]: entries, block headers, their canonical byte encodings, the genesis
//!   derivation, the RFC 9162 Merkle log and block validation (the `ledger-chain`
//!   crate, shared with clients). Pure: no IO, no clock.
//! - [`pow`]: the proof-of-work miner (SHA-256 midstate, every core, cancellable). Pure CPU.
//! - [`storage`]: the redb database behind one [`storage::Store`] type; one write
//!   transaction per applied block.
//! - [`consensus`]: the PBFT replica as a pure state machine. No IO, no clock.
//! - [`net`]: member connections: mutual TLS, the hello, frames and their contents.
//! - [`engine`]: what produces blocks, one of two behind one seam: [`engine::Alone`]
//!   (the chain's only member cuts, mines and certifies its own blocks) or
//!   [`engine::Cluster`] (the PBFT replica's driver over the store and the network).
//! - [`node`]: what the API talks to: the store, the plugins, the metrics and the one
//!   engine a node was built with; readiness.
//! - [`backup`]: snapshot files: a backup of a node, checked whole when restored.
//! - [`join`]: a new or wiped node takes over the chain from a snapshot the members
//!   serve, resumably.
//! - [`snapshots`]: which snapshots a node serves to joiners, and how many chunks at once.
//! - [`api`]: the axum HTTP API, with one error type mapped to responses in one place;
//!   its TLS, tokens and rate limits.
//! - [`http`]: the client of a node's API every tool shares (https, client
//!   certificates, tokens).
//! - [`plugin_host`]: validation plugins loaded from shared libraries, and their hooks.
//! - [`config`]: `ledgerd.toml`, key files, and the `ledgerd dev` layout.
//! - [`cli`]: what the command-line tools share (errors told once, the version).
//! - [`daemon`]: running a node as a process (logging, start-up, graceful stop).
//! - [`systemd`]: telling systemd (`Type=notify`) when the node is ready, alive, stopping.
//! - [`metrics`]: Prometheus text metrics.
//! - [`throttle`]: log lines at a bounded rate, retries with a back-off.
//! - [`sim`] (feature `testing`): the deterministic simulator that runs replicas over
//!   a hostile network.
//! - [`testing`] (feature `testing`): builders of valid chains, a failing disk.
//!
//! Byte formats are specified in `docs/FORMAT.md`; every encoding is big-endian and
//! fixed-width except where a length prefix says otherwise.

pub mod api;
#[doc(inline)]
pub use ledger_chain as chain;
pub mod backup;
pub mod cli;
pub mod config;
pub mod consensus;
pub mod daemon;
pub mod engine;
pub mod http;
pub mod join;
pub mod metrics;
pub mod net;
pub mod node;
pub mod plugin_host;
pub mod pow;
#[cfg(feature = "testing")]
pub mod sim;
pub mod snapshots;
pub mod storage;
pub mod systemd;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;

/// Gives a map back the room a burst left it, once it holds under an eighth of it.
/// A pool that a flood grew keeps its table otherwise, and at the usual load every
/// lookup and removal then misses the cache (benches/README.md, "2026-12-07, night").
pub(crate) fn shrink_sparse<K, V, S>(map: &mut std::collections::HashMap<K, V, S>)
where
    K: Eq + std::hash::Hash,
    S: std::hash::BuildHasher,
{
    // Below this the table fits a core's cache anyway; shrinking would only rehash.
    const SMALL: usize = 4096;
    if map.capacity() > SMALL && map.len() < map.capacity() / 8 {
        map.shrink_to((2 * map.len()).max(SMALL / 2));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    #[test]
    fn a_sparse_map_gives_back_its_room_and_keeps_what_it_holds() {
        let mut map: HashMap<u64, u64> = (0..100_000).map(|i| (i, i)).collect();
        let grown = map.capacity();
        map.retain(|key, _| *key < 1_000);
        super::shrink_sparse(&mut map);
        assert!(map.capacity() < grown / 16, "{} of {grown}", map.capacity());
        assert_eq!(map.len(), 1_000);
        assert!((0..1_000).all(|key| map.get(&key) == Some(&key)));
        // A map that is small, or not sparse, is left as it is.
        let room = map.capacity();
        super::shrink_sparse(&mut map);
        assert_eq!(map.capacity(), room);
    }
}
