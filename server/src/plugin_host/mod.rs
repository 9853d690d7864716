//! Validation plugins: shared libraries speaking the ABI of `ledger-plugin-api`,
//! loaded at start-up and called around the pipeline.
//!
//! Loading checks, in order, and names the file in every refusal: it can be read
//! (its SHA-256 is the fingerprint), it is a shared library, it exports
//! [`ENTRY_SYMBOL`], its descriptor has this node's ABI version and at least the
//! size this node reads, its name and version are text, and `init` accepts the
//! operator's config. Libraries are never unloaded: a Rust cdylib registers
//! thread-local destructors, which make `dlclose` unsound. Plugin state is destroyed
//! when the [`Plugins`] are dropped at shutdown.
//!
//! Every hook call is timed into `/metrics`; a call over the plugin's budget is
//! logged. A hook that fails (its own error, or a panic the SDK caught) counts as a
//! rejection with its reason: a broken plugin refuses, it does not crash the node.

// Calling into a loaded library is unsafe by nature; this module is the one place.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ledger_plugin_api::{
    Buffer, Bytes, Descriptor, ABI_VERSION, ENTRY_SYMBOL, HEADER_LEN, STATUS_OK, STATUS_REJECT,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::lock;

use crate::chain::{Block, Entry, Header, Policy};
use crate::metrics::Metrics;

/// One plugin as the node config lists it (`[[plugins]]`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The shared library (relative: to the node config's directory).
    pub path: PathBuf,
    /// The plugin's own settings, handed to its `init` as JSON.
    #[serde(default = "empty_table")]
    pub config: toml::Table,
    /// A hook call taking longer than this is logged, in milliseconds.
    #[serde(default = "default_budget_ms")]
    pub budget_ms: u64,
}

fn empty_table() -> toml::Table {
    toml::Table::new()
}

fn default_budget_ms() -> u64 {
    10
}

pub use ledger_client::types::Fingerprint;

/// Why a plugin could not be loaded; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file cannot be read.
    #[error("plugin {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a loadable shared library.
    #[error("plugin {path}: not a shared library this system can load: {reason}")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library does not export the entry symbol.
    #[error("plugin {path}: no `{ENTRY_SYMBOL}` symbol; is it built with export_plugin!?")]
    NoEntrySymbol {
        /// The file.
        path: PathBuf,
    },
    /// The descriptor is missing or malformed.
    #[error("plugin {path}: {reason}")]
    BadDescriptor {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Built against another version of the ABI.
    #[error("plugin {path}: built for plugin ABI version {found}; this node speaks version {ABI_VERSION}")]
    AbiVersion {
        /// The file.
        path: PathBuf,
        /// The plugin's ABI version.
        found: u32,
    },
    /// `init` refused the config.
    #[error("plugin {path} ({name}): init refused its config: {reason}")]
    Init {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The plugin's reason.
        reason: String,
    },
}

/// A plugin said no (or failed, which counts as no).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin}: {reason}")]
pub struct Rejection {
    /// The plugin's name.
    pub plugin: String,
    /// Its reason.
    pub reason: String,
}

/// The plugin's state pointer.
struct State(*mut c_void);

// SAFETY: the ABI requires hooks to be callable from any thread at once (the SDK
// demands `Send + Sync` state); the pointer is only ever passed back to them.
unsafe impl Send for State {}
// SAFETY: as above.
unsafe impl Sync for State {}

/// One loaded plugin.
pub struct Plugin {
    path: PathBuf,
    descriptor: &'static Descriptor,
    state: State,
    fingerprint: Fingerprint,
    budget: Duration,
    /// The hook calls running now.
    running: Mutex<Running>,
}

