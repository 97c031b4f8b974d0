#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snapback_fuzz::sealed(data));
