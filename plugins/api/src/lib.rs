//! The Ledger plugin ABI, version 1, and the SDK a plugin author writes against.
//!
//! A plugin is a shared library (`cdylib`) exporting one C function,
//! [`ENTRY_SYMBOL`], that returns a pointer to a static [`Descriptor`]: the ABI
//! version, the descriptor's size, a name and version, and nullable hook pointers.
//! Everything crossing the boundary is `#[repr(C)]`; values travel as pointer +
//! length of their canonical encodings (docs/FORMAT.md). Host memory is only
//! borrowed for the call; a buffer the plugin fills (a rejection reason) is the
//! plugin's and goes back to its [`Descriptor::free_buffer`].
//!
//! In Rust, implement [`Plugin`] and call [`export_plugin!`]: the macro builds the
//! descriptor, keeps the plugin's state behind the `void *` the host holds, decodes
//! the arguments into [`Header`], [`Entry`] and [`Block`] views, and turns a panic
//! into a failure with a reason, so no unwinding ever crosses the boundary.
//! `include/ledger_plugin.h` declares the same ABI for other languages.
//!
//! Hooks may be called from several threads at once, so plugin state is `Sync`.
//! Consensus hooks (`required_difficulty`, `validate_entry`, `validate_block`) must be
//! deterministic: same input, same answer, on every member.

// The ABI is raw pointers by nature; the unsafety stays in this crate, behind the SDK.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The ABI version this crate speaks; a host refuses a plugin with another.
pub const ABI_VERSION: u32 = 1;

/// The one symbol a plugin exports: `const Descriptor *ledger_plugin_descriptor(void)`.
/// Its name stays the same across ABI versions, so another version is reported as
/// such rather than as a missing symbol.
pub const ENTRY_SYMBOL: &str = "ledger_plugin_descriptor";

/// A hook succeeded: the input is accepted (or the out value is set).
pub const STATUS_OK: i32 = 0;
/// The input is rejected; the reason buffer says why.
pub const STATUS_REJECT: i32 = 1;
/// The hook itself failed (a panic, a bad config, undecodable input); the reason
/// buffer says why. The host treats it as a rejection and logs it.
pub const STATUS_FAILED: i32 = 2;

/// Bytes the host lends for the duration of one call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Bytes {
    /// First byte; may be null when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl Bytes {
    /// Lends `slice`.
    pub fn new(slice: &[u8]) -> Bytes {
        Bytes {
            ptr: slice.as_ptr(),
            len: slice.len(),
        }
    }

    /// The lent bytes.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a` (or `len` is 0).
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `len` readable bytes at `ptr`.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// Bytes the plugin allocated and hands to the host, which returns them through
/// [`Descriptor::free_buffer`] once read. `capacity` is the plugin's own business
/// (the Rust SDK needs it to rebuild its `Vec`); a host never interprets it.
#[repr(C)]
#[derive(Debug)]
pub struct Buffer {
    /// First byte, or null for an empty buffer.
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
    /// Allocation size, for the plugin's free function.
    pub capacity: usize,
}

impl Buffer {
    /// An empty buffer; the host passes one to every hook that may fill it.
    pub const EMPTY: Buffer = Buffer {
        ptr: std::ptr::null_mut(),
        len: 0,
        capacity: 0,
    };

    /// Moves `bytes` into a buffer; [`free_buffer`] takes it back.
    pub fn from_vec(bytes: Vec<u8>) -> Buffer {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        Buffer {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            capacity: bytes.capacity(),
        }
    }
}

/// `init(config, &state, &error)`: builds the plugin's state from its config (UTF-8
/// JSON, `{}` when the operator gave none).
pub type InitFn =
    unsafe extern "C" fn(config: Bytes, state: *mut *mut c_void, error: *mut Buffer) -> i32;
/// `destroy(state)`: releases what `init` built, at shutdown.
pub type DestroyFn = unsafe extern "C" fn(state: *mut c_void);
/// `required_difficulty(state, headers, &difficulty, &error)`: the difficulty the
/// next block must meet, given up to `difficulty_window` canonical headers (136
/// bytes each, concatenated, oldest first, the last being the new block's parent).
pub type RequiredDifficultyFn = unsafe extern "C" fn(
    state: *mut c_void,
    headers: Bytes,
    difficulty: *mut u32,
    error: *mut Buffer,
) -> i32;
/// `validate_entry(state, entry, &reason)`: one entry's canonical encoding.
pub type ValidateEntryFn =
    unsafe extern "C" fn(state: *mut c_void, entry: Bytes, reason: *mut Buffer) -> i32;
