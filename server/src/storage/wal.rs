//! The consensus write-ahead log: the replica's per-height records (a block accepted,
//! a prepared certificate) since the consensus state was last written into redb,
//! appended to a file beside the database and made durable with one `fdatasync`.
//!
//! A block needs two such records on every member before its votes may leave, and a
//! redb commit rewrites every page on the paths it touches, twice synced: about 28
//! KiB and two flushes per record on this project's disks. An append writes the
//! record's own bytes. Every other record (a view change, a stable checkpoint, an
//! epoch) goes to redb as before, together with the log's records, in one durable
//! transaction that also advances the log's generation; the log then starts over
//! (`Store::persist`).
//!
//! File: a header (magic, the database's log id, generation, SHA-256 of these), then
//! frames, each the records of one `persist` call: length (4 bytes big-endian),
//! SHA-256 of the previous frame's digest (the header's for the first) and the
//! payload, then the payload (a count, then each record length-prefixed). A log of
//! an earlier generation was written into the tables already and starts over; one
//! missing, of another database or of a later generation is damage once the
//! database names its log ([`Wal::open`]). A last frame that does not check out is
//! the append a crash cut short and is cut off; one with a frame chained to it
//! after it is damage.
//!
//! The file is written with zeros ahead of its frames, so an append overwrites
//! blocks already on disk: `fdatasync` then flushes the data alone, without the
//! file's new size (an inode write, or a journal commit where there is a journal):
//! a fifth to a third of its cost here. Zeros after the last frame are that room,
//! not damage.
//!
//! Starting over writes a new file of zeros, synced, which took the consensus thread
//! 10–60 ms at every stable checkpoint, on every member at once. So each start-over
//! has the next one's file made off that thread, beside the log (`<log>.spare`): the
//! next start-over writes its header, syncs that block and renames it over the log.
//! A spare not ready yet, or one that failed, leaves the start-over to the old way,
//! as does the first one after the log opens. A log stops making its spare before
//! another opens on its path ([`Wal::settle`]): two must not write one file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use super::{corrupt, StoreError};
use crate::chain::codec::Reader;
use crate::consensus::Record;

/// An I/O error of the log, an I/O failure of the store (what reopening may cure).
fn io(error: std::io::Error) -> StoreError {
    StoreError::Database(redb::Error::Io(error))
}

const MAGIC: &[u8; 8] = b"LDGRWAL1";
const HEADER_LEN: usize = 8 + 16 + 8 + 32;
const FRAME_HEAD: usize = 4 + 32;
/// The largest frame read back; a batch of records is far smaller.
const MAX_FRAME: usize = 1 << 30;
/// The least room a new log is given, and the unit room grows by.
const ROOM_STEP: u64 = 64 << 10;
/// The most room a new log is given, and the most it grows by at once: zeros are
/// written on the consensus thread.
const ROOM_MAX_STEP: u64 = 4 << 20;

/// The open log and the records it holds.
#[derive(Debug)]
pub(super) struct Wal {
    path: PathBuf,
    file: File,
    /// The id of the database this log belongs to.
    id: [u8; 16],
    generation: u64,
    len: u64,
    /// Bytes of the file on disk, frames and the zeros after them: an append that
    /// ends within them grows nothing.
    allocated: u64,
    /// The digest of the last frame (of the header in an empty log), which the next
    /// frame chains on.
    last: [u8; 32],
    records: Vec<Record>,
    /// The next generation's file of zeros being made (see the module's docs): the
    /// file and its size.
    spare: Option<JoinHandle<std::io::Result<(File, u64)>>>,
    /// The last spare could not be made (told once, until one is made again).
    spare_failing: bool,
}

impl Drop for Wal {
    /// See [`Wal::settle`].
    fn drop(&mut self) {
        self.settle();
    }
}

impl Wal {
    /// Where the log of the database at `database` lives.
    pub(super) fn path_for(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push(".wal");
        PathBuf::from(name)
    }

