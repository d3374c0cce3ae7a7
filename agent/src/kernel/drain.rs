//! Reading the ring buffer: records are handed to the caller in the order the kernel
//! wrote them, up to a budget per call so the event loop keeps looking at its timers.

use aya::maps::{MapData, RingBuf};

/// Records handled per call before the event loop looks at its timers again.
pub const DRAIN_BUDGET: usize = 16 * 1024;

/// What one call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    pub records: usize,
    /// The ring was emptied (false: the budget ran out first).
    pub emptied: bool,
}

/// Hands up to [`DRAIN_BUDGET`] records to `handle`.
pub fn drain(ring: &mut RingBuf<MapData>, mut handle: impl FnMut(&[u8])) -> Drained {
    for records in 0..DRAIN_BUDGET {
        match ring.next() {
            Some(item) => handle(&item),
            None => {
                return Drained {
                    records,
                    emptied: true,
                }
            }
        }
    }
    Drained {
        records: DRAIN_BUDGET,
        emptied: false,
    }
}
