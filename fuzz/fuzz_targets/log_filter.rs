//! The log-filter grammar; see mesh_fuzz::grammar.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mesh_fuzz::grammar::check_log_filter(data));
