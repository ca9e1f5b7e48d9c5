//! Injection config (owned by the injection-core work).
