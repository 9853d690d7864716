//! The SDK as a host sees it: hooks called through the descriptor's C function
//! pointers with canonical encodings, answers and reasons read back, buffers freed.
#![allow(unsafe_code)]

use std::ffi::c_void;

use ledger_plugin_api::{
    descriptor, Buffer, Bytes, Descriptor, Entry, Header, Plugin, ABI_VERSION, HEADER_LEN,
    STATUS_FAILED, STATUS_OK, STATUS_REJECT,
};

/// Refuses entries longer than its configured limit; panics on the data "boom".
struct MaxLen(usize);

impl Plugin for MaxLen {
    const NAME: &'static std::ffi::CStr = c"max-len";
    const VERSION: &'static std::ffi::CStr = c"0.1.0";
    const DIFFICULTY_WINDOW: u32 = 2;

    fn init(config: &str) -> Result<Self, String> {
        config
            .trim()
            .parse()
            .map(MaxLen)
            .map_err(|_| format!("want a number, got {config:?}"))
    }

    fn required_difficulty(&self, recent: &[Header]) -> Result<u32, String> {
        Ok(recent.iter().map(|h| h.difficulty).sum())
    }

    fn validate_entry(&self, entry: &Entry<'_>) -> Result<(), String> {
        if entry.data == b"boom" {
            panic!("asked to explode");
        }
        if entry.data.len() > self.0 {
            return Err(format!("{} bytes, at most {}", entry.data.len(), self.0));
        }
        Ok(())
    }
}

static MAX_LEN: Descriptor = descriptor::<MaxLen>();

/// A plugin's state and descriptor, as a host holds them.
struct Loaded {
    descriptor: &'static Descriptor,
    state: *mut c_void,
}

impl Loaded {
    fn init(descriptor: &'static Descriptor, config: &str) -> Result<Loaded, String> {
        let mut state = std::ptr::null_mut();
        let mut error = Buffer::EMPTY;
        let init = descriptor.init.expect("init");
        // SAFETY: a valid config, state slot and error slot.
        let status = unsafe { init(Bytes::new(config.as_bytes()), &mut state, &mut error) };
        match status {
            STATUS_OK => Ok(Loaded { descriptor, state }),
            _ => Err(take(descriptor, error)),
        }
    }

    fn validate_entry(&self, entry: &[u8]) -> (i32, String) {
        let mut reason = Buffer::EMPTY;
        let hook = self.descriptor.validate_entry.expect("hook");
        // SAFETY: the state from init and a lent entry.
        let status = unsafe { hook(self.state, Bytes::new(entry), &mut reason) };
        (status, take(self.descriptor, reason))
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // SAFETY: the state from init, destroyed once.
        unsafe { (self.descriptor.destroy.expect("destroy"))(self.state) };
    }
}

/// Reads a plugin buffer and gives it back to the plugin.
fn take(descriptor: &Descriptor, buffer: Buffer) -> String {
    // SAFETY: the plugin filled `len` bytes at `ptr` (or left it empty).
    let text = unsafe {
        Bytes {
            ptr: buffer.ptr,
            len: buffer.len,
        }
        .as_slice()
    };
    let text = String::from_utf8_lossy(text).into_owned();
    // SAFETY: the plugin's own buffer, freed once.
    unsafe { (descriptor.free_buffer.expect("free"))(buffer) };
    text
}

fn entry(data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![1, 0];
    bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn header(height: u64, difficulty: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&[7; 32]);
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&1_000u64.to_be_bytes());
    bytes.extend_from_slice(&[8; 32]);
    bytes.extend_from_slice(&5u64.to_be_bytes());
    bytes.extend_from_slice(&[9; 32]);
    bytes.extend_from_slice(&difficulty.to_be_bytes());
    bytes.extend_from_slice(&42u64.to_be_bytes());
    bytes
}

#[test]
fn the_descriptor_says_who_the_plugin_is() {
    assert_eq!(MAX_LEN.abi_version, ABI_VERSION);
    assert_eq!(MAX_LEN.struct_size as usize, size_of::<Descriptor>());
    // SAFETY: static strings from the SDK.
    let (name, version) = unsafe { (MAX_LEN.name(), MAX_LEN.version()) };
    assert_eq!((name, version), (Some("max-len"), Some("0.1.0")));
    assert_eq!(MAX_LEN.difficulty_window, 2);
    assert!(MAX_LEN.required_difficulty.is_some() && MAX_LEN.validate_block.is_some());
}

#[test]
fn init_takes_the_config_and_reports_a_bad_one() {
    assert!(Loaded::init(&MAX_LEN, "4").is_ok());
    let error = Loaded::init(&MAX_LEN, "four").err().expect("refused");
    assert_eq!(error, "want a number, got \"four\"");
}