/// A plugin's hook calls running now, each by a number of its own: its hook, and
/// when it began.
#[derive(Default)]
struct Running {
    last: u64,
    calls: HashMap<u64, (&'static str, Instant)>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// What `ledgerd plugins check` reports: who the plugin is and which hooks it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// Name, version and file hash.
    pub fingerprint: Fingerprint,
    /// The hooks present, by name.
    pub hooks: Vec<&'static str>,
    /// Headers the difficulty hook wants.
    pub difficulty_window: u32,
}

/// Opens `path` and checks its descriptor, without calling `init`.
fn open(path: &Path) -> Result<(&'static Descriptor, Fingerprint), PluginError> {
    let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
        path: path.to_owned(),
        source,
    })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let not_a_library = |error: libloading::Error| PluginError::NotALibrary {
        path: path.to_owned(),
        reason: error.to_string(),
    };
    // With a `/`, so that the dynamic loader takes it as a path and does not
    // search its library path for a bare name.
    let file = Path::new(".").join(path);
    // SAFETY (both loads): loading runs the library's initialisers; the operator
    // chose to trust this file by listing it.
    let library = match private_copy(&bytes) {
        Ok((copy, open)) => match unsafe { libloading::Library::new(&copy) } {
            Ok(library) => {
                // Open for good, as the library stays loaded: the loader knows a
                // library by its path, and a later copy given this descriptor's
                // number would be taken for this one.
                std::mem::forget(open);
                library
            }
            Err(error) => {
                // Where memory files may not hold code, the file itself loads.
                let library = unsafe { libloading::Library::new(&file) }.map_err(not_a_library)?;
                tracing::warn!(plugin = %path.display(), %error, "cannot load a private copy of the plugin: the file itself is loaded, and must not be rewritten in place while the node runs");
                library
            }
        },
        Err(error) => {
            tracing::warn!(plugin = %path.display(), %error, "cannot make a private copy of the plugin: the file itself is loaded, and must not be rewritten in place while the node runs");
            unsafe { libloading::Library::new(&file) }.map_err(not_a_library)?
        }
    };
    // Never unloaded (see the module docs), so whatever it points to lives forever.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    type EntryFn = unsafe extern "C" fn() -> *const Descriptor;
    // SAFETY: the ABI fixes the symbol's type.
    let entry = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL.as_bytes()) }.map_err(|_| {
        PluginError::NoEntrySymbol {
            path: path.to_owned(),
        }
    })?;
    let bad = |reason: &str| PluginError::BadDescriptor {
        path: path.to_owned(),
        reason: reason.to_string(),
    };
    // SAFETY: calling the entry point the ABI defines.
    let descriptor = unsafe { entry() };
    if descriptor.is_null() {
        return Err(bad("the entry symbol returned no descriptor"));
    }
    // The first two fields are the same in every ABI version: read them before
    // trusting the rest of the layout.
    // SAFETY: non-null, and every version starts with two u32s.
    let (abi_version, struct_size) = unsafe {
        let head = descriptor.cast::<u32>();
        (head.read_unaligned(), head.add(1).read_unaligned())
    };
    if abi_version != ABI_VERSION {
        return Err(PluginError::AbiVersion {
            path: path.to_owned(),
            found: abi_version,
        });
    }
    if (struct_size as usize) < std::mem::size_of::<Descriptor>() {
        return Err(bad(&format!(
            "descriptor of {struct_size} bytes; ABI version {ABI_VERSION} has {}",
            std::mem::size_of::<Descriptor>()
        )));
    }
    // SAFETY: a version-1 descriptor of full size, in a library never unloaded.
    let descriptor: &'static Descriptor = unsafe { &*descriptor };
    // SAFETY: the ABI makes these static NUL-terminated strings (or null).
    let (name, version) = unsafe { (descriptor.name(), descriptor.version()) };
    let (Some(name), Some(version)) = (name, version) else {
        return Err(bad("name or version missing or not UTF-8"));
    };
    let fills_buffers = descriptor.init.is_some()
        || descriptor.required_difficulty.is_some()
        || descriptor.validate_entry.is_some()
        || descriptor.validate_block.is_some()
        || descriptor.on_commit.is_some();
    if fills_buffers && descriptor.free_buffer.is_none() {
        return Err(bad("hooks without a free_buffer function"));
    }
    let fingerprint = Fingerprint {
        name: name.to_string(),
        version: version.to_string(),
        sha256,
        config_sha256: None,
    };
    Ok((descriptor, fingerprint))
}

