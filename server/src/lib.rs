//! Ledger: a permissioned, Byzantine-fault-tolerant, persistent ledger node.
//!
//! # Layout
//!
//! - [`chain`]: entries, block headers, their canonical byte encodings, the genesis
//!   derivation, the RFC 9162 Merkle log and block validation. Pure: no IO, no clock.
//! - [`pow`]: the proof-of-work miner (SHA-256 midstate, every core, cancellable). Pure CPU.
//! - [`storage`]: the redb database behind one [`storage::Store`] type; one write
//!   transaction per applied block.
//! - [`consensus`]: the PBFT replica as a pure state machine. No IO, no clock.
//! - [`node`]: the entry pool and the block producer (cut, mine, certify, apply).
//! - [`api`]: the axum HTTP API, with one error type mapped to responses in one place.
//! - [`config`]: `ledgerd.toml`, key files, and the `ledgerd dev` layout.
//! - [`daemon`]: running a node as a process (logging, start-up, graceful stop).
//! - [`systemd`]: telling systemd (`Type=notify`) when the node is ready, alive, stopping.
//! - [`net`]: node-to-node framing (the transport grows here).
//! - [`metrics`]: Prometheus text metrics.
//! - [`sim`]: the deterministic simulator that runs replicas over a hostile network.
//! - [`testing`]: builders of valid chains for tests, benches and fixture tools.
//! - [`throttle`]: log lines that would repeat, let through at a bounded rate.
//!
//! Byte formats are specified in `docs/FORMAT.md`; every encoding is big-endian and
//! fixed-width except where a length prefix says otherwise.

pub mod api;
pub mod chain;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod daemon;
pub mod metrics;
pub mod net;
pub mod node;
pub mod plugin_host;
pub mod pow;
#[cfg(feature = "testing")]
pub mod sim;
pub mod storage;
pub mod systemd;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;
