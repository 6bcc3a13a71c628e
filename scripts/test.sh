#!/usr/bin/env bash
# The whole test suite, as CI runs it: infrastructure up, formatting, lints, compose file, tests.
# Needs nothing installed by hand beyond a Rust toolchain: scripts/infra.sh installs and starts the
# broker and database it needs (the first run on a machine builds the broker, about 10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "toolchain"
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

step "infrastructure (scripts/infra.sh up)"
broker_was_running=0
infra_status=$(scripts/infra.sh status 2>&1)
case "$infra_status" in *"broker: Tansu running"* | *"broker: 127.0.0.1"*" open"*) broker_was_running=1 ;; esac
infra_env=$(scripts/infra.sh up)
set -a
eval "$infra_env"
set +a
# In CI, leave the machine as we found it: stop a broker this run started.
if [ "${CI:-}" = true ] && [ "$broker_was_running" = 0 ]; then
  trap 'scripts/infra.sh down' EXIT
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "docker-compose.yml parses and is complete"
python3 scripts/check_compose.py docker-compose.yml
python3 scripts/check_compose.py --self-test docker-compose.yml

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "no function in crates/*/src longer than 80 lines (clippy::too_many_lines, clippy.toml)"
cargo clippy --workspace --lib --bins --locked -- -D warnings -D clippy::too_many_lines

step "cargo test"
cargo test --workspace --locked --no-fail-fast
