//! Reading the ring buffer: records are handed to the caller in the order the kernel
//! wrote them, up to a budget per call so the event loop keeps looking at its timers.

use aya::maps::{MapData, RingBuf};

/// Records handled per call before the event loop looks at its timers again.
pub const DRAIN_BUDGET: usize = 16 * 1024;

/// Hands up to [`DRAIN_BUDGET`] records to `handle`; true when the ring was emptied.
pub fn drain(ring: &mut RingBuf<MapData>, mut handle: impl FnMut(&[u8])) -> bool {
    for _ in 0..DRAIN_BUDGET {
        match ring.next() {
            Some(item) => handle(&item),
            None => return true,
        }
    }
    false
}
