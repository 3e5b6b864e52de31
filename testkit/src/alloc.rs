//! The allocation checks shared by the fuzzer (`crate::fuzz`, run by
//! examples/fuzz and tests/fuzz_wire.rs) and the wire property tests
//! (tests/wire_props.rs): a global allocator that records, per thread, the
//! largest single request made while the probe is armed, so "decoding never
//! allocates beyond the limits" is measured, not assumed; and
//! [`check_bounded`], the size check of a decoded message.
//! A binary installs it with
//! `#[global_allocator] static GLOBAL: PeakAlloc = PeakAlloc;`.
//!
//! Why `unsafe` is allowed here: `GlobalAlloc` is an unsafe trait. This is
//! the only module of the testkit (and of the project) that uses it; every
//! method forwards to `System` unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use p2pfs::wire::{self, FileOutcome, Have, Message};

/// The system allocator plus a per-thread record of the largest single
/// request made while the thread's probe is armed.
pub struct PeakAlloc;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: no panic during thread teardown; const thread-locals without
    // destructors never allocate, so this cannot recurse.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

// SAFETY: every method forwards to `System` unchanged; `note` only touches
// thread-local Cells and never allocates.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the largest single allocation this
/// thread requested while it ran.
pub fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (r, PEAK.with(Cell::get))
}

/// Every heap field of a decoded message holds no more than its frame
/// carried, and every list no more items than the frame has room for.
pub fn check_bounded(m: &Message, len: usize) -> Result<(), String> {
    let mut content = 0usize;
    let mut items_ok = true;
    match m {
        Message::Error { message, .. } => content += message.len(),
        Message::Register { files, .. } => {
            items_ok = files.len() * (2 + 8 + 4 + 4 + 1) <= len;
            for f in files {
                content += f.name.len() + f.hashes.len() * wire::DIGEST_LEN;
                if let Have::Some(bits) = &f.have {
                    content += bits.len();
                }
            }
        }
        Message::RegisterReply { results } => {
            items_ok = results.len() * 2 <= len;
            for x in results {
                if let FileOutcome::Refused { reason, .. } = x {
                    content += reason.len();
                }
            }
        }
        Message::FileList { files, .. } => {
            items_ok = files.len() * 10 <= len;
            content += files.iter().map(|f| f.name.len()).sum::<usize>();
        }
        Message::Locate { name, .. }
        | Message::ChunkRegister { name, .. }
        | Message::ChunkRequest { name, .. }
        | Message::Withdraw { name } => content += name.len(),
        Message::Locations(l) => {
            items_ok = l.sources.len() * 7 <= len;
            content += l.name.len();
            content += l.hashes.as_ref().map_or(0, |h| h.len() * wire::DIGEST_LEN);
            content += l.sources.iter().map(|s| s.have.len()).sum::<usize>();
        }
        Message::ChunkData { data, .. } => content += data.len(),
        Message::Hello { .. }
        | Message::Ok
        | Message::Keepalive
        | Message::ListFiles
        | Message::Leave => {}
    }
    if !items_ok || content > len {
        return Err(format!(
            "{} decoded from a {len}-byte frame holds {content} bytes (or too many items)",
            m.kind()
        ));
    }
    Ok(())
}
