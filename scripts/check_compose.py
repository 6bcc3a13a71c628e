#!/usr/bin/env python3
"""Checks that docker-compose.yml parses and wires the pipeline as the README says.

Docker does not run on our development machines, so this is the test the compose file gets:
valid YAML, every service present, healthchecks on the infrastructure, start order on them.
"""
import subprocess
import sys

try:
    import yaml
except ImportError:  # a fresh machine may lack PyYAML
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--user", "pyyaml"])
    import yaml

path = sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"
with open(path) as f:
    doc = yaml.safe_load(f)

services = doc.get("services") or {}
problems = []
infra = {"kafka", "mysql"}
apps = {"producer", "raw-consumer", "stream-aggregator", "update-counter", "compare"}
for name in sorted(infra | apps):
    if name not in services:
        problems.append(f"service {name} missing")
for name in sorted(infra):
    if "healthcheck" not in services.get(name, {}):
        problems.append(f"service {name} has no healthcheck")
for name in sorted(apps):
    svc = services.get(name, {})
    deps = svc.get("depends_on") or {}
    for needed in ("kafka", "mysql") if name != "compare" else ("mysql",):
        cond = (deps.get(needed) or {}).get("condition") if isinstance(deps, dict) else None
        if cond != "service_healthy":
            problems.append(f"service {name} does not wait for {needed} to be healthy")
    if name in ("raw-consumer", "stream-aggregator", "update-counter"):
        env = svc.get("environment") or {}
        if "{hostname}" not in str(env.get("KAFKA_GROUP_INSTANCE_ID", "")):
            problems.append(f"service {name} has no per-container KAFKA_GROUP_INSTANCE_ID")
    build = svc.get("build") or {}
    if not svc.get("image") and not build:
        problems.append(f"service {name} has neither build nor image")
if problems:
    print(f"{path}: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"{path}: {len(services)} services, healthchecks and start order present")
