//! The JSON lines written to stdout: `{"timestamp":…,"level":…,<fields>…,"target":…}`,
//! the shape of `tracing-subscriber`'s json format with `flatten_event(true)` and no spans.
//!
//! Written here because that format is the largest part of the node's CPU per handshake
//! after the cryptography (benches/RESULTS.md: two lines per connection, ~19 µs of them
//! in serde_json through an `io::Write` adaptor that re-checks every chunk as UTF-8 and a
//! `format!` per debug value). This one writes each field straight into the line buffer
//! the fmt layer already keeps, escaping as it goes.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_str("\"")?;
        let mut fields = Fields { w: &mut w, from_log: normalized.is_some(), result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    /// An event of the `log` crate: its `log.*` fields are already in the metadata.
    from_log: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn key(&mut self, field: &Field) -> bool {
        if self.result.is_err() || (self.from_log && field.name().starts_with("log.")) {
            return false;
        }
        self.result = self.w.write_str(",\"").and_then(|()| Escaped(self.w).write_str(field.name())).and_then(|()| self.w.write_str("\":"));
        self.result.is_ok()
    }

    fn raw(&mut self, field: &Field, value: impl fmt::Display) {
        if self.key(field) {
            self.result = write!(self.w, "{value}");
        }
    }

    /// Integers through `itoa`: no formatter, no padding logic.
    fn integer(&mut self, field: &Field, value: impl itoa::Integer) {
        if self.key(field) {
            self.result = self.w.write_str(itoa::Buffer::new().format(value));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            self.result = string(self.w, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.result = self.w.write_str("\"").and_then(|()| write!(Escaped(self.w), "{value:?}")).and_then(|()| self.w.write_str("\""));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            self.result = self.w.write_str("\"").and_then(|()| write!(Escaped(self.w), "{value}")).and_then(|()| self.w.write_str("\""));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.integer(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.integer(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity (serde_json writes them as null too).
        if value.is_finite() {
            self.raw(field, value);
        } else {
            self.raw(field, "null");
        }
    }
}

/// `s` as a JSON string, quotes included.
fn string(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_str("\"")?;
    Escaped(w).write_str(s)?;
    w.write_str("\"")
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f
}

/// Escapes what is written through it for the inside of a JSON string: runs of plain
/// characters are copied in one piece.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        // Most values need no escape: one pass without early exit (it vectorizes), then
        // one copy.
        if !bytes.iter().fold(false, |any, &b| any | needs_escape(b)) {
            return self.0.write_str(s);
        }
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !needs_escape(b) {
                continue;
            }
            let escape: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                _ => "",
            };
            // Every byte matched above is ASCII, so these slices fall on char boundaries.
            self.0.write_str(&s[start..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(emit: impl FnOnce()) -> (Vec<serde_json::Value>, String) {
        let sink = Sink::default();
        let out = sink.clone();
        let layer = tracing_subscriber::fmt::layer().event_format(super::JsonLines).with_writer(move || out.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf-8");
        assert!(text.ends_with('\n'), "{text:?}");
        (text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect(), text)
    }

    #[test]
    fn every_field_kind_is_valid_json_in_the_tracing_subscriber_shape() {
        #[derive(Debug)]
        #[allow(dead_code)] // read through Debug only
        struct Thing {
            name: &'static str,
        }
        let err = std::io::Error::other("disk \"full\"");
        let (got, text) = lines(|| {
            tracing::warn!(
                target: "palisade::audit",
                event = "handshake",
                status = 101u64,
                delta = -3i64,
                ok = true,
                ratio = 0.5f64,
                nan = f64::NAN,
                client.address = %std::net::Ipv4Addr::LOCALHOST,
                thing = ?Thing { name: "a\"b" },
                error = &err as &(dyn std::error::Error + 'static),
                tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} del \u{7f} é ✓",
                "the message"
            );
        });
        assert_eq!(got.len(), 1);
        let l = &got[0];
        assert!(text.starts_with("{\"timestamp\":\"") && text.ends_with(",\"target\":\"palisade::audit\"}\n"), "{text}");
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["target"], "palisade::audit");
        assert_eq!(l["message"], "the message");
        assert_eq!((l["event"].as_str(), l["status"].as_u64(), l["delta"].as_i64()), (Some("handshake"), Some(101), Some(-3)));
        assert_eq!((l["ok"].as_bool(), l["ratio"].as_f64()), (Some(true), Some(0.5)));
        assert!(l["nan"].is_null());
        assert_eq!(l["client.address"], "127.0.0.1");
        assert_eq!(l["thing"], r#"Thing { name: "a\"b" }"#);
        assert_eq!(l["error"], "disk \"full\"");
        assert_eq!(l["tricky"], "quote \" backslash \\ newline \n tab \t bell \u{7} del \u{7f} é ✓");
        let ts = l["timestamp"].as_str().expect("timestamp");
        assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }

    #[test]
    fn log_crate_records_take_their_own_target_and_keep_their_fields_out() {
        let (got, _) = lines(|| {
            let record = log::Record::builder()
                .args(format_args!("from log"))
                .level(log::Level::Info)
                .target("rustls::server")
                .module_path_static(Some("rustls::server"))
                .build();
            tracing_log::format_trace(&record).expect("forwarded");
        });
        assert_eq!(got.len(), 1);
        let l = &got[0];
        assert_eq!(
            (l["target"].as_str(), l["message"].as_str(), l["level"].as_str()),
            (Some("rustls::server"), Some("from log"), Some("INFO"))
        );
        assert!(l.as_object().expect("object").keys().all(|k| !k.starts_with("log.")), "{l}");
    }
}
