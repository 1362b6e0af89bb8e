//! Fuzz target: densegpu_fuzz::kernel_cache (see src/lib.rs). `cargo +nightly fuzz run kernel_cache` from fuzz/.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    densegpu_fuzz::kernel_cache(bytes);
});
