//! Serving snapshots to joining nodes: which heights are offered, the manifests of
//! the last two (kept, since every chunk request checks against one), and a bound on
//! chunk reads served at once.
//!
//! A snapshot is offered at checkpoint heights, multiples of the genesis checkpoint
//! interval K: in a cluster the latest is this node's stable checkpoint (a quorum
//! stands behind it), alone the last multiple of K at or below the tip. The latest
//! and the one K below it are served, so a joiner whose transfer outlasts one
//! checkpoint finishes it; a height older than that is refused with the latest named,
//! and since the log only grows, every full tile a joiner already checked is a full
//! tile of the newer snapshot too.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::chain::snapshot::Manifest;
use crate::engine::{blocking, lock};
use crate::metrics::Metrics;
use crate::storage::{Store, StoreError};

/// Chunk reads a member serves at once unless `snapshot_transfers` says otherwise.
pub const DEFAULT_TRANSFERS: usize = 4;

/// Why a snapshot request was not served.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotServeError {
    /// No checkpoint yet: the chain is younger than one checkpoint interval.
    #[error(
        "no snapshot yet: the first is taken at height {interval} (the checkpoint interval); \
         fetch the blocks instead"
    )]
    NoneYet {
        /// The checkpoint interval.
        interval: u64,
    },
    /// A height this node does not serve.
    #[error("no snapshot at height {height}; this node serves {served:?}")]
    NotServed {
        /// The height asked for.
        height: u64,
        /// The heights it serves, newest first.
        served: Vec<u64>,
    },
    /// A chunk index beyond the snapshot.
    #[error("the snapshot at height {height} has {chunks} chunks, not {index}")]
    NoChunk {
        /// The snapshot's height.
        height: u64,
        /// The index asked for.
        index: u64,
        /// How many it has.
        chunks: u64,
    },
    /// Every transfer slot is taken.
    #[error("{0} snapshot chunks are being served, this node's limit; retry shortly")]
    Busy(usize),
    /// The store failed or found damage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The snapshots a node serves.
pub struct Snapshots {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// How many headers below a snapshot the difficulty policy reads, plus one.
    window: u64,
    tile_level: u8,
    /// The manifests built so far, newest first, at most two.
    manifests: Mutex<Vec<Arc<Manifest>>>,
    transfers: Semaphore,
    max_transfers: usize,
}

impl Snapshots {
    /// Snapshots of `store`'s chain in tiles of `2^tile_level` ids, carrying the
    /// `window` headers the difficulty policy reads, serving at most `max_transfers`
    /// chunks at once.
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        window: u64,
        max_transfers: usize,
        tile_level: u8,
    ) -> Snapshots {
        Snapshots {
            store,
            metrics,
            window,
            tile_level,
            manifests: Mutex::new(Vec::new()),
            transfers: Semaphore::new(max_transfers),
            max_transfers,
        }
    }

    /// The heights served, newest first, given the highest height a snapshot may be
    /// taken at (`stable`: the stable checkpoint in a cluster, the tip alone).
    pub fn served(&self, stable: u64) -> Vec<u64> {
        let interval = self.store.spec().params.checkpoint_interval.max(1);
        let latest = stable / interval * interval;
        [latest, latest.saturating_sub(interval)]
            .into_iter()
            .filter(|&height| height > 0)
            .collect()
    }

    /// The manifest at `height` (the latest when `None`), if this node serves it.
    pub async fn manifest(
        &self,
        stable: u64,
        height: Option<u64>,
    ) -> Result<Arc<Manifest>, SnapshotServeError> {
        let served = self.served(stable);
        let Some(&latest) = served.first() else {
            return Err(SnapshotServeError::NoneYet {
                interval: self.store.spec().params.checkpoint_interval,
            });
        };
        let height = height.unwrap_or(latest);
        if !served.contains(&height) {
            return Err(SnapshotServeError::NotServed { height, served });
        }
        if let Some(manifest) = lock(&self.manifests)
            .iter()
            .find(|manifest| manifest.height() == height)
        {
            return Ok(Arc::clone(manifest));
        }
        let (store, level, window) = (Arc::clone(&self.store), self.tile_level, self.window);
        let manifest = blocking(move || store.snapshot_manifest(height, level, window))
            .await?
            .ok_or(SnapshotServeError::NotServed {
                height,
                served: served.clone(),
            })?;
        let manifest = Arc::new(manifest);
        let mut kept = lock(&self.manifests);
        kept.retain(|kept| served.contains(&kept.height()) && kept.height() != height);
        kept.insert(0, Arc::clone(&manifest));
        kept.sort_by_key(|kept| std::cmp::Reverse(kept.height()));
        kept.truncate(2);
        Ok(manifest)
    }

    /// Chunk `index` of the snapshot at `height`: its ids, checked against its tile
    /// root, read while one of the transfer slots is held.
    pub async fn chunk(
        &self,
        stable: u64,
        height: u64,
        index: u64,
    ) -> Result<Vec<u8>, SnapshotServeError> {
        let manifest = self.manifest(stable, Some(height)).await?;
        if index >= manifest.chunks() {
            return Err(SnapshotServeError::NoChunk {
                height,
                index,
                chunks: manifest.chunks(),
            });
        }
        let _slot = self
            .transfers
            .try_acquire()
            .map_err(|_| SnapshotServeError::Busy(self.max_transfers))?;
        let store = Arc::clone(&self.store);
        let chunk = blocking(move || store.snapshot_chunk(&manifest, index)).await?;
        self.metrics
            .snapshot_chunks_served
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .snapshot_bytes_served
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(chunk)
    }
}
