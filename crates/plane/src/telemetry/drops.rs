//! Bounded export queues whose drops are counted.
//!
//! The SDK's batch processors already queue without blocking (a full queue drops), but
//! they keep their drop count to themselves. A gate in front of each processor keeps its
//! own count of what is queued (up at `on_end` / `emit`, down when the exporter receives
//! a batch) and drops, counted, once the queue's capacity is reached; so the SDK's queue
//! never overflows and every lost span or log record is in `palisade.telemetry.dropped`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::metrics::Meter;
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// Spans and log records dropped because their export queue was full.
#[derive(Debug, Default)]
pub struct Drops {
    pub spans: AtomicU64,
    pub logs: AtomicU64,
    reported: AtomicU64,
}

impl Drops {
    pub fn new() -> Arc<Drops> {
        Arc::default()
    }

    /// `palisade.telemetry.dropped {signal}`; a `telemetry_dropped` warning whenever the
    /// total moved since the last collection.
    pub fn observe(self: &Arc<Self>, meter: &Meter) {
        let d = self.clone();
        meter
            .u64_observable_counter("palisade.telemetry.dropped")
            .with_description("Spans and log records dropped because their export queue was full")
            .with_unit("{item}")
            .with_callback(move |o| {
                let (spans, logs) = (d.spans.load(Ordering::Relaxed), d.logs.load(Ordering::Relaxed));
                o.observe(spans, &[KeyValue::new("signal", "spans")]);
                o.observe(logs, &[KeyValue::new("signal", "logs")]);
                let total = spans + logs;
                if d.reported.swap(total, Ordering::Relaxed) != total {
                    tracing::warn!(event = "telemetry_dropped", spans, logs, "OTLP export queues were full: telemetry was dropped");
                }
            })
            .build();
    }
}

#[derive(Debug, Clone)]
struct Gate {
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl Gate {
    /// Takes a place in the queue, or says the queue is full.
    fn enter(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn leave(&self, n: usize) {
        let _ = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| Some(q.saturating_sub(n)));
    }
}

pub(super) struct SpanGate(Gate, Arc<Drops>);

impl SpanGate {
    pub(super) fn wrap<P: SpanProcessor>(self, inner: P) -> GatedSpans<P> {
        GatedSpans { inner, gate: self.0, drops: self.1 }
    }
}

/// The gate and the exporter that lets it know what left the queue.
pub(super) fn span_gate<E: SpanExporter>(exporter: E, capacity: usize, drops: Arc<Drops>) -> (SpanGate, CountedSpans<E>) {
    let gate = Gate { queued: Arc::default(), capacity };
    (SpanGate(gate.clone(), drops), CountedSpans { inner: exporter, gate })
}

#[derive(Debug)]
pub(super) struct GatedSpans<P> {
    inner: P,
    gate: Gate,
    drops: Arc<Drops>,
}

impl<P: SpanProcessor> SpanProcessor for GatedSpans<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx)
    }

    fn on_end(&self, span: SpanData) {
        if !self.gate.enter() {
            self.drops.spans.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

#[derive(Debug)]
pub(super) struct CountedSpans<E> {
    inner: E,
    gate: Gate,
}

impl<E: SpanExporter> SpanExporter for CountedSpans<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.gate.leave(batch.len());
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

pub(super) struct LogGate(Gate, Arc<Drops>);

impl LogGate {
    pub(super) fn wrap<P: LogProcessor>(self, inner: P) -> GatedLogs<P> {
        GatedLogs { inner, gate: self.0, drops: self.1 }
    }
}

pub(super) fn log_gate<E: LogExporter>(exporter: E, capacity: usize, drops: Arc<Drops>) -> (LogGate, CountedLogs<E>) {
    let gate = Gate { queued: Arc::default(), capacity };
    (LogGate(gate.clone(), drops), CountedLogs { inner: exporter, gate })
}

#[derive(Debug)]
pub(super) struct GatedLogs<P> {
    inner: P,
    gate: Gate,
    drops: Arc<Drops>,
}

impl<P: LogProcessor> LogProcessor for GatedLogs<P> {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        if !self.gate.enter() {
            self.drops.logs.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.emit(data, instrumentation)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

#[derive(Debug)]
pub(super) struct CountedLogs<E> {
    inner: E,
    gate: Gate,
}

impl<E: LogExporter> LogExporter for CountedLogs<E> {
    fn export(&self, batch: LogBatch<'_>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.gate.leave(batch.iter().count());
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_holds_its_capacity_and_reopens() {
        let g = Gate { queued: Arc::default(), capacity: 2 };
        assert!(g.enter() && g.enter());
        assert!(!g.enter(), "full");
        g.leave(2);
        assert!(g.enter());
        g.leave(10);
        assert_eq!(g.queued.load(Ordering::Relaxed), 0);
    }
}
