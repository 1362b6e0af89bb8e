//! Fuzz target: densegpu_fuzz::init (see src/lib.rs). `cargo +nightly fuzz run init` from fuzz/.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    densegpu_fuzz::init(bytes);
});
