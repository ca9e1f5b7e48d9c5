//! mesh-webhook: the injection core shared by the HTTPS admission webhook and the offline
//! `kube-inject` command, so the two entry points can never disagree.
#![forbid(unsafe_code)]

pub mod admission;
pub mod bootstrap;
pub mod cli;
pub mod commands;
pub mod config;
pub mod inject;
pub mod kube_inject;
pub mod proxy_config;
pub mod quantity;
pub mod workloads;
pub mod yaml;
