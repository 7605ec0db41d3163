//! Read-through loading and resilience: per-upstream circuit breakers,
//! single-flight loading, stale-while-revalidate and stale-if-error,
//! adaptive TTLs, refresh and learned preloading. See docs/LOADING.md.

mod adaptive;
#[cfg(feature = "async")]
mod async_loader;
mod breaker;
mod histogram;
mod loader;
mod preload;
mod single_flight;
mod state;
mod stats;

pub use adaptive::LoadPolicy;
pub use breaker::{
    BreakerConfig, BreakerConfigError, BreakerMetrics, BreakerOpen, BreakerSnapshot, BreakerState,
    CallError, CallOutcome, CircuitBreaker, Permit, breaker_metrics_text,
};
pub use loader::{
    BatchLoaded, LoadError, Loaded, Lookup, NEGATIVE_SUFFIX, Origin, RefreshReport, StaleReason,
};
pub use preload::{Refresher, RefresherConfig};
pub use stats::{LoadStats, NamespaceLoadStats};

pub(crate) use state::LoadState;
