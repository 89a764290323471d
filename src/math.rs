//! The binary's own floating-point math: the functions that std's `f64` methods and the
//! dependencies call by their C names, defined here by the `libm` crate (a Rust port of musl's
//! libm) instead of found in glibc's `libm.so.6`.
//!
//! Why: with every caller resolved inside the binary the linker drops `libm.so.6` (rustc links
//! with `--as-needed`), and an agent no longer maps it. The six functions below were all an
//! agent used of it (suspicion and flood sizes, the metrics' summaries and their rendering), yet
//! the library cost every agent ~0.5 MiB of resident pages: its relocations and symbols read at
//! start, and a 64 KB window of its text around each function touched (BENCHMARKS.md, "Memory
//! of one idle agent"). musl's functions also give the same bits on every host, where glibc's
//! may change in the last bit between versions.
//!
//! A caller of any other libm function would bring `libm.so.6` back; `tests/footprint.rs`
//! fails if a running agent maps it, naming the function to add here.

/// `ln(x)`.
#[unsafe(no_mangle)]
pub extern "C" fn log(x: f64) -> f64 {
    libm::log(x)
}

/// `ln(1 + x)`, exact for small `x`.
#[unsafe(no_mangle)]
pub extern "C" fn log1p(x: f64) -> f64 {
    libm::log1p(x)
}

/// `log2(x)`.
#[unsafe(no_mangle)]
pub extern "C" fn log2(x: f64) -> f64 {
    libm::log2(x)
}

/// `log10(x)`.
#[unsafe(no_mangle)]
pub extern "C" fn log10(x: f64) -> f64 {
    libm::log10(x)
}

/// `e^x`.
#[unsafe(no_mangle)]
pub extern "C" fn exp(x: f64) -> f64 {
    libm::exp(x)
}

/// `x^y`.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// Each function is wired to its own: std's methods resolve to these very functions,
        /// so they are checked against each other by identities that hold to rounding.
        #[test]
        fn the_functions_agree_with_their_identities(x in 1e-300f64..1e300, y in -20f64..20.0) {
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0);
            prop_assert!(close(super::exp(super::log(x)), x));
            prop_assert!(close(super::log2(x), super::log(x) / std::f64::consts::LN_2));
            prop_assert!(close(super::log10(x), super::log(x) / std::f64::consts::LN_10));
            prop_assert!(close(super::log1p(x), super::log(1.0 + x)) || x < 1e-3);
            let base = x.min(1e10);
            let p = super::pow(base, y);
            prop_assert!(!p.is_normal() || close(super::log(p), y * super::log(base)));
        }
    }

    #[test]
    fn exact_powers_stay_exact() {
        // foca sizes a suspicion by log10 of the cluster size; a power of ten must not round
        // down to one integer less.
        assert_eq!(super::log10(1000.0), 3.0);
        assert_eq!(super::log2(1024.0), 10.0);
        assert_eq!(super::pow(10.0, 3.0), 1000.0);
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::log(1.0), 0.0);
        assert_eq!(super::log1p(1e-20), 1e-20);
    }
}