/// `validate_block(state, header, entries, &reason)`: the canonical header and the
/// rest of the block's encoding (`u32 count ‖ entries`).
pub type ValidateBlockFn = unsafe extern "C" fn(
    state: *mut c_void,
    header: Bytes,
    entries: Bytes,
    reason: *mut Buffer,
) -> i32;
/// `on_commit(state, block, &error)`: a block's canonical encoding, after it was
/// applied. Not part of consensus: a failure is logged, nothing else.
pub type OnCommitFn =
    unsafe extern "C" fn(state: *mut c_void, block: Bytes, error: *mut Buffer) -> i32;
/// `free_buffer(buffer)`: takes back a buffer the plugin handed out.
pub type FreeBufferFn = unsafe extern "C" fn(buffer: Buffer);

/// What [`ENTRY_SYMBOL`] returns. A field a plugin leaves null is a hook it does not
/// have. Later ABI versions may only append fields, so `struct_size` tells the host
/// how much of the struct the plugin knows.
#[repr(C)]
#[derive(Debug)]
pub struct Descriptor {
    /// [`ABI_VERSION`] as the plugin was built.
    pub abi_version: u32,
    /// `size_of::<Descriptor>()` as the plugin was built.
    pub struct_size: u32,
    /// NUL-terminated UTF-8 name, static.
    pub name: *const c_char,
    /// NUL-terminated UTF-8 version, static.
    pub version: *const c_char,
    /// How many recent headers `required_difficulty` wants (0: it has no such hook).
    pub difficulty_window: u32,
    /// See [`InitFn`].
    pub init: Option<InitFn>,
    /// See [`DestroyFn`].
    pub destroy: Option<DestroyFn>,
    /// See [`RequiredDifficultyFn`].
    pub required_difficulty: Option<RequiredDifficultyFn>,
    /// See [`ValidateEntryFn`].
    pub validate_entry: Option<ValidateEntryFn>,
    /// See [`ValidateBlockFn`].
    pub validate_block: Option<ValidateBlockFn>,
    /// See [`OnCommitFn`].
    pub on_commit: Option<OnCommitFn>,
    /// See [`FreeBufferFn`]; required when any hook may fill a buffer.
    pub free_buffer: Option<FreeBufferFn>,
}

// SAFETY: a descriptor is immutable static data: pointers to static strings and
// functions, which any thread may read.
unsafe impl Sync for Descriptor {}

impl Descriptor {
    /// The plugin's name.
    ///
    /// # Safety
    /// `name` must be null or a NUL-terminated string that lives as long as `self`.
    pub unsafe fn name(&self) -> Option<&str> {
        // SAFETY: as the caller guarantees.
        unsafe { c_text(self.name) }
    }

    /// The plugin's version.
    ///
    /// # Safety
    /// As [`Descriptor::name`], for `version`.
    pub unsafe fn version(&self) -> Option<&str> {
        // SAFETY: as the caller guarantees.
        unsafe { c_text(self.version) }
    }
}

unsafe fn c_text<'a>(text: *const c_char) -> Option<&'a str> {
    if text.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated, as the caller guarantees.
    unsafe { CStr::from_ptr(text) }.to_str().ok()
}

// ----- the SDK ----------------------------------------------------------------------

/// Which of the optional hooks a plugin has; the others are left null in its
/// descriptor, so the host does not call (and the SDK does not decode for) them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hooks {
    /// [`Plugin::validate_entry`].
    pub validate_entry: bool,
    /// [`Plugin::validate_block`].
    pub validate_block: bool,
    /// [`Plugin::on_commit`].
    pub on_commit: bool,
}

impl Hooks {
    /// Every hook.
    pub const ALL: Hooks = Hooks {
        validate_entry: true,
        validate_block: true,
        on_commit: true,
    };
    /// None of them (a difficulty policy alone, say).
    pub const NONE: Hooks = Hooks {
        validate_entry: false,
        validate_block: false,
        on_commit: false,
    };
}

