//! Fuzz target: densegpu_fuzz::safetensors (see src/lib.rs). `cargo +nightly fuzz run safetensors` from fuzz/.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    densegpu_fuzz::safetensors(bytes);
});
