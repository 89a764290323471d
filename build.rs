//! Link options of release builds on Linux, both for the resident memory of an agent: every
//! agent maps the whole binary, and the kernel maps its file pages 64 KB at a time around each
//! page touched (fault-around).
//!
//! - `link/hot-text.ld` (made by `bench/hot_functions.sh`) places the functions an agent runs
//!   together at the start of the text, so that an agent touches a few contiguous pages of it
//!   instead of some in most 64 KB windows of 11 MB.
//! - `-z pack-relative-relocs` stores the ~21,000 pointers the loader relocates at start (the
//!   binary is position-independent) as bitmaps (RELR, glibc 2.36 and later) instead of
//!   24-byte entries: 500 KB less that every agent reads and keeps mapped.

fn main() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-text.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if release && linux {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
