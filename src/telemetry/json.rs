//! JSON log lines, flat: one object per line with `timestamp`, `level`,
//! `target`, `message`, `trace_id` and `span_id` at the top level, then the
//! event's fields, then the fields of its spans (innermost first; a name
//! already written is not written again). Log pipelines (Loki, Elastic,
//! Cloud Logging) find the message and the trace where they look for them,
//! and a query on `caller` needs no path into a nested span object.
//!
//! With traces exported, `trace_id` and `span_id` are the innermost span's;
//! without, there are no span ids, and `trace_id` is the caller's (from its
//! `traceparent`) when it sent one.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::is_otlp_only;

/// Formats each event as one flat JSON object (see the module documentation).
#[derive(Default)]
pub struct JsonLines {
    /// The subscriber whose OpenTelemetry layer keeps the span ids, set once
    /// it is installed when traces are exported. An event cannot look it up
    /// itself: while it is being dispatched, the current dispatcher reads
    /// as none.
    traced_by: Arc<OnceLock<WeakDispatch>>,
}

impl JsonLines {
    /// Where to put the subscriber that keeps the span ids.
    pub fn traced_by(&self) -> Arc<OnceLock<WeakDispatch>> {
        self.traced_by.clone()
    }
}

/// Keeps a span's fields as JSON members, one per line (`"name":value`), so
/// that [`JsonLines`] can copy them into each line and skip a name already
/// written. A rendered value never holds a raw newline: strings escape it.
pub struct JsonMembers;

impl<'w> FormatFields<'w> for JsonMembers {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut members = Members::new(writer, "", "\n", &[]);
        fields.record(&mut members);
        members.result
    }

    /// A field recorded again replaces its earlier value (the line shows
    /// the latest, as tracing-subscriber's formatters do).
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let start = current.fields.len();
        self.format_fields(current.as_writer(), fields)?;
        let (earlier, added) = current.fields.split_at(start);
        let replaced = |member: &str| {
            added
                .lines()
                .any(|new| member_name(new) == member_name(member))
        };
        if earlier.lines().any(replaced) {
            let kept: String = earlier
                .lines()
                .filter(|member| !replaced(member))
                .flat_map(|member| [member, "\n"])
                .chain([added])
                .collect();
            current.fields = kept;
        }
        Ok(())
    }
}

impl<S> FormatEvent<S, JsonMembers> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonMembers>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record (reqwest, rustls, redis) under its own target and
        // level, as tracing-subscriber's formatters show it, not "log".
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\",\"target\":", metadata.level())?;
        write_json_string(&mut writer, metadata.target())?;
        let mut written: Vec<&'static str> = vec!["timestamp", "level", "target"];
        if normalized.is_some() {
            written.extend(LOG_RECORD_FIELDS);
        }
        let ids = ctx.lookup_current().and_then(|span| {
            let dispatch = self.traced_by.get()?.upgrade()?;
            otel_ids(&span.id(), &dispatch)
        });
        if let Some((trace_id, span_id)) = ids {
            write!(
                writer,
                ",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\""
            )?;
            written.extend(["trace_id", "span_id"]);
        }
        let mut members = Members::new(writer.by_ref(), ",", "", &written);
        event.record(&mut members);
        members.result?;
        written.extend(members.names);

        for span in ctx.event_scope().into_iter().flatten() {
            let declared = span.metadata().fields();
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<FormattedFields<JsonMembers>>() else {
                continue;
            };
            for member in fields.fields.lines() {
                let escaped = member_name(member);
                let Some(name) = declared
                    .iter()
                    .map(|f| f.name())
                    .find(|n| names(escaped, n))
                else {
                    continue;
                };
                if !written.contains(&name) {
                    writer.write_char(',')?;
                    writer.write_str(member)?;
                    written.push(name);
                }
            }
        }
        writeln!(writer, "}}")
    }
}

/// The fields tracing-log adds to a `log` record, which its normalized
/// metadata already says (the target) or which say only where in a
/// library's source it was logged.
const LOG_RECORD_FIELDS: [&str; 4] = ["log.target", "log.module_path", "log.file", "log.line"];

