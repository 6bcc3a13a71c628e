#!/usr/bin/env python3
"""Checks that docker-compose.yml (and what it mounts) has the properties the README promises.

Docker does not run on our development machines, so this is the test the compose stack gets:
- Kafka keeps its log on its volume (KAFKA_LOG_DIRS is the volume's mount point);
- every coinstream service reads .env (env_file, not required), serves metrics on METRICS_ADDR
  and has a healthcheck (its own --healthcheck), and the consumers have a per-container
  KAFKA_GROUP_INSTANCE_ID and a stop_grace_period longer than their SHUTDOWN_TIMEOUT;
- MySQL is 8.4 LTS with no default root password; host ports bind to 127.0.0.1 and can be moved,
  MySQL's not on 3306 by default;
- compare has an entrypoint and a ./reports bind mount;
- Prometheus scrapes every service; Grafana has Prometheus and MySQL data sources and the
  dashboard provisioned;
- the Dockerfile caches dependencies (BuildKit cache mounts or cargo-chef) and builds only the
  five binaries.
"""
import json
import os
import re
import subprocess
import sys

try:
    import yaml
except ImportError:  # a fresh machine may lack PyYAML
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--user", "pyyaml"])
    import yaml

path = sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"
root = os.path.dirname(os.path.abspath(path))
with open(path) as f:
    doc = yaml.safe_load(f)

services = doc.get("services") or {}
problems = []
APPS = ["producer", "raw-consumer", "stream-aggregator", "update-counter"]
CONSUMERS = ["raw-consumer", "stream-aggregator", "update-counter"]
INFRA = ["kafka", "mysql", "prometheus", "grafana"]


def need(cond, message):
    if not cond:
        problems.append(message)


for name in INFRA + APPS + ["compare"]:
    need(name in services, f"service {name} missing")

# Kafka keeps its data.
kafka = services.get("kafka", {})
kenv = kafka.get("environment") or {}
mounts = [v.split(":")[1] for v in kafka.get("volumes") or [] if ":" in v]
need(kenv.get("KAFKA_LOG_DIRS") in mounts, "KAFKA_LOG_DIRS is not the kafka volume's mount point")

# MySQL 8.4, no default root password.
mysql = services.get("mysql", {})
need(str(mysql.get("image", "")).startswith("mysql:8.4"), "mysql is not 8.4 LTS")
root_pw = str((mysql.get("environment") or {}).get("MYSQL_ROOT_PASSWORD", ""))
need(":?" in root_pw, "MYSQL_ROOT_PASSWORD has a default")

# Host ports: 127.0.0.1, overridable; MySQL not on 3306.
for name, svc in services.items():
    for p in svc.get("ports") or []:
        p = str(p)
        m = re.fullmatch(r"127\.0\.0\.1:\$\{[A-Z_]+:-(\d+)\}:\d+", p)
        need(m, f"{name} publishes {p}: not on 127.0.0.1 with an overridable host port")
        if name == "mysql" and m:
            need(m.group(1) != "3306", "MySQL's host port defaults to 3306")

# The coinstream services.
for name in APPS + ["compare", "dashboard"]:
    svc = services.get(name, {})
    env_files = svc.get("env_file") or []
    need(any(isinstance(e, dict) and e.get("path") == ".env" and e.get("required") is False
             for e in env_files), f"{name} does not read .env (env_file, required: false)")
    deps = svc.get("depends_on") or {}
    for needed in ("mysql",) if name in ("compare", "dashboard") else ("kafka", "mysql"):
        cond = (deps.get(needed) or {}).get("condition") if isinstance(deps, dict) else None
        need(cond == "service_healthy", f"{name} does not wait for {needed} to be healthy")
for name in APPS:
    svc = services.get(name, {})
    env = svc.get("environment") or {}
    need(env.get("METRICS_ADDR"), f"{name} serves no metrics (METRICS_ADDR)")
    test = (svc.get("healthcheck") or {}).get("test") or []
    need(test[:1] == ["CMD"] and "--healthcheck" in test, f"{name}'s healthcheck is not its --healthcheck")
