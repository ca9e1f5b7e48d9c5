//! The core's one error type: a pod that cannot be injected as asked.

/// A pod that cannot be injected as asked. `Display` names the annotation or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {annotation}: invalid value {value:?}: {reason}")]
    InvalidAnnotation {
        annotation: String,
        value: String,
        reason: String,
    },
    #[error("invalid pod: {field}: {reason}")]
    InvalidPod { field: String, reason: String },
    /// A gateway asked for where the injection config gives it nothing to run with.
    #[error("cannot inject a gateway: {reason}")]
    Gateway { reason: String },
}
