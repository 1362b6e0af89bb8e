//! Fuzz target: densegpu_fuzz::checkpoint (see src/lib.rs). `cargo +nightly fuzz run checkpoint` from fuzz/.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    densegpu_fuzz::checkpoint(bytes);
});
