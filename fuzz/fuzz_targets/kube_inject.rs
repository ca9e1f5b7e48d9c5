//! Multi-document YAML -> kube-inject / kube-uninject; see mesh_fuzz::kube_inject.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mesh_fuzz::kube_inject::check(data));