/// The trace and span ids OpenTelemetry gave the span `id`.
fn otel_ids(id: &tracing::span::Id, dispatch: &Dispatch) -> Option<(String, String)> {
    let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// The name of a member as [`JsonMembers`] keeps it (`"name":value`), as
/// written: JSON-escaped.
fn member_name(member: &str) -> &str {
    let bytes = member.as_bytes();
    let mut at = 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return &member[1..at],
            _ => at += 1,
        }
    }
    ""
}

/// Whether `escaped`, a name as a member has it, is the field name `name`.
/// Only a name written with an escape (a backslash) is escaped again to
/// compare: this runs for every field of every span of every line.
fn names(escaped: &str, name: &str) -> bool {
    escaped == name
        || escaped.contains('\\') && {
            let mut quoted = String::new();
            write_json_string(&mut quoted, name).is_ok() && quoted[1..quoted.len() - 1] == *escaped
        }
}

/// Writes each field as a JSON member, but the OTLP-only ones and those
/// whose name is already written.
struct Members<'a, 'w> {
    out: Writer<'w>,
    before: &'static str,
    after: &'static str,
    skip: &'a [&'a str],
    /// The names written so far.
    names: Vec<&'static str>,
    result: fmt::Result,
}

impl<'a, 'w> Members<'a, 'w> {
    fn new(
        out: Writer<'w>,
        before: &'static str,
        after: &'static str,
        skip: &'a [&'a str],
    ) -> Self {
        Self {
            out,
            before,
            after,
            skip,
            names: Vec::new(),
            result: Ok(()),
        }
    }

    /// Writes `"name":` and then the value with `value`, once per name.
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        let name = field.name();
        if self.result.is_err()
            || is_otlp_only(name)
            || self.skip.contains(&name)
            || self.names.contains(&name)
        {
            return;
        }
        self.names.push(name);
        self.result = (|| {
            self.out.write_str(self.before)?;
            write_json_string(&mut self.out, name)?;
            self.out.write_char(':')?;
            value(&mut self.out)?;
            self.out.write_str(self.after)
        })();
    }
}

impl Visit for Members<'_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |out| {
            if value.is_finite() {
                write!(out, "{value}")
            } else {
                out.write_str("null")
            }
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| write_json_string(out, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |out| write_json_string(out, &value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| write_json_string(out, &format!("{value:?}")));
    }
}