    /// Opens the log at `path` of the database `id` at its `generation`, reading
    /// back its records. `known`: the database named this id before, so its log
    /// must be there; a log missing, of another database or of a later generation is
    /// then damage (the member would forget votes it cast). Otherwise (a new id) any
    /// log found is replaced. A log of an earlier generation was written into the
    /// tables already and starts over.
    pub(super) fn open(
        path: &Path,
        id: [u8; 16],
        generation: u64,
        known: bool,
    ) -> Result<Wal, StoreError> {
        let bytes = read_file(path)?;
        let (records, valid, last) = match examine(path, bytes.as_deref(), id, generation, known)? {
            Some(held) => held,
            None => return Wal::create(path, id, generation, 0),
        };
        let bytes = bytes.unwrap_or_default();
        let file = OpenOptions::new().write(true).open(path).map_err(io)?;
        let mut allocated = bytes.len() as u64;
        if torn(&bytes, valid) {
            // The append a crash cut short: it was never acknowledged.
            file.set_len(valid as u64).map_err(io)?;
            allocated = valid as u64;
        }
        // A crash may have left the last append written but not synced, and what is
        // read back here is said again (`Replica::say_again`): durable first.
        file.sync_data().map_err(io)?;
        Ok(Wal {
            path: path.to_owned(),
            file,
            id,
            generation,
            len: valid as u64,
            allocated,
            last,
            records,
            spare: None,
            spare_failing: false,
        })
    }

    /// Writes an empty log of `generation` with room for about `expected` bytes of
    /// frames: a new file renamed over the old one, so the log on disk is always one
    /// whole header or the other.
    fn create(
        path: &Path,
        id: [u8; 16],
        generation: u64,
        expected: u64,
    ) -> Result<Wal, StoreError> {
        let mut fresh = path.as_os_str().to_owned();
        fresh.push(".new");
        let fresh = PathBuf::from(fresh);
        let mut file = File::create(&fresh).map_err(io)?;
        let header = header(id, generation);
        let allocated = starting_room(expected);
        file.write_all(&header)
            .and_then(|()| write_zeros(&file, HEADER_LEN as u64, allocated))
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Wal::installed(path, &fresh, file, id, generation, allocated)
    }

    /// The empty log of `generation` written at `written` (its header and room
    /// synced), renamed to the log's `path`: the log on disk is always one whole
    /// header or the other.
    fn installed(
        path: &Path,
        written: &Path,
        file: File,
        id: [u8; 16],
        generation: u64,
        allocated: u64,
    ) -> Result<Wal, StoreError> {
        std::fs::rename(written, path)
            .and_then(|()| super::sync_parent(path))
            .map_err(io)?;
        Ok(Wal {
            path: path.to_owned(),
            file,
            id,
            generation,
            len: HEADER_LEN as u64,
            allocated,
            last: header_digest(&header(id, generation)),
            records: Vec::new(),
            spare: None,
            spare_failing: false,
        })
    }

    /// The generation the database must name for this log to count.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// The records appended since the log started, in order.
    pub(super) fn records(&self) -> &[Record] {
        &self.records
    }

