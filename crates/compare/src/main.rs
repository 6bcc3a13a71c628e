use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: compare::Settings = common::config::load();
    common::telemetry::init("compare", settings.telemetry());
    let healthcheck = settings.healthcheck();
    common::run_service("compare", healthcheck.as_ref(), |ctx| {
        compare::run(settings, ctx)
    })
}