/// A plugin, in plain Rust. Every hook has a default that accepts (or, for the
/// difficulty, leaves the chain's own), so a plugin implements only what it checks
/// and names those in [`Plugin::HOOKS`].
pub trait Plugin: Sized + Send + Sync + 'static {
    /// The name the node reports and logs.
    const NAME: &'static CStr;
    /// The plugin's version.
    const VERSION: &'static CStr;
    /// How many recent headers [`Plugin::required_difficulty`] wants; 0 means the
    /// plugin has no difficulty policy.
    const DIFFICULTY_WINDOW: u32 = 0;
    /// The optional hooks this plugin implements (all by default: a hook left at
    /// its default accepts, at the cost of a call).
    const HOOKS: Hooks = Hooks::ALL;

    /// Builds the state from the operator's config (JSON text, `{}` if none).
    fn init(config: &str) -> Result<Self, String>;

    /// The difficulty the block after `recent.last()` must meet; `recent` holds up
    /// to `DIFFICULTY_WINDOW` headers, oldest first (fewer near genesis).
    fn required_difficulty(&self, recent: &[Header]) -> Result<u32, String> {
        recent
            .last()
            .map(|parent| parent.difficulty)
            .ok_or_else(|| "no parent header".to_string())
    }

    /// Accepts or rejects one entry, with the reason a client will see.
    fn validate_entry(&self, _entry: &Entry<'_>) -> Result<(), String> {
        Ok(())
    }

    /// Accepts or rejects a block before this member prepares it.
    fn validate_block(&self, _header: &Header, _entries: &[Entry<'_>]) -> Result<(), String> {
        Ok(())
    }

    /// Sees a block once it is applied; an error is logged by the host.
    fn on_commit(&self, _block: &Block<'_>) -> Result<(), String> {
        Ok(())
    }
}

/// The descriptor for `P`; [`export_plugin!`] puts it in a static.
pub const fn descriptor<P: Plugin>() -> Descriptor {
    Descriptor {
        abi_version: ABI_VERSION,
        struct_size: std::mem::size_of::<Descriptor>() as u32,
        name: P::NAME.as_ptr(),
        version: P::VERSION.as_ptr(),
        difficulty_window: P::DIFFICULTY_WINDOW,
        init: Some(sdk_init::<P>),
        destroy: Some(sdk_destroy::<P>),
        required_difficulty: if P::DIFFICULTY_WINDOW == 0 {
            None
        } else {
            Some(sdk_required_difficulty::<P>)
        },
        validate_entry: if P::HOOKS.validate_entry {
            Some(sdk_validate_entry::<P>)
        } else {
            None
        },
        validate_block: if P::HOOKS.validate_block {
            Some(sdk_validate_block::<P>)
        } else {
            None
        },
        on_commit: if P::HOOKS.on_commit {
            Some(sdk_on_commit::<P>)
        } else {
            None
        },
        free_buffer: Some(free_buffer),
    }
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as this library's plugin.
///
/// ```ignore
/// struct MaxSize(usize);
/// impl ledger_plugin_api::Plugin for MaxSize { /* ... */ }
/// ledger_plugin_api::export_plugin!(MaxSize);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The plugin's entry symbol (the Ledger plugin ABI).
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn ledger_plugin_descriptor() -> *const $crate::Descriptor {
            static DESCRIPTOR: $crate::Descriptor = $crate::descriptor::<$plugin>();
            &DESCRIPTOR
        }
    };
}

/// Runs a hook body; a panic becomes [`STATUS_FAILED`] with its message.
fn guarded(out: *mut Buffer, body: impl FnOnce() -> Result<i32, (i32, String)>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => status,
        Ok(Err((status, reason))) => {
            write_reason(out, reason);
            status
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            write_reason(out, format!("plugin panicked: {message}"));
            STATUS_FAILED
        }
    }
}

fn write_reason(out: *mut Buffer, reason: String) {
    if !out.is_null() {
        // SAFETY: the host passes a valid, writable buffer slot (or null).
        unsafe { out.write(Buffer::from_vec(reason.into_bytes())) };
    }
}

fn rejected(reason: String) -> (i32, String) {
    (STATUS_REJECT, reason)
}

fn failed(reason: String) -> (i32, String) {
    (STATUS_FAILED, reason)
}

/// # Safety
/// `state` is what `sdk_init::<P>` produced.
unsafe fn state<'a, P: Plugin>(state: *mut c_void) -> Result<&'a P, (i32, String)> {
    if state.is_null() {
        return Err(failed("the plugin was not initialised".into()));
    }
    // SAFETY: a non-null state is the `Box<P>` `sdk_init::<P>` leaked.
    Ok(unsafe { &*(state as *const P) })
}

