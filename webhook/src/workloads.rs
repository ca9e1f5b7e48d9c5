//! Pod templates inside workload kinds (owned by the injection-core work).
