//! Shared harness for the cross-crate integration tests.
//!
//! Tests in this crate need root, `ip` (iproute2) and the `iptables` tools. They never
//! skip: a run without them fails with a message that names what is missing, because a
//! silently skipped data-path test is worse than a red one. CI runs them as root after
//! installing the tools (`.ci/run`).

pub mod bins;
pub mod init_support;
pub mod netns;
pub mod proxy_support;

/// The arguments the injector gives `istio-init` (shared/design.md, injection contract):
/// the whole-path tests install exactly what a real pod gets.
pub const INJECTED_INIT_ARGS: [&str; 16] = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021",
];