    /// Bytes of the log: the header and its frames (the room follows on disk).
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `records` (per-height ones only) as one frame and makes it durable.
    pub(super) fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let mut payload = (records.len() as u32).to_be_bytes().to_vec();
        for record in records {
            let bytes = record
                .encode_slot_record()
                .ok_or_else(|| StoreError::Unavailable("a record the log does not hold".into()))?;
            payload.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            payload.extend_from_slice(&bytes);
        }
        let mut frame = Vec::with_capacity(FRAME_HEAD + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        let digest = frame_digest(&self.last, &payload);
        frame.extend_from_slice(&digest);
        frame.extend_from_slice(&payload);
        let end = self.len + frame.len() as u64;
        let written = self
            .make_room(end)
            .and_then(|()| self.file.write_all_at(&frame, self.len))
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            // Whatever part reached the file goes, so a later append does not follow
            // a torn frame; if even that fails, reopening cuts it.
            let _ = self.file.set_len(self.len);
            self.allocated = self.len;
            return Err(io(error));
        }
        self.len += frame.len() as u64;
        self.last = digest;
        self.records.extend_from_slice(records);
        Ok(())
    }

    /// Starts an empty log of `generation`, once the database holds the records,
    /// with the room the last one used.
    pub(super) fn restart(&mut self, generation: u64) -> Result<(), StoreError> {
        let expected = self.len;
        let ready = match self.spare.take() {
            Some(making) if making.is_finished() => {
                let made = match making.join() {
                    Ok(made) => made.map_err(|error| error.to_string()),
                    Err(_) => Err("its thread panicked".to_string()),
                };
                // One that failed leaves this start-over to the old way, which reports
                // what fails on the log's own path.
                made.inspect_err(|why| self.spare_failed(why)).ok()
            }
            making => {
                self.spare = making;
                None
            }
        };
        let failing = self.spare_failing && ready.is_none();
        let mut next = match ready {
            Some((file, allocated)) => self.take_spare(file, allocated, generation)?,
            None => Wal::create(&self.path, self.id, generation, expected)?,
        };
        next.spare = self.spare.take();
        next.spare_failing = failing;
        *self = next;
        self.make_spare(expected);
        Ok(())
    }

    /// Tells once that spares fail: each start-over writes its file on the consensus
    /// thread meanwhile, which is slower, not wrong.
    fn spare_failed(&mut self, why: &str) {
        if !self.spare_failing {
            tracing::warn!(
                spare = %Wal::spare_path(&self.path).display(),
                %why,
                "the consensus log's next file could not be made ahead; the log starts over \
                 the slower way until it can"
            );
        }
        self.spare_failing = true;
    }

    /// Waits for the spare being made: the log opened again on the same path (after
    /// a failure, while this one lives) makes its own, and two must not write one file.
    pub(super) fn settle(&mut self) {
        if let Some(making) = self.spare.take() {
            let _ = making.join();
        }
    }

    /// Where the next generation's file is made beside the log at `path`.
    pub(super) fn spare_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".spare");
        PathBuf::from(name)
    }

    /// Starts making a spare with room for about `expected` bytes of frames, unless
    /// one is being made.
    fn make_spare(&mut self, expected: u64) {
        if self.spare.is_some() {
            return;
        }
        let path = Wal::spare_path(&self.path);
        let allocated = starting_room(expected);
        let making = std::thread::Builder::new()
            .name("log-spare".into())
            .spawn(move || {
                let file = File::create(&path)?;
                write_zeros(&file, 0, allocated)?;
                file.sync_all()?;
                Ok((file, allocated))
            });
        // No thread, no spare: starting over takes the old way.
        self.spare = making.ok();
    }

    /// The empty log of `generation` in the spare `file` (zeros, synced): its header
    /// is written and synced before it takes the log's place.
    fn take_spare(&self, file: File, allocated: u64, generation: u64) -> Result<Wal, StoreError> {
        file.write_all_at(&header(self.id, generation), 0)
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        let spare = Wal::spare_path(&self.path);
        Wal::installed(&self.path, &spare, file, self.id, generation, allocated)
    }

    /// Writes zeros up to at least `end` if the file ends before it: doubling the
    /// room, by at most `ROOM_MAX_STEP`, so growing costs a bounded share of the
    /// bytes logged. The append's own `fdatasync` makes them durable.
    fn make_room(&mut self, end: u64) -> std::io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let grown = self.allocated + self.allocated.clamp(ROOM_STEP, ROOM_MAX_STEP);
        let allocated = room_for(end.max(grown), ROOM_STEP);
        write_zeros(&self.file, self.allocated, allocated)?;
        self.allocated = allocated;
        Ok(())
    }
}