unsafe extern "C" fn sdk_init<P: Plugin>(
    config: Bytes,
    out: *mut *mut c_void,
    error: *mut Buffer,
) -> i32 {
    guarded(error, || {
        // SAFETY: the host lends `config` for this call.
        let config = unsafe { config.as_slice() };
        let config =
            std::str::from_utf8(config).map_err(|_| failed("the config is not UTF-8".into()))?;
        let plugin = P::init(config).map_err(failed)?;
        if out.is_null() {
            return Err(failed("no place for the state".into()));
        }
        // SAFETY: the host passes a writable slot for the state pointer.
        unsafe { out.write(Box::into_raw(Box::new(plugin)).cast()) };
        Ok(STATUS_OK)
    })
}

unsafe extern "C" fn sdk_destroy<P: Plugin>(state: *mut c_void) {
    if !state.is_null() {
        // A panicking destructor must not unwind into the host either.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `state` is the `Box<P>` `sdk_init::<P>` leaked; the host
            // destroys it once.
            drop(unsafe { Box::from_raw(state.cast::<P>()) })
        }));
    }
}

unsafe extern "C" fn sdk_required_difficulty<P: Plugin>(
    state_ptr: *mut c_void,
    headers: Bytes,
    difficulty: *mut u32,
    error: *mut Buffer,
) -> i32 {
    guarded(error, || {
        // SAFETY: the host passes the state `init` made.
        let plugin = unsafe { state::<P>(state_ptr) }?;
        // SAFETY: the host lends `headers` for this call.
        let bytes = unsafe { headers.as_slice() };
        if bytes.len() % HEADER_LEN != 0 {
            return Err(failed("headers are not a whole number of 136 bytes".into()));
        }
        let recent = bytes
            .chunks_exact(HEADER_LEN)
            .map(Header::decode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        let required = plugin.required_difficulty(&recent).map_err(failed)?;
        if difficulty.is_null() {
            return Err(failed("no place for the difficulty".into()));
        }
        // SAFETY: the host passes a writable slot.
        unsafe { difficulty.write(required) };
        Ok(STATUS_OK)
    })
}

unsafe extern "C" fn sdk_validate_entry<P: Plugin>(
    state_ptr: *mut c_void,
    entry: Bytes,
    reason: *mut Buffer,
) -> i32 {
    guarded(reason, || {
        // SAFETY: the host passes the state `init` made.
        let plugin = unsafe { state::<P>(state_ptr) }?;
        // SAFETY: the host lends `entry` for this call.
        let entry = Entry::decode(unsafe { entry.as_slice() }).map_err(failed)?;
        plugin.validate_entry(&entry).map_err(rejected)?;
        Ok(STATUS_OK)
    })
}

unsafe extern "C" fn sdk_validate_block<P: Plugin>(
    state_ptr: *mut c_void,
    header: Bytes,
    entries: Bytes,
    reason: *mut Buffer,
) -> i32 {
    guarded(reason, || {
        // SAFETY: the host passes the state `init` made.
        let plugin = unsafe { state::<P>(state_ptr) }?;
        // SAFETY: the host lends both for this call.
        let (header, entries) = unsafe { (header.as_slice(), entries.as_slice()) };
        let header = Header::decode(header).map_err(failed)?;
        let entries = Entry::decode_list(entries).map_err(failed)?;
        plugin.validate_block(&header, &entries).map_err(rejected)?;
        Ok(STATUS_OK)
    })
}

unsafe extern "C" fn sdk_on_commit<P: Plugin>(
    state_ptr: *mut c_void,
    block: Bytes,
    error: *mut Buffer,
) -> i32 {
    guarded(error, || {
        // SAFETY: the host passes the state `init` made.
        let plugin = unsafe { state::<P>(state_ptr) }?;
        // SAFETY: the host lends `block` for this call.
        let block = Block::decode(unsafe { block.as_slice() }).map_err(failed)?;
        plugin.on_commit(&block).map_err(failed)?;
        Ok(STATUS_OK)
    })
}

/// Takes back a buffer this SDK handed out.
///
/// # Safety
/// `buffer` came from [`Buffer::from_vec`] in this library and is freed once.
pub unsafe extern "C" fn free_buffer(buffer: Buffer) {
    if !buffer.ptr.is_null() {
        // SAFETY: as the caller guarantees, these are the parts of a leaked Vec.
        drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.capacity) });
    }
}

// ----- views of the canonical encodings (docs/FORMAT.md) ---------------------------

