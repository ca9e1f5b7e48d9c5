//! Logging: the mesh's one log-filter grammar ([`mesh_common::log`]) turned into the
//! process's tracing subscriber. The filter is `tracing_subscriber`'s [`Targets`]
//! (prefix match on the target, most specific directive wins), not `EnvFilter`,
//! whose regex and span-field machinery would cost the sidecar binary size and memory.

use mesh_common::log::{Level, LogFilter};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The `tracing` filter for one level.
pub fn level_filter(level: Level) -> LevelFilter {
    match level {
        Level::Off => LevelFilter::OFF,
        Level::Error => LevelFilter::ERROR,
        Level::Warn => LevelFilter::WARN,
        Level::Info => LevelFilter::INFO,
        Level::Debug => LevelFilter::DEBUG,
        Level::Trace => LevelFilter::TRACE,
    }
}

/// The per-target filter `filter` describes.
pub fn targets(filter: &LogFilter) -> Targets {
    filter.targets.iter().fold(
        Targets::new().with_default(level_filter(filter.default)),
        |t, (target, level)| t.with_target(target.clone(), level_filter(*level)),
    )
}

/// Installs the process's subscriber: human-readable lines on stderr, filtered by
/// `filter`. Call once, first thing.
pub fn init(filter: &LogFilter) {
    tracing_subscriber::fmt()
        // The cheap global cap: callsites louder than any directive are never asked.
        .with_max_level(level_filter(filter.max_level()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .finish()
        .with(targets(filter))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level as T;

    #[test]
    fn directives_become_targets() {
        let t = targets(&LogFilter::parse("warn,mesh_proxy=debug,mesh_proxy::admin=off").unwrap());
        assert!(t.would_enable("mesh_proxy::flow::outbound", &T::DEBUG));
        assert!(!t.would_enable("mesh_proxy::flow::outbound", &T::TRACE));
        assert!(!t.would_enable("mesh_proxy::admin", &T::ERROR));
        assert!(t.would_enable("tokio::net", &T::WARN));
        assert!(!t.would_enable("tokio::net", &T::INFO));
        let off = targets(&LogFilter::parse("off").unwrap());
        assert!(!off.would_enable("mesh_proxy", &T::ERROR));
    }

    #[test]
    fn every_level_maps() {
        for l in Level::ALL {
            assert_eq!(level_filter(l).to_string(), l.as_str());
        }
    }
}
