//! The one log-filter grammar: what the injection config's `proxyLogLevel` and the
//! `sidecar.istio.io/logLevel` annotation may say, what the injector validates, and what
//! `mesh-proxy --log-level` / `MESH_PROXY_LOG` accepts.
//!
//! ```text
//! filter    = directive *("," directive)
//! directive = level | target "=" level
//! level     = trace | debug | info | warn | warning | error | critical | off   (any case)
//! target    = a Rust module path: letters, digits, `_` and `::`
//! ```
//!
//! A bare level sets the default (at most one; `warn` when absent). Istio's and Envoy's
//! spellings (`warning`, `critical`) are accepted, so values written for Istio's sidecar
//! keep working. Items are trimmed; empty items are ignored; an empty filter is an error.

use std::fmt;
use std::str::FromStr;

/// A verbosity, from quietest to loudest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    /// Every level, quietest first.
    pub const ALL: [Level; 6] = [
        Level::Off,
        Level::Error,
        Level::Warn,
        Level::Info,
        Level::Debug,
        Level::Trace,
    ];

    /// The canonical spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    /// Parses one level, with Istio's and Envoy's aliases (`warning`, `critical`).
    pub fn parse(s: &str) -> Option<Level> {
        let level = match s.trim().to_ascii_lowercase().as_str() {
            "off" => Level::Off,
            "error" | "critical" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return None,
        };
        Some(level)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The level used when a filter names none.
pub const DEFAULT_LEVEL: Level = Level::Warn;

/// A parsed filter: a default level and per-target levels, in the order written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFilter {
    pub default: Level,
    pub targets: Vec<(String, Level)>,
}

impl Default for LogFilter {
    fn default() -> Self {
        LogFilter {
            default: DEFAULT_LEVEL,
            targets: Vec::new(),
        }
    }
}

/// Why a filter cannot be used; the caller names where it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogFilterError {
    #[error("empty log filter (expected a level such as `info`, or `warn,mesh_proxy=debug`)")]
    Empty,
    #[error("`{0}` is not a log level (trace, debug, info, warn|warning, error|critical, off)")]
    Level(String),
    #[error("`{0}` is not a log target (a module path such as mesh_proxy or mesh_proxy::admin)")]
    Target(String),
    #[error("two default levels, `{0}` and `{1}`: give at most one bare level")]
    TwoDefaults(String, String),
}

fn valid_target(t: &str) -> bool {
    !t.is_empty()
        && t.split("::").all(|seg| {
            !seg.is_empty()
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !seg.as_bytes()[0].is_ascii_digit()
        })
}

impl LogFilter {
    /// Parses a filter (see the module docs for the grammar).
    pub fn parse(s: &str) -> Result<LogFilter, LogFilterError> {
        let mut default: Option<(Level, &str)> = None;
        let mut targets = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some((target, level)) => {
                    let target = target.trim();
                    if !valid_target(target) {
                        return Err(LogFilterError::Target(target.to_owned()));
                    }
                    let level = Level::parse(level)
                        .ok_or_else(|| LogFilterError::Level(level.trim().to_owned()))?;
                    targets.push((target.to_owned(), level));
                }
                None => {
                    let level =
                        Level::parse(item).ok_or_else(|| LogFilterError::Level(item.to_owned()))?;
                    if let Some((_, first)) = default {
                        return Err(LogFilterError::TwoDefaults(
                            first.to_owned(),
                            item.to_owned(),
                        ));
                    }
                    default = Some((level, item));
                }
            }
        }
        if default.is_none() && targets.is_empty() {
            return Err(LogFilterError::Empty);
        }
        Ok(LogFilter {
            default: default.map_or(DEFAULT_LEVEL, |(l, _)| l),
            targets,
        })
    }

    /// The loudest level anything may log at (for a cheap global cap).
    pub fn max_level(&self) -> Level {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, Ord::max)
    }
}

impl FromStr for LogFilter {
    type Err = LogFilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogFilter::parse(s)
    }
}

/// The canonical form: the default level, then `target=level` directives.
impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.default.as_str())?;
        for (t, l) in &self.targets {
            write!(f, ",{t}={l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_istio_aliases() {
        let p = |s: &str| LogFilter::parse(s).map(|f| f.default);
        assert_eq!(p("info"), Ok(Level::Info));
        assert_eq!(p(" WARNING "), Ok(Level::Warn));
        assert_eq!(p("critical"), Ok(Level::Error));
        assert_eq!(p("off"), Ok(Level::Off));
        assert_eq!(p("trace"), Ok(Level::Trace));
    }

    #[test]
    fn directives() {
        let f = LogFilter::parse("info,mesh_proxy=debug, mesh_proxy::admin = trace").unwrap();
        assert_eq!(f.default, Level::Info);
        assert_eq!(
            f.targets,
            vec![
                ("mesh_proxy".to_owned(), Level::Debug),
                ("mesh_proxy::admin".to_owned(), Level::Trace)
            ]
        );
        assert_eq!(
            f.to_string(),
            "info,mesh_proxy=debug,mesh_proxy::admin=trace"
        );
        assert_eq!(f.max_level(), Level::Trace);
        let only = LogFilter::parse("mesh_proxy=debug").unwrap();
        assert_eq!(only.default, DEFAULT_LEVEL);
        assert_eq!(LogFilter::parse(&only.to_string()), Ok(only));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(LogFilter::parse(""), Err(LogFilterError::Empty));
        assert_eq!(LogFilter::parse(" , "), Err(LogFilterError::Empty));
        assert_eq!(
            LogFilter::parse("loud"),
            Err(LogFilterError::Level("loud".into()))
        );
        assert_eq!(
            LogFilter::parse("mesh_proxy=loud"),
            Err(LogFilterError::Level("loud".into()))
        );
        assert_eq!(
            LogFilter::parse("mesh-proxy=info"),
            Err(LogFilterError::Target("mesh-proxy".into()))
        );
        assert_eq!(
            LogFilter::parse("a:::b=info"),
            Err(LogFilterError::Target("a:::b".into()))
        );
        assert_eq!(
            LogFilter::parse("info,debug"),
            Err(LogFilterError::TwoDefaults("info".into(), "debug".into()))
        );
        // RUST_LOG's span and regex syntax is not part of the grammar.
        assert!(LogFilter::parse("mesh_proxy[conn]=debug").is_err());
        assert!(LogFilter::parse("info/foo").is_err());
    }
}