/// `bytes` in an anonymous memory file of this process, and the path that opens it
/// (with the file, which must stay open while the library is loaded): the code
/// loaded is then the code hashed, and a library rewritten in place on disk (`cp`
/// over it) cannot change, under a running node, code the node already mapped.
#[cfg(target_os = "linux")]
fn private_copy(bytes: &[u8]) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let create = |flags| {
        // SAFETY: a NUL-terminated name; the flags are memfd_create's.
        unsafe { libc::memfd_create(c"ledger-plugin".as_ptr(), flags) }
    };
    // Executable on kernels that can forbid it (`vm.memfd_noexec`); older ones do
    // not know the flag.
    let mut fd = create(libc::MFD_CLOEXEC | libc::MFD_EXEC);
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        fd = create(libc::MFD_CLOEXEC);
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created, owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    Ok((PathBuf::from(format!("/proc/self/fd/{fd}")), file))
}

#[cfg(not(target_os = "linux"))]
fn private_copy(_: &[u8]) -> std::io::Result<(PathBuf, std::fs::File)> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Runs the start-up checks on `path` without initialising the plugin.
pub fn inspect(path: &Path) -> Result<Inspection, PluginError> {
    let (descriptor, fingerprint) = open(path)?;
    let hooks = [
        ("init", descriptor.init.is_some()),
        ("destroy", descriptor.destroy.is_some()),
        (
            "required_difficulty",
            descriptor.required_difficulty.is_some(),
        ),
        ("validate_entry", descriptor.validate_entry.is_some()),
        ("validate_block", descriptor.validate_block.is_some()),
        ("on_commit", descriptor.on_commit.is_some()),
    ];
    Ok(Inspection {
        fingerprint,
        hooks: hooks
            .into_iter()
            .filter(|(_, present)| *present)
            .map(|(name, _)| name)
            .collect(),
        difficulty_window: descriptor.difficulty_window,
    })
}

impl Plugin {
    /// Loads the plugin `config` names and initialises it with its config.
    pub fn load(config: &PluginConfig) -> Result<Plugin, PluginError> {
        let path = config.path.clone();
        let (descriptor, mut fingerprint) = open(&path)?;
        let json = serde_json::to_string(&config.config).unwrap_or_else(|_| "{}".into());
        let digest = hex::encode(Sha256::digest(json.as_bytes()));
        fingerprint.config_sha256 = Some(digest[..16].to_owned());
        let mut state = std::ptr::null_mut();
        if let Some(init) = descriptor.init {
            let mut error = Buffer::EMPTY;
            // SAFETY: the ABI's init: lent config, writable state and error slots.
            let status = unsafe { init(Bytes::new(json.as_bytes()), &mut state, &mut error) };
            let reason = take(descriptor, error);
            if status != STATUS_OK {
                return Err(PluginError::Init {
                    path,
                    name: fingerprint.name,
                    reason: reason.unwrap_or_else(|| format!("status {status}")),
                });
            }
        }
        Ok(Plugin {
            path,
            descriptor,
            state: State(state),
            fingerprint,
            budget: Duration::from_millis(config.budget_ms),
            running: Mutex::default(),
        })
    }