/// What `ledgerd check` finds of a log, which it reads without changing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogCheck {
    /// Records the log holds, which the next start reads back (none in a log of an
    /// earlier generation: those are in the database, and the log starts over).
    pub records: u64,
    /// It ends in an append a crash cut short, which the next start cuts off.
    pub torn: bool,
}

/// Reads the log at `path` of the database `id` at `generation`, as [`Wal::open`]
/// of a database that names it does, without changing the file.
pub(super) fn inspect(path: &Path, id: [u8; 16], generation: u64) -> Result<LogCheck, StoreError> {
    let bytes = read_file(path)?;
    let held = examine(path, bytes.as_deref(), id, generation, true)?;
    Ok(match (held, bytes) {
        (Some((records, valid, _)), Some(bytes)) => LogCheck {
            records: records.len() as u64,
            torn: torn(&bytes, valid),
        },
        // A log that starts over (a missing one is damage here).
        _ => LogCheck {
            records: 0,
            torn: false,
        },
    })
}

/// What the log `bytes` (`None`: no file) at `path` holds for the database `id`
/// at `generation`: its records, where its whole frames end and the last one's
/// digest; `None` when a new log must take its place. `known`: see [`Wal::open`].
fn examine(
    path: &Path,
    bytes: Option<&[u8]>,
    id: [u8; 16],
    generation: u64,
    known: bool,
) -> Result<Option<Frames>, StoreError> {
    let damaged = |what: &str| {
        corrupt(format!(
            "the consensus log {} {what}: this member may have forgotten votes it \
             cast (a data directory moved or copied in parts: put it back whole)",
            path.display()
        ))
    };
    let Some(bytes) = bytes else {
        return match known {
            true => Err(damaged("is missing")),
            false => Ok(None),
        };
    };
    let (found_id, found) = read_header(bytes).ok_or_else(|| damaged("has no valid header"))?;
    if found_id != id {
        if known {
            return Err(damaged("belongs to another database"));
        }
        tracing::warn!(
            log = %path.display(),
            "a consensus log of another database lay where this one's goes; replaced"
        );
        return Ok(None);
    }
    if found > generation {
        return Err(damaged("is newer than the database"));
    }
    if found < generation {
        // Written into the tables before the log could start over.
        return Ok(None);
    }
    read_frames(bytes, path).map(Some)
}

/// The log's bytes, `None` if there is no file.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io(error)),
    }
}

/// Whether bytes other than zeros follow the whole frames, which end at `valid`:
/// the append a crash cut short.
fn torn(bytes: &[u8], valid: usize) -> bool {
    bytes[valid..].iter().any(|byte| *byte != 0)
}

/// The room a new log starts with for about `expected` bytes of frames, whichever
/// way it is made.
fn starting_room(expected: u64) -> u64 {
    room_for(expected, ROOM_STEP).min(ROOM_MAX_STEP)
}

/// `bytes` rounded up to a whole number of `step`s, at least one.
fn room_for(bytes: u64, step: u64) -> u64 {
    bytes.div_ceil(step).max(1) * step
}

/// Writes zeros over `from..to` of `file`, up to a megabyte a call.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0; to.saturating_sub(from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Reads a log's bytes as [`Wal::open`] does: the records of its whole frames and
/// the length they end at (for the fuzz target, `testing`).
#[cfg(feature = "testing")]
pub fn read_log(bytes: &[u8]) -> Result<(Vec<Record>, usize), StoreError> {
    read_header(bytes).ok_or_else(|| corrupt("the consensus log has no valid header"))?;
    let (records, valid, _) = read_frames(bytes, Path::new("the consensus log"))?;
    Ok((records, valid))
}

fn header(id: [u8; 16], generation: u64) -> [u8; HEADER_LEN] {
    let mut out = [0; HEADER_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..24].copy_from_slice(&id);
    out[24..32].copy_from_slice(&generation.to_be_bytes());
    let digest = Sha256::digest(&out[..32]);
    out[32..].copy_from_slice(&digest);
    out
}

