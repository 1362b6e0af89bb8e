//! Fuzz target: densegpu_fuzz::image (see src/lib.rs). `cargo +nightly fuzz run image` from fuzz/.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    densegpu_fuzz::image(bytes);
});