    /// Name, version and file hash.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Calls one hook through `call`, which gets the state and the reason slot;
    /// times it, and turns anything but OK into a rejection.
    fn call(
        &self,
        hook: &'static str,
        metrics: &Metrics,
        call: impl FnOnce(*mut c_void, &mut Buffer) -> i32,
    ) -> Result<(), Rejection> {
        let mut reason = Buffer::EMPTY;
        let started = Instant::now();
        let number = {
            let mut running = lock(&self.running);
            running.last += 1;
            let number = running.last;
            running.calls.insert(number, (hook, started));
            number
        };
        let status = call(self.state.0, &mut reason);
        lock(&self.running).calls.remove(&number);
        let took = started.elapsed();
        metrics.plugin_calls.add(hook, 1);
        metrics
            .plugin_micros
            .add(hook, u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        if took > self.budget {
            tracing::warn!(
                plugin = %self.fingerprint.name,
                hook,
                took_ms = took.as_millis() as u64,
                budget_ms = self.budget.as_millis() as u64,
                "plugin hook over its budget"
            );
        }
        let reason = take(self.descriptor, reason);
        if status == STATUS_OK {
            return Ok(());
        }
        let reason = match (status, reason) {
            (STATUS_REJECT, Some(reason)) => reason,
            (STATUS_REJECT, None) => "rejected (no reason given)".to_string(),
            (_, reason) => {
                let reason = format!(
                    "failed: {}",
                    reason.unwrap_or_else(|| format!("status {status}"))
                );
                tracing::warn!(plugin = %self.fingerprint.name, hook, %reason, "plugin hook failed");
                reason
            }
        };
        metrics.plugin_rejections.add(hook, 1);
        Err(Rejection {
            plugin: self.fingerprint.name.clone(),
            reason,
        })
    }

    /// The `on_commit` hook on a block's canonical encoding; a failure is logged.
    fn on_commit(&self, encoded: &[u8], metrics: &Metrics) {
        let Some(hook) = self.descriptor.on_commit else {
            return;
        };
        // `call` logs a failure; a commit cannot be refused.
        let _ = self.call("on_commit", metrics, |state, error| {
            // SAFETY: the ABI's hook: the state init made, lent bytes, an error slot.
            unsafe { hook(state, Bytes::new(encoded), error) }
        });
    }

    /// The `required_difficulty` hook on the newest of `recent` it wants; `None`
    /// when the plugin has no such hook.
    fn required_difficulty(
        &self,
        recent: &[Header],
        metrics: &Metrics,
    ) -> Result<Option<u32>, Rejection> {
        let Some(hook) = self.descriptor.required_difficulty else {
            return Ok(None);
        };
        let window = self.descriptor.difficulty_window as usize;
        let newest = &recent[recent.len().saturating_sub(window)..];
        let encoded: Vec<u8> = newest.iter().flat_map(|h| h.encode()).collect();
        let mut difficulty = 0;
        self.call("required_difficulty", metrics, |state, error| {
            // SAFETY: the ABI's hook: the state, lent headers, writable slots.
            unsafe { hook(state, Bytes::new(&encoded), &mut difficulty, error) }
        })?;
        Ok(Some(difficulty))
    }

    /// The `validate_block` hook on a block's canonical encoding, split after the
    /// header.
    fn validate_block(&self, encoded: &[u8], metrics: &Metrics) -> Result<(), Rejection> {
        let Some(hook) = self.descriptor.validate_block else {
            return Ok(());
        };
        let (header, entries) = encoded.split_at(HEADER_LEN.min(encoded.len()));
        self.call("validate_block", metrics, |state, reason| {
            // SAFETY: the ABI's hook: the state, lent bytes, a reason slot.
            unsafe { hook(state, Bytes::new(header), Bytes::new(entries), reason) }
        })
    }

    /// The `validate_entry` hook on `entry`'s canonical encoding.
    pub fn validate_entry(&self, encoded: &[u8], metrics: &Metrics) -> Result<(), Rejection> {
        let Some(hook) = self.descriptor.validate_entry else {
            return Ok(());
        };
        self.call("validate_entry", metrics, |state, reason| {
            // SAFETY: the ABI's hook: the state init made, lent bytes, a reason slot.
            unsafe { hook(state, Bytes::new(encoded), reason) }
        })
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(destroy) = self.descriptor.destroy {
            // SAFETY: the state init made, destroyed once; the library stays loaded.
            unsafe { destroy(self.state.0) };
        }
    }
}

/// The most of a plugin's text (a refusal's reason, an error) that is kept: reasons
/// go to clients, one per refused entry of a batch, and to the log.
const MAX_TEXT: usize = 1024;

/// A plugin's text as clients and the log get it: cut at a character once past
/// [`MAX_TEXT`] bytes, and marked, with control characters (newlines, terminal escapes)
/// shown as `\u{..}` rather than passed on.
fn bounded_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len().min(MAX_TEXT + 16));
    for c in text.chars() {
        if out.len() >= MAX_TEXT {
            out.push_str("… (cut)");
            break;
        }
        match c.is_control() {
            true => out.extend(c.escape_unicode()),
            false => out.push(c),
        }
    }
    out
}