/// The database id and generation a header names, if it checks out.
fn read_header(bytes: &[u8]) -> Option<([u8; 16], u64)> {
    let head = bytes.get(..HEADER_LEN)?;
    if &head[..8] != MAGIC || Sha256::digest(&head[..32]).as_slice() != &head[32..] {
        return None;
    }
    let id = head[8..24].try_into().ok()?;
    Some((id, u64::from_be_bytes(head[24..32].try_into().ok()?)))
}

/// The records of a log's whole frames, where the last one ends, and its digest.
type Frames = (Vec<Record>, usize, [u8; 32]);

/// The records of every whole frame, where the last one ends, and its digest.
fn read_frames(bytes: &[u8], path: &Path) -> Result<Frames, StoreError> {
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    let mut last = header_digest(bytes);
    // No frame starts in the zeros after the last byte that is not one: its digest
    // would be 32 zeros. So the search for frames after a bad one stops there.
    let written = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |i| i + 1);
    while at < bytes.len() {
        let Some(payload) = frame_at(bytes, at, &last) else {
            // The last append, cut short (the file may have grown by zeros), unless
            // a frame chained to this one follows: then this one was damaged after
            // it was synced. The chain starts from the log's random id, so bytes
            // inside a frame (an entry's data) never pass for one.
            if chained_after(bytes, at, &last, written) {
                return Err(corrupt(format!(
                    "{}: the frame at byte {at} does not match its checksum and whole \
                     frames follow it",
                    path.display()
                )));
            }
            break;
        };
        decode_payload(payload, &mut records)
            .map_err(|error| corrupt(format!("{}: frame at byte {at}: {error}", path.display())))?;
        last.copy_from_slice(&bytes[at + 4..at + FRAME_HEAD]);
        at += FRAME_HEAD + payload.len();
    }
    Ok((records, at.min(bytes.len()), last))
}

/// Whether a whole frame lies after the bad frame at `at` (which follows the digest
/// `previous`) and before `written`, chained to the digest the bad frame stores, or,
/// where that is what was damaged, with its length, to the digest of `previous` and
/// the bytes between the two: damage confined to the bad frame's head is found
/// either way. Linear in the bytes searched: the hash of the bytes before each
/// offset is carried along, and finished only where a frame's records add up.
fn chained_after(bytes: &[u8], at: usize, previous: &[u8; 32], written: usize) -> bool {
    let claimed = bytes
        .get(at + 4..at + FRAME_HEAD)
        .and_then(|claimed| <[u8; 32]>::try_from(claimed).ok());
    let mut before = Sha256::new().chain_update(previous);
    for next in at + FRAME_HEAD..written {
        if let Some((head, payload)) = shaped_at(bytes, next) {
            let stored = &head[4..];
            let linked = |digest: &[u8; 32]| frame_digest(digest, payload).as_slice() == stored;
            if claimed.is_some_and(|claimed| linked(&claimed))
                || linked(&before.clone().finalize().into())
            {
                return true;
            }
        }
        before.update([bytes[next]]);
    }
    false
}

/// The head and payload of what reads as a frame at `at`: a length that fits and
/// records that add up to it (a cheap test, before any hashing).
fn shaped_at(bytes: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    let head = bytes.get(at..at.checked_add(FRAME_HEAD)?)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let payload = bytes.get(at + FRAME_HEAD..at + FRAME_HEAD + len.min(MAX_FRAME))?;
    (payload.len() == len && framed(payload)).then_some((head, payload))
}

