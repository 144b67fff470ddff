//! The process's log output: JSON lines on stdout (the default; `json_lines.rs`, the shape
//! of `tracing-subscriber`'s json format with fields flattened), or compact human lines with `PALISADE_LOG_FORMAT=text`
//! (what `palisade dev` uses on a terminal). Level from `PALISADE_LOG` or `RUST_LOG`
//! (default `info`).
//!
//! When logs are exported, a routing layer hands each event to the OTLP logger of the
//! service it belongs to: the service registered for its `node` field (events of the
//! controller's crate excepted), else the default service. In the log record the trace and span ids are those of the OpenTelemetry
//! context current when the event is emitted (the audit record is emitted inside its
//! `ws.handshake` span). Events of the export machinery itself (`opentelemetry`, `h2`,
//! `hyper`, `tonic`, `tower` targets) are never exported, so an export problem cannot
//! feed itself.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};

use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use super::LogRoute;
use super::batched::BatchedStdout;
pub use super::batched::flush;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `PALISADE_LOG_FORMAT` (`json` or `text`); without it JSON, except for `palisade
    /// dev` writing to a terminal (`interactive`).
    pub fn from_env(interactive: bool) -> LogFormat {
        match std::env::var("PALISADE_LOG_FORMAT").ok().as_deref().map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("text") => LogFormat::Text,
            Some(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            _ if interactive && std::io::stdout().is_terminal() => LogFormat::Text,
            _ => LogFormat::Json,
        }
    }
}

/// Installs the process's subscriber: the filter, stdout in `format` (written in batches:
/// `batched.rs`; call [`flush`] before the process exits), and (with
/// `export_logs`) the routing layer to the services' OTLP loggers. Once per process;
/// later calls do nothing.
pub fn init_logging(format: LogFormat, export_logs: bool) {
    let filter =
        EnvFilter::try_from_env("PALISADE_LOG").or_else(|_| EnvFilter::try_from_default_env()).unwrap_or_else(|_| EnvFilter::new("info"));
    let stdout = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer().event_format(super::json_lines::JsonLines).with_writer(BatchedStdout).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().compact().with_target(false).with_writer(BatchedStdout).boxed(),
    };
    super::batched::flush_on_panic();
    let route = export_logs.then_some(RouterLayer);
    let _ = tracing_subscriber::registry().with(filter).with(stdout).with(route).try_init();
}

type Bridge = OpenTelemetryTracingBridge<SdkLoggerProvider, SdkLogger>;

#[derive(Default)]
struct Router {
    active: AtomicBool,
    by_node: RwLock<HashMap<String, Bridge>>,
    default: RwLock<Option<(LogRoute, Bridge)>>,
}

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(Router::default)
}

/// Sends the events of `route` to `provider`'s logger. A node also takes the default
/// events until a [`LogRoute::Default`] service (the controller) claims them.
pub(super) fn register(route: &LogRoute, provider: &SdkLoggerProvider) {
    let r = router();
    let mut default = r.default.write().unwrap_or_else(|p| p.into_inner());
    match route {
        LogRoute::Default => *default = Some((LogRoute::Default, Bridge::new(provider))),
        LogRoute::Node(id) => {
            r.by_node.write().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), Bridge::new(provider));
            if default.is_none() {
                *default = Some((route.clone(), Bridge::new(provider)));
            }
        }
    }
    r.active.store(true, Ordering::Release);
}

pub(super) fn unregister(route: &LogRoute) {
    let r = router();
    let mut default = r.default.write().unwrap_or_else(|p| p.into_inner());
    if default.as_ref().is_some_and(|(d, _)| d == route) {
        *default = None;
    }
    if let LogRoute::Node(id) = route {
        r.by_node.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

const NOT_EXPORTED: &[&str] = &["opentelemetry", "h2", "hyper", "tonic", "tower"];

struct RouterLayer;

impl<S> Layer<S> for RouterLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let r = router();
        if !r.active.load(Ordering::Acquire) {
            return;
        }
        let target = event.metadata().target();
        if NOT_EXPORTED.iter().any(|t| target.starts_with(t)) {
            return;
        }
        // The controller's events name nodes too (`node_discovered`): they are its own.
        let mut node = NodeField(None);
        if !target.starts_with("palisade_controller") {
            event.record(&mut node);
        }
        if let Some(id) = node.0 {
            let by_node = r.by_node.read().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = by_node.get(&id) {
                b.on_event(event, ctx);
                return;
            }
        }
        if let Some((_, b)) = r.default.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            b.on_event(event, ctx);
        }
    }
}

/// The event's `node` field, if it has one.
struct NodeField(Option<String>);

impl Visit for NodeField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "node" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "node" {
            // `node = %id` arrives as a Display wrapper whose Debug is the Display text.
            self.0 = Some(format!("{value:?}"));
        }
    }
}
