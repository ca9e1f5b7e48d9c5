//! The injection core (owned by the injection-core work).