#[test]
fn entries_are_accepted_rejected_with_a_reason_and_panics_do_not_cross() {
    let plugin = Loaded::init(&MAX_LEN, "4").expect("init");
    assert_eq!(
        plugin.validate_entry(&entry(b"okay")),
        (STATUS_OK, String::new())
    );
    assert_eq!(
        plugin.validate_entry(&entry(b"too long")),
        (STATUS_REJECT, "8 bytes, at most 4".to_string())
    );
    assert_eq!(
        plugin.validate_entry(&entry(b"boom")),
        (
            STATUS_FAILED,
            "plugin panicked: asked to explode".to_string()
        )
    );
    // Bytes that are no entry fail with the decoder's reason; the plugin lives on.
    let (status, reason) = plugin.validate_entry(&[1, 0, 0, 0, 0, 9]);
    assert_eq!(
        (status, reason.as_str()),
        (STATUS_FAILED, "truncated encoding")
    );
    let mut trailing = entry(b"ok");
    trailing.push(0);
    assert_eq!(plugin.validate_entry(&trailing).1, "trailing bytes");
    assert_eq!(plugin.validate_entry(&entry(b"ok")).0, STATUS_OK);
}

#[test]
fn required_difficulty_reads_the_recent_headers() {
    let plugin = Loaded::init(&MAX_LEN, "4").expect("init");
    let mut headers = header(1, 3);
    headers.extend(header(2, 4));
    let hook = MAX_LEN.required_difficulty.expect("hook");
    let mut difficulty = 0;
    let mut error = Buffer::EMPTY;
    // SAFETY: the state from init, lent headers, writable out slots.
    let status = unsafe {
        hook(
            plugin.state,
            Bytes::new(&headers),
            &mut difficulty,
            &mut error,
        )
    };
    assert_eq!((status, difficulty), (STATUS_OK, 7));
    headers.pop();
    // SAFETY: as above.
    let status = unsafe {
        hook(
            plugin.state,
            Bytes::new(&headers),
            &mut difficulty,
            &mut error,
        )
    };
    assert_eq!(status, STATUS_FAILED);
    assert!(take(&MAX_LEN, error).contains("136"));
}

#[test]
fn views_decode_the_canonical_encodings() {
    let bytes = header(9, 16);
    let decoded = Header::decode(&bytes).expect("header");
    assert_eq!(
        (
            decoded.height,
            decoded.difficulty,
            decoded.nonce,
            decoded.log_size
        ),
        (9, 16, 42, 5)
    );
    assert!(Header::decode(&bytes[1..]).is_err());

    let mut signed = vec![1, 1];
    signed.extend_from_slice(&2u32.to_be_bytes());
    signed.extend_from_slice(b"hi");
    signed.extend_from_slice(&[3; 32]);
    signed.extend_from_slice(&[4; 64]);
    let entry_view = Entry::decode(&signed).expect("signed entry");
    assert_eq!(entry_view.data, b"hi");
    assert_eq!(entry_view.author.expect("author").public_key, &[3; 32]);
    signed[1] = 4;
    assert_eq!(
        Entry::decode(&signed),
        Err("unknown entry flags".to_string())
    );

    let mut list = 2u32.to_be_bytes().to_vec();
    list.extend(entry(b"a"));
    list.extend(entry(b"bc"));
    let entries = Entry::decode_list(&list).expect("list");
    assert_eq!(entries.len(), 2);
    // A count no bytes could hold is refused before allocating.
    assert!(Entry::decode_list(&u32::MAX.to_be_bytes()).is_err());
}

/// A difficulty policy alone: its descriptor leaves the other hooks null.
struct OnlyDifficulty;

impl Plugin for OnlyDifficulty {
    const NAME: &'static std::ffi::CStr = c"only-difficulty";
    const VERSION: &'static std::ffi::CStr = c"1";
    const DIFFICULTY_WINDOW: u32 = 1;
    const HOOKS: ledger_plugin_api::Hooks = ledger_plugin_api::Hooks::NONE;

    fn init(_config: &str) -> Result<Self, String> {
        Ok(OnlyDifficulty)
    }
}

#[test]
fn hooks_a_plugin_does_not_name_are_null() {
    let only = descriptor::<OnlyDifficulty>();
    assert!(only.required_difficulty.is_some());
    assert!(only.validate_entry.is_none() && only.validate_block.is_none());
    assert!(only.on_commit.is_none());
    assert!(only.init.is_some() && only.destroy.is_some() && only.free_buffer.is_some());
}

/// The views read every entry the node's format has: a client's, authored or not,
/// and a membership change (flag bit 1, never authored); other flags are refused.
/// (Found by the `plugin_views` fuzz target: the views refused membership changes.)
#[test]
fn entry_views_read_membership_changes() {
    let change = [1, 2, 0, 0, 0, 1, 7];
    let view = Entry::decode(&change).expect("a membership change");
    assert!(view.reconfiguration && view.author.is_none());
    assert_eq!(view.data, &[7]);
    let encoded = entry(b"x");
    let client = Entry::decode(&encoded).expect("a client's entry");
    assert!(!client.reconfiguration);
    assert!(Entry::decode(&[1, 3, 0, 0, 0, 0]).is_err());
    assert!(Entry::decode(&[1, 4, 0, 0, 0, 0]).is_err());
}
