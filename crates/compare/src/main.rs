use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: compare::Settings = common::config::load();
    common::telemetry::init("compare", settings.telemetry());
    common::run_service("compare", None, |ctx| compare::run(settings, ctx))
}
