//! Fuzz target: densegpu_fuzz::cifar (see src/lib.rs). `cargo +nightly fuzz run cifar` from fuzz/.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    densegpu_fuzz::cifar(bytes);
});