/// The payload of a whole frame at `at` that follows the frame (or header) whose
/// digest is `previous`, if one is there. The records' lengths must add up before
/// the payload is hashed: the search for a frame after a bad one tries every
/// offset, and with room after it most would read as a length that fits.
fn frame_at<'a>(bytes: &'a [u8], at: usize, previous: &[u8; 32]) -> Option<&'a [u8]> {
    let (head, payload) = shaped_at(bytes, at)?;
    (frame_digest(previous, payload).as_slice() == &head[4..]).then_some(payload)
}

/// Whether `payload` is a count and that many length-prefixed records, exactly.
fn framed(payload: &[u8]) -> bool {
    each_record(payload, |_| Ok(())).is_ok()
}

/// A frame's digest: SHA-256 of the previous frame's (or the header's) and its payload.
fn frame_digest(previous: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(previous)
        .chain_update(payload)
        .finalize()
        .into()
}

/// The digest a header ends with (checked by `read_header`).
fn header_digest(bytes: &[u8]) -> [u8; 32] {
    let mut digest = [0; 32];
    if let Some(stored) = bytes.get(32..HEADER_LEN) {
        digest.copy_from_slice(stored);
    }
    digest
}

fn decode_payload(payload: &[u8], records: &mut Vec<Record>) -> Result<(), StoreError> {
    each_record(payload, |bytes| {
        records.push(Record::decode_slot_record(bytes)?);
        Ok(())
    })
}

