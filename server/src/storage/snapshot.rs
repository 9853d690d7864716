//! Reading snapshots out of the store: a manifest at a committed height and the ids of
//! one of its tiles, each from one short read transaction (the log is append-only, so
//! nothing a snapshot reads changes under it and no transaction is held between
//! requests). Both are checked before they leave: the manifest's tile roots must fold
//! into the certified header's log root, and a chunk's ids must give its tile root.

use ledger_migrations::schema::ENTRY_IDS;

use super::id_rows::ids_in;
use super::verify::Anchor;
use super::{corrupt, Store, StoreError};
use crate::chain::merkle::NodeSource;
use crate::chain::snapshot::{self, Manifest, MAX_RECENT_HEADERS};
use crate::chain::Hash;

impl Store {
    /// The manifest of the snapshot at `height` in tiles of `2^tile_level` ids, with
    /// the `window` headers the difficulty policy reads (block `height` among them),
    /// or `None` above the tip. Checked as a joiner checks it.
    pub fn snapshot_manifest(
        &self,
        height: u64,
        tile_level: u8,
        window: u64,
    ) -> Result<Option<Manifest>, StoreError> {
        // Read before the manifest's transaction: a change is never undone, and those
        // above `height` are left out.
        let changes: Vec<_> = self
            .membership_changes()?
            .iter()
            .filter(|change| change.receipt.header.height <= height)
            .cloned()
            .collect();
        self.observe(self.read(|store, tables| {
            let Some(header) = store.checked_header(tables, height, Anchor::Certificate)? else {
                return Ok(None);
            };
            let certificate = store.checked_certificate(tables, &header)?;
            // At least the header below h: its log size says where block h's
            // entries start, which h's own header does not.
            let below = window.saturating_sub(1).clamp(1, MAX_RECENT_HEADERS.into());
            let mut recent = Vec::with_capacity(below as usize);
            for at in height.saturating_sub(below)..height {
                let header = store
                    .checked_header(tables, at, Anchor::Successor)?
                    .ok_or_else(|| corrupt(format!("header {at} missing below {height}")))?;
                recent.push(header);
            }
            let nodes = tables.stored_nodes();
            let tiles = snapshot::tile_count(header.log_size, tile_level);
            let mut tile_roots = Vec::with_capacity(tiles as usize);
            for index in 0..tiles {
                let range = snapshot::tile_range(header.log_size, tile_level, index);
                let root = if range.end - range.start == 1 << tile_level {
                    nodes.node(tile_level, index)?
                } else {
                    // The partial last tile has no node of its own.
                    let ids = ids_in(&tables.ids, range)?;
                    snapshot::tile_root(&ids)
                };
                tile_roots.push(root);
            }
            let manifest = Manifest {
                chain_hash: store.chain_hash,
                header,
                certificate,
                changes: changes.clone(),
                recent,
                tile_level,
                tile_roots,
            };
            manifest
                .verify(&store.spec)
                .map_err(|error| corrupt(format!("the snapshot at height {height}: {error}")))?;
            Ok(Some(manifest))
        }))
    }

    /// The ids of chunk `index` of `manifest` (taken from this store), as the chunk's
    /// bytes, checked against its tile root.
    pub fn snapshot_chunk(&self, manifest: &Manifest, index: u64) -> Result<Vec<u8>, StoreError> {
        self.observe((|| {
            let ids = self.ids_in(manifest.chunk_range(index))?;
            let bytes: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
            manifest
                .check_chunk(index, &bytes)
                .map_err(|error| corrupt(format!("the entry index under a snapshot: {error}")))?;
            Ok(bytes)
        })())
    }

    /// The entry ids at `range` of log indices, in one read transaction.
    fn ids_in(&self, range: std::ops::Range<u64>) -> Result<Vec<Hash>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        ids_in(&txn.open_table(ENTRY_IDS)?, range)
    }
}
