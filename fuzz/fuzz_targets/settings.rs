#![no_main]
//! See fuzz/src/lib.rs, `check_settings`, for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check_settings(data));
