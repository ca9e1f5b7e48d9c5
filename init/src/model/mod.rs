//! Typed capture settings, and the nat rules they stand for.
//!
//! Flags arrive as istio-iptables strings; [`Settings::from_flags`] ([`settings`])
//! validates them once (every error names its flag) and [`Settings::ruleset`] (`build`)
//! turns them into a per-family list of typed rules, in the vocabulary of [`rules`].
//! Rendering (`render.rs`) prints those rules and `explain.rs` evaluates them, so what an
//! operator is told and what the kernel runs cannot drift.
//!
//! Everything is re-exported here, so `mesh_init::model::{Settings, Family, ...}` keep
//! working.

mod build;
pub mod rules;
pub mod settings;

pub use rules::{
    Family, Match, OUR_CHAINS, OUR_RAW_CHAINS, RULE_COMMENT, Rule, Ruleset, Table, Target,
};
pub use settings::{CidrSet, FlagName, Flags, ModelError, PortSet, Settings};
