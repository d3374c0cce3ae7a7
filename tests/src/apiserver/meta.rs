//! Values the server invents: uids, timestamps in the API's RFC 3339 form, suffixes for
//! `generateName`, and the hex encoding that keeps continue tokens opaque.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 64 random bits: `RandomState` is seeded from the OS per instance, and the counter
/// keeps two calls in the same instant apart.
fn random_u64() -> u64 {
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A version-4 style UUID, as the API server assigns to `metadata.uid`.
pub(crate) fn new_uid() -> String {
    let hi = random_u64();
    let lo = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0x0fff,
        0x8000 | (lo >> 48) & 0x3fff,
        lo & 0xffff_ffff_ffff
    )
}

/// Now plus `seconds`, in the whole-second UTC form of `meta/v1` `Time`.
pub(crate) fn timestamp_in(seconds: i64) -> String {
    let now = Timestamp::now();
    let at = now
        .checked_add(SignedDuration::from_secs(seconds))
        .unwrap_or(now);
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The five characters the real server appends to `generateName`.
pub(crate) fn name_suffix() -> String {
    // The real alphabet leaves out vowels and look-alike digits so that no word appears.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bits = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize];
            bits /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