/// Reads a buffer the plugin filled and hands it back to the plugin.
fn take(descriptor: &Descriptor, buffer: Buffer) -> Option<String> {
    if buffer.ptr.is_null() {
        return None;
    }
    // SAFETY: the plugin filled `len` bytes at `ptr`.
    let bytes = unsafe {
        Bytes {
            ptr: buffer.ptr,
            len: buffer.len,
        }
        .as_slice()
    };
    let text = bounded_text(bytes);
    if let Some(free) = descriptor.free_buffer {
        // SAFETY: the plugin's own buffer, returned once.
        unsafe { free(buffer) };
    }
    Some(text)
}

/// How long a hook call runs before the node counts it stuck (not ready).
pub const STUCK: Duration = Duration::from_secs(10);

/// Blocks waiting for the `on_commit` hooks; beyond this the newest are dropped
/// (and counted) rather than letting a slow plugin hold memory or the node.
const COMMIT_QUEUE: usize = 1024;

/// The thread that feeds applied blocks to `on_commit`, off the commit path.
#[derive(Debug)]
struct CommitFeed {
    blocks: SyncSender<Arc<Block>>,
    thread: JoinHandle<()>,
}

/// The node's plugins, called in the order the config lists them.
#[derive(Debug, Default)]
pub struct Plugins {
    list: Arc<[Plugin]>,
    metrics: Arc<Metrics>,
    commits: Option<CommitFeed>,
}

impl Plugins {
    /// Loads every plugin in `configs`; the first that fails stops the lot.
    pub fn load(configs: &[PluginConfig], metrics: Arc<Metrics>) -> Result<Plugins, PluginError> {
        let list: Arc<[Plugin]> = configs
            .iter()
            .map(Plugin::load)
            .collect::<Result<Vec<_>, _>>()?
            .into();
        for plugin in list.iter() {
            tracing::info!(plugin = %plugin.fingerprint, path = %plugin.path.display(), "plugin loaded");
        }
        let commits = list
            .iter()
            .any(|p| p.descriptor.on_commit.is_some())
            .then(|| {
                let (blocks, queue) = sync_channel::<Arc<Block>>(COMMIT_QUEUE);
                let (list, metrics) = (Arc::clone(&list), Arc::clone(&metrics));
                let thread = std::thread::Builder::new()
                    .name("plugin-on-commit".into())
                    .spawn(move || {
                        for block in queue {
                            let encoded = block.encode();
                            for plugin in list.iter() {
                                plugin.on_commit(&encoded, &metrics);
                            }
                        }
                    })
                    .map_err(|error| PluginError::BadDescriptor {
                        path: PathBuf::from("<on_commit thread>"),
                        reason: error.to_string(),
                    })?;
                Ok::<_, PluginError>(CommitFeed { blocks, thread })
            })
            .transpose()?;
        Ok(Plugins {
            list,
            metrics,
            commits,
        })
    }

