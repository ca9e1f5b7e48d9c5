//! The istio-iptables list grammar against mesh-init; see mesh_fuzz::grammar.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mesh_fuzz::grammar::check_lists(data));
