//! Multi-document YAML rewriting (owned by the injection-core work).
