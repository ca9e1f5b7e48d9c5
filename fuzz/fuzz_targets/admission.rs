//! AdmissionReview body -> the handler behind `POST /inject`; see mesh_fuzz::admission.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: mesh_fuzz::seeds::write_from_env(),
    |data: &[u8]| mesh_fuzz::admission::check(data)
);