    /// Hands an applied block to the `on_commit` hooks, without waiting for them.
    pub fn committed(&self, block: &Arc<Block>) {
        let Some(feed) = &self.commits else {
            return;
        };
        if feed.blocks.try_send(Arc::clone(block)).is_err() {
            self.metrics.plugin_rejections.add("on_commit_dropped", 1);
            tracing::error!(
                height = block.header.height,
                "on_commit plugins are {COMMIT_QUEUE} blocks behind; this block skips them"
            );
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Each plugin's fingerprint, in order.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        self.list.iter().map(|p| p.fingerprint.clone()).collect()
    }

    /// The longest-running hook call, if one has run past [`STUCK`]: its plugin, its
    /// hook and how long. A hook that never returns holds what waits on it (a
    /// submit, the consensus thread) with no finished call to count.
    pub fn stuck(&self) -> Option<(String, &'static str, Duration)> {
        self.list
            .iter()
            .flat_map(|plugin| {
                let running = lock(&plugin.running);
                let name = plugin.fingerprint.name.clone();
                let calls: Vec<_> = running
                    .calls
                    .values()
                    .map(|(hook, at)| (*hook, at.elapsed()))
                    .collect();
                calls
                    .into_iter()
                    .map(move |(hook, took)| (name.clone(), hook, took))
            })
            .filter(|(_, _, took)| *took >= STUCK)
            .max_by_key(|(_, _, took)| *took)
    }

    /// The set as one line (the peer handshake carries it; members compare).
    pub fn fingerprint_line(&self) -> String {
        self.list
            .iter()
            .map(|p| p.fingerprint.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether some plugin judges client entries (has a `validate_entry` hook).
    pub fn judges_entries(&self) -> bool {
        self.list
            .iter()
            .any(|plugin| plugin.descriptor.validate_entry.is_some())
    }

    /// Asks every plugin's `validate_entry`; the first refusal wins. Membership
    /// changes are the admins' to sign, not the plugins' to judge: they pass.
    pub fn validate_entry(&self, entry: &Entry) -> Result<(), Rejection> {
        if self.list.is_empty() || entry.kind != crate::chain::EntryKind::Client {
            return Ok(());
        }
        let encoded = entry.encode();
        self.list
            .iter()
            .try_for_each(|plugin| plugin.validate_entry(&encoded, &self.metrics))
    }
}

/// The plugins as the chain's policy: a block passes when every plugin passes each
/// of its entries and then the block; the required difficulty is the highest any
/// plugin asks for.
impl Policy for Plugins {
    fn difficulty_window(&self) -> usize {
        self.list
            .iter()
            .filter(|p| p.descriptor.required_difficulty.is_some())
            .map(|p| p.descriptor.difficulty_window as usize)
            .max()
            .unwrap_or(0)
    }

    fn required_difficulty(&self, recent: &[Header]) -> Result<Option<u32>, String> {
        let mut required = None;
        for plugin in self.list.iter() {
            let asked = plugin
                .required_difficulty(recent, &self.metrics)
                .map_err(|rejection| rejection.to_string())?;
            required = required.max(asked);
        }
        Ok(required)
    }

    fn check_entry(&self, entry: &Entry) -> Result<(), String> {
        self.validate_entry(entry)
            .map_err(|rejection| rejection.to_string())
    }

    fn check_block(&self, block: &Block) -> Result<(), String> {
        if self.list.is_empty() {
            return Ok(());
        }
        // Client entries only, as at submit; the block hook sees every entry.
        let entries: Vec<Vec<u8>> = block
            .entries
            .iter()
            .filter(|entry| entry.kind == crate::chain::EntryKind::Client)
            .map(Entry::encode)
            .collect();
        let encoded = block.encode();
        for plugin in self.list.iter() {
            for entry in &entries {
                plugin
                    .validate_entry(entry, &self.metrics)
                    .map_err(|rejection| rejection.to_string())?;
            }
            plugin
                .validate_block(&encoded, &self.metrics)
                .map_err(|rejection| rejection.to_string())?;
        }
        Ok(())
    }
}

impl Drop for Plugins {
    /// Lets the `on_commit` thread finish what it holds before the plugins' state is
    /// destroyed (when the last reference to the list goes).
    fn drop(&mut self) {
        if let Some(CommitFeed { blocks, thread }) = self.commits.take() {
            drop(blocks);
            if thread.join().is_err() {
                tracing::error!("the on_commit thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reason reaches clients bounded, with control characters shown, not passed on.
    #[test]
    fn a_plugins_text_is_bounded_and_shows_control_characters() {
        assert_eq!(bounded_text(b"too long"), "too long");
        assert_eq!(
            bounded_text(b"bad\0\x1b[31mred\n"),
            "bad\\u{0}\\u{1b}[31mred\\u{a}"
        );
        let long = bounded_text(&[b'x'; 10 * MAX_TEXT]);
        assert!(
            long.len() < MAX_TEXT + 16 && long.ends_with("(cut)"),
            "{long}"
        );
        // Cut at a character, never inside one.
        let wide = bounded_text("é".repeat(MAX_TEXT).as_bytes());
        assert!(wide.starts_with("éé") && wide.ends_with("(cut)"));
    }
}