/// Hands each record of a frame's payload (a count, then each length-prefixed) to
/// `each`; fails unless they fill the payload exactly.
fn each_record(
    payload: &[u8],
    mut each: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut reader = Reader::new(payload, "consensus log frame");
    let count = reader.u32()?;
    for _ in 0..count {
        let len = reader.u32()? as usize;
        each(reader.take(len)?)?;
    }
    reader.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Block;
    use std::sync::Arc;

    const ID: [u8; 16] = [7; 16];

    fn accepted(view: u64) -> Record {
        let spec = crate::testing::spec(&[crate::testing::key(1)], 8);
        Record::Accepted {
            view,
            block: Arc::new(Block::clone(&spec.genesis_block())),
            signature: [view as u8; 64],
        }
    }

    /// Waits (boundedly) until the spare the last start-over began is made or failed.
    fn spare_done(wal: &Wal) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !wal
            .spare
            .as_ref()
            .is_some_and(|making| making.is_finished())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no spare made in 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_start_over_takes_the_file_the_last_one_made_ahead() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        let mut wal = Wal::open(&path, ID, 0, false).unwrap();
        assert!(wal.spare.is_none(), "a log just opened makes no spare");
        wal.append(&[accepted(1)]).unwrap();
        let ended = wal.len();
        wal.restart(1).unwrap();
        spare_done(&wal);
        let spare = std::fs::metadata(Wal::spare_path(&path)).unwrap();
        assert_eq!(spare.len(), room_for(ended, ROOM_STEP));
        wal.append(&[accepted(2)]).unwrap();
        let before = wal.len();
        wal.restart(2).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), spare.ino());
        assert_eq!(wal.generation(), 2);
        wal.append(&[accepted(3)]).unwrap();
        // Another spare is on its way, sized by the generation that just ended.
        spare_done(&wal);
        assert_eq!(
            std::fs::metadata(Wal::spare_path(&path)).unwrap().len(),
            room_for(before, ROOM_STEP)
        );
        drop(wal);
        let again = Wal::open(&path, ID, 2, true).unwrap();
        assert_eq!(again.records(), &[accepted(3)]);
    }

    #[test]
    fn a_spare_still_being_made_is_kept_for_the_next_start_over() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        let mut wal = Wal::open(&path, ID, 0, false).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let spare = Wal::spare_path(&path);
        // Larger than any spare this log would make itself: the one taken below is
        // this one.
        let room = 3 * ROOM_STEP;
        wal.spare = Some(std::thread::spawn(move || {
            let _ = held.recv();
            let file = File::create(&spare)?;
            write_zeros(&file, 0, room)?;
            file.sync_all()?;
            Ok((file, room))
        }));
        wal.restart(1).unwrap();
        assert!(wal.spare.is_some(), "the spare being made is kept");
        release.send(()).unwrap();
        spare_done(&wal);
        let made = std::fs::metadata(Wal::spare_path(&path)).unwrap().ino();
        wal.restart(2).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), made);
        assert_eq!(wal.allocated, room);
        wal.append(&[accepted(1)]).unwrap();
        drop(wal);
        assert_eq!(
            Wal::open(&path, ID, 2, true).unwrap().records(),
            &[accepted(1)]
        );
    }

    #[test]
    fn a_spare_that_cannot_be_made_leaves_the_start_over_to_the_old_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        // A directory where the spare would go: making it fails.
        std::fs::create_dir(Wal::spare_path(&path)).unwrap();
        let mut wal = Wal::open(&path, ID, 0, false).unwrap();
        wal.restart(1).unwrap();
        spare_done(&wal);
        wal.append(&[accepted(1)]).unwrap();
        wal.restart(2).unwrap();
        wal.append(&[accepted(2)]).unwrap();
        drop(wal);
        assert_eq!(
            Wal::open(&path, ID, 2, true).unwrap().records(),
            &[accepted(2)]
        );
    }

    #[test]
    fn records_come_back_in_order_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        let mut wal = Wal::open(&path, ID, 3, false).unwrap();
        wal.append(&[accepted(1), accepted(2)]).unwrap();
        wal.append(&[accepted(3)]).unwrap();
        let again = Wal::open(&path, ID, 3, true).unwrap();
        assert_eq!(again.records(), &[accepted(1), accepted(2), accepted(3)]);
        assert_eq!(again.len(), wal.len());
    }

    #[test]
    fn a_log_of_an_earlier_generation_was_written_and_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        Wal::open(&path, ID, 3, false)
            .unwrap()
            .append(&[accepted(1)])
            .unwrap();
        let next = Wal::open(&path, ID, 4, true).unwrap();
        assert!(next.records().is_empty());
        assert_eq!(Wal::open(&path, ID, 4, true).unwrap().generation(), 4);
        // A log ahead of its database cannot be: the database went back.
        assert!(Wal::open(&path, ID, 3, true)
            .unwrap_err()
            .damage()
            .is_some());
    }

    #[test]
    fn a_missing_or_foreign_log_of_a_known_database_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        assert!(Wal::open(&path, ID, 0, true)
            .unwrap_err()
            .damage()
            .is_some());
        Wal::open(&path, [8; 16], 0, false)
            .unwrap()
            .append(&[accepted(1)])
            .unwrap();
        assert!(Wal::open(&path, ID, 0, true)
            .unwrap_err()
            .damage()
            .is_some());
        // A database that names its log for the first time replaces what lies there.
        assert!(Wal::open(&path, ID, 0, false).unwrap().records().is_empty());
        assert!(Wal::open(&path, ID, 0, true).unwrap().records().is_empty());
    }

    #[test]
    fn an_append_cut_short_is_dropped_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        let mut wal = Wal::open(&path, ID, 0, false).unwrap();
        wal.append(&[accepted(1)]).unwrap();
        let whole = wal.len() as usize;
        wal.append(&[accepted(2)]).unwrap();
        let bytes = std::fs::read(&path).unwrap()[..wal.len() as usize].to_vec();
        let mut grown_by_zeros = bytes[..whole].to_vec();
        grown_by_zeros.resize(bytes.len() + 4096, 0);
        let mut torn_in_room = bytes[..whole + 20].to_vec();
        torn_in_room.resize(bytes.len() + 4096, 0);
        // A torn frame is cut off; zeros after the last whole frame stay as room,
        // and so does a torn frame that got no further than the zero first byte
        // of its length: the next append writes over it.
        assert_eq!(bytes[whole], 0, "a frame of less than 16 MiB");
        let torn = [4, 20, bytes.len() - whole - 1]
            .map(|cut| (bytes[..whole + cut].to_vec(), whole))
            .into_iter()
            .chain([(bytes[..whole + 1].to_vec(), whole + 1)])
            .chain([(torn_in_room, whole)])
            .chain([(grown_by_zeros.clone(), grown_by_zeros.len())]);
        for (n, (image, kept)) in torn.enumerate() {
            let path = dir.path().join(format!("torn{n}.wal"));
            std::fs::write(&path, &image).unwrap();
            let mut reopened = Wal::open(&path, ID, 0, true).unwrap();
            assert_eq!(reopened.records(), &[accepted(1)], "image {n}");
            assert_eq!(reopened.len(), whole as u64);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), kept as u64);
            reopened.append(&[accepted(5)]).unwrap();
            let last = Wal::open(&path, ID, 0, true).unwrap();
            assert_eq!(last.records(), &[accepted(1), accepted(5)]);
        }
    }

    #[test]
    fn appends_overwrite_zeros_written_ahead_and_the_room_grows_and_carries_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        let file_len = || std::fs::metadata(&path).unwrap().len();
        let mut wal = Wal::open(&path, ID, 0, false).unwrap();
        assert_eq!(
            file_len(),
            ROOM_STEP,
            "a new log has room before its first append"
        );
        wal.append(&[accepted(1)]).unwrap();
        assert_eq!(file_len(), ROOM_STEP, "the append overwrote zeros");
        let mut written = vec![accepted(1)];
        // Until the log just outgrows its first room (frames are far smaller).
        for view in 2..2 + ROOM_STEP {
            written.push(accepted(view));
            wal.append(&written[written.len() - 1..]).unwrap();
            if wal.len() > ROOM_STEP {
                break;
            }
        }
        assert!(wal.len() > ROOM_STEP, "the test outgrew the first room");
        assert_eq!(file_len(), 2 * ROOM_STEP, "the room doubled");
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[wal.len() as usize..].iter().all(|byte| *byte == 0));
        let mut again = Wal::open(&path, ID, 0, true).unwrap();
        assert_eq!(again.records(), written.as_slice());
        again.append(&[accepted(0)]).unwrap();
        assert_eq!(
            file_len(),
            2 * ROOM_STEP,
            "the room was kept across the reopen"
        );
        written.push(accepted(0));
        assert_eq!(Wal::open(&path, ID, 0, true).unwrap().records(), written);
        // The next generation starts with the room this one used.
        again.restart(1).unwrap();
        assert_eq!(file_len(), 2 * ROOM_STEP);
        assert!(Wal::open(&path, ID, 1, true).unwrap().records().is_empty());
    }

    #[test]
    fn a_damaged_frame_with_whole_frames_after_it_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        let mut wal = Wal::open(&path, ID, 0, false).unwrap();
        wal.append(&[accepted(1)]).unwrap();
        wal.append(&[accepted(2)]).unwrap();
        // In the payload, in the length, in the stored digest, and across the
        // length and the digest at once: either way a whole frame follows.
        let damages = [
            HEADER_LEN + FRAME_HEAD + 3..HEADER_LEN + FRAME_HEAD + 4,
            HEADER_LEN + 1..HEADER_LEN + 2,
            HEADER_LEN + 10..HEADER_LEN + 11,
            HEADER_LEN..HEADER_LEN + 8,
        ];
        for range in damages {
            let at = range.start;
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[range].iter_mut().for_each(|byte| *byte ^= 0xff);
            let damaged = dir.path().join(format!("damaged{at}.wal"));
            std::fs::write(&damaged, &bytes).unwrap();
            let error = Wal::open(&damaged, ID, 0, true).unwrap_err();
            assert!(error.damage().is_some(), "{error}");
        }
        // A damaged header too: the log cannot say whose it is.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Wal::open(&path, ID, 0, true)
            .unwrap_err()
            .damage()
            .is_some());
    }
}
