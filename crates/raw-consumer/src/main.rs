use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: raw_consumer::Settings = common::config::load();
    common::telemetry::init("raw-consumer", &settings.telemetry);
    common::run_service("raw-consumer", |shutdown| {
        raw_consumer::run(settings, shutdown)
    })
}