for name in INFRA:
    need("healthcheck" in services.get(name, {}), f"{name} has no healthcheck")
def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text).strip())
    if not m:
        return None
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


for name in CONSUMERS:
    svc = services.get(name, {})
    grace = seconds(svc.get("stop_grace_period", "10s"))
    timeout = seconds((svc.get("environment") or {}).get("SHUTDOWN_TIMEOUT", "30s"))
    need(grace and timeout and grace > timeout,
         f"{name}: stop_grace_period must exceed SHUTDOWN_TIMEOUT (Docker kills at 10 s by default)")
    env = svc.get("environment") or {}
    need("{hostname}" in str(env.get("KAFKA_GROUP_INSTANCE_ID", "")),
         f"{name} has no per-container KAFKA_GROUP_INSTANCE_ID")

dashboard = services.get("dashboard", {})
need(dashboard.get("entrypoint") == ["compare", "serve"], "dashboard does not run compare serve")
need(str((dashboard.get("environment") or {}).get("COMPARE_LISTEN", "")).startswith("0.0.0.0:"),
     "dashboard does not listen on 0.0.0.0 inside its container")
test = (dashboard.get("healthcheck") or {}).get("test") or []
need(test[:1] == ["CMD"] and "--healthcheck" in test, "dashboard's healthcheck is not its --healthcheck")

compare = services.get("compare", {})
need(compare.get("entrypoint"), "compare has no entrypoint")
need(any(str(v).startswith("./reports:") for v in compare.get("volumes") or []),
     "compare has no ./reports bind mount")

# Prometheus scrapes every service.
prom = services.get("prometheus", {})
config = next((v.split(":")[0] for v in prom.get("volumes") or [] if "prometheus.yml" in v), None)
need(config, "prometheus has no mounted configuration")
if config:
    with open(os.path.join(root, config)) as f:
        pconf = yaml.safe_load(f)
    targets = {t.split(":")[0] for job in pconf.get("scrape_configs") or []
               for sc in job.get("static_configs") or [] for t in sc.get("targets") or []}
    for name in APPS:
        need(name in targets, f"prometheus does not scrape {name}")

# Grafana: data sources and the dashboard.
graf = services.get("grafana", {})
prov = next((v.split(":")[0] for v in graf.get("volumes") or [] if "provisioning" in v), None)
dash = next((v.split(":")[0] for v in graf.get("volumes") or [] if "dashboards" in v), None)
need(prov and dash, "grafana has no provisioning or dashboards mounted")
if prov and dash:
    with open(os.path.join(root, prov, "datasources", "datasources.yml")) as f:
        types = {d.get("type") for d in yaml.safe_load(f).get("datasources") or []}
    need({"prometheus", "mysql"} <= types, f"grafana data sources: {sorted(types)}")
    boards = [b for b in os.listdir(os.path.join(root, dash)) if b.endswith(".json")]
    need(boards, "no dashboard to provision")
    for b in boards:
        with open(os.path.join(root, dash, b)) as f:
            panels = json.load(f).get("panels") or []
        sources = {(p.get("datasource") or {}).get("uid") for p in panels}
        need({"prometheus", "mysql"} <= sources, f"{b} lacks Prometheus or MySQL panels")

# The Dockerfile.
with open(os.path.join(root, "Dockerfile")) as f:
    dockerfile = f.read()
need("--mount=type=cache" in dockerfile or "cargo chef" in dockerfile,
     "the Dockerfile does not cache dependencies")
need("--workspace" not in dockerfile, "the Dockerfile builds the whole workspace")
for b in APPS + ["compare"]:
    need(f"-p {b}" in dockerfile, f"the Dockerfile does not build {b}")

if problems:
    print(f"{path}: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"{path}: {len(services)} services; data kept, settings, ports, healthchecks, metrics, "
      "Prometheus, Grafana and the image build as the README says")
