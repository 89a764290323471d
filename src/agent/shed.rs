//! Sheds the pages of code and constants an agent mapped while starting, once it has started.
//!
//! The kernel maps a file's pages 64 KB at a time around each page touched (fault-around),
//! and an agent keeps mapped whatever it read once: the code and constants that parsed its
//! flags (clap's tree of every subcommand), its configuration, the first certificates, the
//! dynamic loader's work. Once the agent runs, it drops its page-table entries for every
//! read-only file mapping that holds no page of its own (the binary's code and constants,
//! libc's, the loader's): what it runs from then on faults back in from the page cache, a
//! minor fault each, and the rest leaves its resident set. `link/hot-text.ld` places the
//! functions an idle agent runs before those it ran only to start, so that what faults back
//! is a few contiguous windows. Nothing is lost: such pages were never written, so each one
//! is the file's, as the page cache holds it, which is what the kernel relies on when it
//! reclaims them under memory pressure.

use std::ffi::c_void;
use std::ptr::NonNull;

/// The read-only, file-backed mappings of this process that hold no page of its own, as
/// (start, length), from `/proc/self/smaps`: code and constant data.
fn file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some(anonymous) = line.strip_prefix("Anonymous:") {
            // A page of its own (copy-on-write: relocated data, a debugger's breakpoint) would
            // go back to the file's content: such a mapping is left alone.
            let kb = anonymous.trim().trim_end_matches("kB").trim();
            if kb == "0" {
                found.extend(current.take());
            }
            current = None;
        } else if let Some((start, end)) = first.split_once('-') {
            current = None;
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            if !(perms == "r-xp" || perms == "r--p") || !path.starts_with('/') {
                continue;
            }
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            current = end.checked_sub(start).map(|len| (start, len));
        }
    }
    found
}

/// Drops this process's page-table entries for its read-only file mappings that hold no page
/// of its own; returns the bytes of mappings advised. Errors are logged, never fatal: this
/// only saves memory.
pub fn shed_startup_code() -> usize {
    let smaps = match std::fs::read_to_string("/proc/self/smaps") {
        Ok(smaps) => smaps,
        Err(err) => {
            tracing::debug!(%err, "cannot read /proc/self/smaps; start-up code stays mapped");
            return 0;
        }
    };
    let mut shed = 0;
    for (start, len) in file_mappings(&smaps) {
        let Some(addr) = NonNull::new(start as *mut c_void) else {
            continue;
        };
        // SAFETY: `addr..addr + len` is a whole mapping of this process, read-only, backed by
        // a file, with no page of its own (so none can be written until it is remapped):
        // MADV_DONTNEED only removes its page-table entries, and the next access maps the same
        // page of the file again. It holds code and constants, no Rust object that could move.
        let advised = unsafe {
            nix::sys::mman::madvise(addr, len, nix::sys::mman::MmapAdvise::MADV_DONTNEED)
        };
        match advised {
            Ok(()) => shed += len,
            Err(err) => tracing::debug!(%err, start, len, "madvise(MADV_DONTNEED) of code"),
        }
    }
    shed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapping of `/proc/self/smaps`, the fields this module reads among others.
    fn mapping(header: &str, anonymous_kb: u32) -> String {
        format!("{header}\nSize: 8 kB\nRss: 4 kB\nAnonymous: {anonymous_kb} kB\nVmFlags: rd mr\n")
    }

    #[test]
    fn only_read_only_file_mappings_with_no_page_of_their_own_are_taken() {
        let smaps = [
            mapping(
                "55d0c4a00000-55d0c4c5c000 r--p 00000000 08:01 1234 /usr/bin/murmur",
                0,
            ),
            mapping(
                "55d0c4c5c000-55d0c5794000 r-xp 0025c000 08:01 1234 /usr/bin/murmur",
                0,
            ),
            // Relocated at start: pages of its own.
            mapping(
                "55d0c5794000-55d0c57ef000 r--p 00d94000 08:01 1234 /usr/bin/murmur",
                352,
            ),
            mapping(
                "55d0c57ef000-55d0c57f3000 rw-p 00def000 08:01 1234 /usr/bin/murmur",
                0,
            ),
            mapping(
                "55d0c6000000-55d0c60a6000 rw-p 00000000 00:00 0 [heap]",
                600,
            ),
            mapping(
                "7f0000000000-7f0000156000 r-xp 00028000 08:01 99 /usr/lib/libc.so.6",
                0,
            ),
            mapping(
                "7f0000200000-7f0000210000 rw-s 00000000 08:01 98 /dev/shm/x",
                0,
            ),
            mapping("7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]", 0),
            mapping("7ffd00010000-7ffd00011000 r--p 00000000 00:00 0 ", 0),
        ]
        .concat();
        assert_eq!(
            file_mappings(&smaps),
            vec![
                (0x55d0c4a00000, 0x55d0c4c5c000 - 0x55d0c4a00000),
                (0x55d0c4c5c000, 0x55d0c5794000 - 0x55d0c4c5c000),
                (0x7f0000000000, 0x156000),
            ]
        );
    }

    #[test]
    fn code_and_constants_are_there_after_they_were_shed() {
        assert!(shed_startup_code() > 0, "a test binary maps its own code");
        // This very function, std's formatting, its constants and the allocator fault back in.
        assert_eq!(format!("{:?}", ("forty-two", 6 * 7)), "(\"forty-two\", 42)");
    }
}