/// Bytes in a canonical header.
pub const HEADER_LEN: usize = 136;

/// A block header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header format version.
    pub version: u32,
    /// SHA-256 of the chain spec.
    pub chain_hash: [u8; 32],
    /// Height (genesis = 0).
    pub height: u64,
    /// Proposer's clock, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The parent block's hash.
    pub prev_hash: [u8; 32],
    /// Entries in the log after this block.
    pub log_size: u64,
    /// Merkle root of the log.
    pub log_root: [u8; 32],
    /// Required leading zero bits of the block hash.
    pub difficulty: u32,
    /// Proof-of-work nonce.
    pub nonce: u64,
}

impl Header {
    /// Reads a canonical header (exactly 136 bytes).
    pub fn decode(bytes: &[u8]) -> Result<Header, String> {
        let bytes: &[u8; HEADER_LEN] = bytes
            .try_into()
            .map_err(|_| format!("a header is {HEADER_LEN} bytes, not {}", bytes.len()))?;
        let mut reader = Reader(bytes);
        Ok(Header {
            version: reader.u32()?,
            chain_hash: reader.array()?,
            height: reader.u64()?,
            timestamp_ms: reader.u64()?,
            prev_hash: reader.array()?,
            log_size: reader.u64()?,
            log_root: reader.array()?,
            difficulty: reader.u32()?,
            nonce: reader.u64()?,
        })
    }
}

/// An entry's author: ed25519 public key and signature (checked by the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Author<'a> {
    /// Public key.
    pub public_key: &'a [u8; 32],
    /// Signature.
    pub signature: &'a [u8; 64],
}

/// An entry: a client's, or a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The payload.
    pub data: &'a [u8],
    /// Present when the entry is signed.
    pub author: Option<Author<'a>>,
    /// A membership change signed by the chain's admins (its data is the
    /// reconfiguration, docs/FORMAT.md), not a client's entry; never authored.
    pub reconfiguration: bool,
}

impl<'a> Entry<'a> {
    /// Reads one canonical entry, refusing trailing bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Entry<'a>, String> {
        let mut reader = Reader(bytes);
        let entry = reader.entry()?;
        reader.end()?;
        Ok(entry)
    }

    /// Reads `u32 count ‖ count entries`, as a block's encoding carries them.
    pub fn decode_list(bytes: &'a [u8]) -> Result<Vec<Entry<'a>>, String> {
        let mut reader = Reader(bytes);
        let entries = reader.entries()?;
        reader.end()?;
        Ok(entries)
    }
}

/// A block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block<'a> {
    /// Its header.
    pub header: Header,
    /// Its entries, in log order.
    pub entries: Vec<Entry<'a>>,
}

impl<'a> Block<'a> {
    /// Reads a canonical block.
    pub fn decode(bytes: &'a [u8]) -> Result<Block<'a>, String> {
        if bytes.len() < HEADER_LEN {
            return Err("a block is shorter than its header".into());
        }
        let (header, rest) = bytes.split_at(HEADER_LEN);
        Ok(Block {
            header: Header::decode(header)?,
            entries: Entry::decode_list(rest)?,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated encoding".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(*self.array_ref::<N>()?)
    }

    fn array_ref<const N: usize>(&mut self) -> Result<&'a [u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn entry(&mut self) -> Result<Entry<'a>, String> {
        let [version, flags] = self.array::<2>()?;
        if version != 1 {
            return Err(format!("entry format version {version} is unknown"));
        }
        // Bit 0: authored; bit 1: a reconfiguration, which has no author.
        if flags & !0b11 != 0 {
            return Err("unknown entry flags".into());
        }
        if flags == 0b11 {
            return Err("a reconfiguration has no author".into());
        }
        let len = self.u32()? as usize;
        let data = self.take(len)?;
        let author = if flags & 1 == 1 {
            Some(Author {
                public_key: self.array_ref()?,
                signature: self.array_ref()?,
            })
        } else {
            None
        };
        Ok(Entry {
            data,
            author,
            reconfiguration: flags & 0b10 != 0,
        })
    }

    fn entries(&mut self) -> Result<Vec<Entry<'a>>, String> {
        let count = self.u32()? as usize;
        // Each entry takes at least 6 bytes: refuse a count the bytes cannot hold
        // before allocating for it.
        if count > self.0.len() / 6 {
            return Err("entry count larger than the block".into());
        }
        (0..count).map(|_| self.entry()).collect()
    }

    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes".into())
        }
    }
}
