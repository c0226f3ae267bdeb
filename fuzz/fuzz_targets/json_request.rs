#![no_main]
//! See fuzz/src/lib.rs, `check_json`, for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check_json(data));
