use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: raw_consumer::Settings = common::config::load();
    common::telemetry::init("raw-consumer", &settings.telemetry);
    let observe = settings.observe.clone();
    common::run_service("raw-consumer", Some(&observe), |ctx| {
        raw_consumer::run(settings, ctx)
    })
}