/// `text` as a JSON string: quoted, with `"`, `\` and control characters
/// escaped (so a value can never end its line or its object early).
fn write_json_string(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut plain = 0;
    for (at, character) in text.char_indices() {
        let escaped = match character {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            control if control < ' ' || control == '\u{7f}' => "",
            _ => continue,
        };
        out.write_str(&text[plain..at])?;
        if escaped.is_empty() {
            write!(out, "\\u{:04x}", u32::from(character))?;
        } else {
            out.write_str(escaped)?;
        }
        plain = at + character.len_utf8();
    }
    out.write_str(&text[plain..])?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::tests::Sink;

    /// The lines `log` writes through [`JsonLines`], with traces on or off.
    fn json_lines(traces: bool, log: impl FnOnce()) -> Vec<String> {
        let sink = Sink::default();
        let writer = sink.clone();
        let format = JsonLines::default();
        let traced_by = format.traced_by();
        let lines = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonMembers)
            .event_format(format)
            .with_writer(move || writer.clone());
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let otel =
            traces.then(|| tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let dispatch = Dispatch::new(tracing_subscriber::registry().with(lines).with(otel));
        if traces {
            traced_by.set(dispatch.downgrade()).unwrap();
        }
        tracing::dispatcher::with_default(&dispatch, log);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    fn parse(line: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    #[test]
    fn every_field_is_at_the_top_level_once() {
        let lines = json_lines(false, || {
            let rpc = tracing::info_span!(
                "rpc",
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = "IssueWidgetToken",
                provider = "moneyhub",
                caller = tracing::field::Empty,
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
            );
            rpc.record("caller", "app \"one\"\n");
            let _rpc = rpc.enter();
            let upstream =
                tracing::info_span!("upstream", provider = "moneyhub", endpoint = "token");
            let _upstream = upstream.enter();
            tracing::warn!(attempt = 2, provider = "other", "retrying");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        let object = parse(line);
        assert_eq!(object["message"], "retrying");
        assert_eq!(object["level"], "WARN");
        assert_eq!(object["attempt"], 2);
        assert_eq!(object["caller"], "app \"one\"\n");
        assert_eq!(object["rpc.method"], "IssueWidgetToken");
        assert_eq!(object["endpoint"], "token");
        // Without traces exported, the caller's trace id, and no span id.
        assert_eq!(object["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!object.contains_key("span_id"), "{line}");
        // The event's own value wins, and each name appears once.
        assert_eq!(object["provider"], "other");
        assert_eq!(line.matches("\"provider\"").count(), 1, "{line}");
        assert!(
            !line.contains("otel.") && !line.contains("rpc.system"),
            "{line}"
        );
        assert!(
            time::OffsetDateTime::parse(
                object["timestamp"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok()
        );
    }

    #[test]
    fn with_traces_the_line_carries_its_spans_ids() {
        let ids = std::sync::Mutex::new(None);
        let lines = json_lines(true, || {
            let rpc = tracing::info_span!("rpc", trace_id = "caller's, not ours");
            let _rpc = rpc.enter();
            let upstream = tracing::info_span!("upstream");
            let _upstream = upstream.enter();
            let context = upstream.context();
            let span = context.span();
            let span_context = span.span_context();
            *ids.lock().unwrap() = Some((
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            ));
            tracing::info!("inside");
        });
        let (trace_id, span_id) = ids.into_inner().unwrap().unwrap();
        let object = parse(&lines[0]);
        assert_eq!(object["trace_id"], trace_id.as_str());
        assert_eq!(object["span_id"], span_id.as_str());
        assert_eq!(lines[0].matches("trace_id").count(), 1, "{}", lines[0]);
    }

    #[test]
    fn strings_escape_everything_that_could_break_a_line() {
        let mut out = String::new();
        write_json_string(&mut out, "a\"b\\c\nd\re\tf\u{1}g\u{7f}h é").unwrap();
        assert_eq!(out, r#""a\"b\\c\nd\re\tf\u0001g\u007fh é""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\re\tf\u{1}g\u{7f}h é");
    }

    #[test]
    fn member_names_are_read_back() {
        assert_eq!(member_name(r#""rpc.method":"GetUser""#), "rpc.method");
        assert_eq!(member_name(r#""latency_ms":1.5"#), "latency_ms");
    }

    /// A field recorded again shows its latest value, as
    /// tracing-subscriber's formatters do.
    #[test]
    fn a_field_recorded_again_shows_its_latest_value() {
        let lines = json_lines(false, || {
            let rpc = tracing::info_span!("rpc", caller = tracing::field::Empty);
            rpc.record("caller", "first");
            rpc.record("caller", "second");
            let _rpc = rpc.enter();
            tracing::info!("done");
        });
        let object = parse(&lines[0]);
        assert_eq!(object["caller"], "second", "{}", lines[0]);
    }

    /// An event's own `trace_id` field, with traces exported, does not make
    /// a second `trace_id` key.
    #[test]
    fn an_event_field_named_trace_id_is_not_written_twice() {
        let lines = json_lines(true, || {
            let rpc = tracing::info_span!("rpc");
            let _rpc = rpc.enter();
            tracing::info!(trace_id = "from the event", "done");
        });
        assert_eq!(lines[0].matches("\"trace_id\"").count(), 1, "{}", lines[0]);
    }

    /// Field names are escaped too (tracing takes any string literal as a
    /// name), an event's and a span's alike.
    #[test]
    fn a_field_name_with_a_quote_keeps_the_line_valid_json() {
        let lines = json_lines(false, || {
            let span = tracing::info_span!("rpc", "c\"d" = 2);
            let _span = span.enter();
            tracing::info!("a\"b" = 1, "done");
        });
        let object = parse(&lines[0]);
        assert_eq!(object["a\"b"], 1, "{}", lines[0]);
        assert_eq!(object["c\"d"], 2, "{}", lines[0]);
    }
}
