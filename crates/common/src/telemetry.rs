//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as pretty lines or JSON
//! objects (`LOG_FORMAT`), with the service name on every line so merged logs stay readable.

use std::{fmt, io::IsTerminal};

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
    EnvFilter,
};

use crate::config::{LogFormat, TelemetryArgs};

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(service: &'static str, args: &TelemetryArgs) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match args.log_format {
        LogFormat::Pretty => builder
            .event_format(WithService {
                service,
                json: false,
                inner: tracing_subscriber::fmt::format().with_target(true),
            })
            .try_init(),
        LogFormat::Json => builder
            .event_format(WithService {
                service,
                json: true,
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            })
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Wraps a formatter to add the service name: a `service` key in JSON, a prefix in text.
struct WithService<F> {
    service: &'static str,
    json: bool,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for WithService<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.json {
            let mut line = String::with_capacity(256);
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            match line.strip_prefix('{') {
                Some(rest) => write!(writer, "{{\"service\":\"{}\",{rest}", self.service),
                None => writer.write_str(&line),
            }
        } else {
            write!(writer, "{} ", self.service)?;
            self.inner.format_event(ctx, writer, event)
        }
    }
}
