//! Shared harness for the cross-crate integration tests.
//!
//! Tests in this crate need root, `ip` (iproute2) and the `iptables` tools. They never
//! skip: a run without them fails with a message that names what is missing, because a
//! silently skipped data-path test is worse than a red one. CI runs them as root after
//! installing the tools (`.ci/run`).

pub mod bins;
pub mod init_support;
pub mod kube_node;
pub mod netns;
pub mod proxy_support;
