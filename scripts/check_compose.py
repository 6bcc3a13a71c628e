#!/usr/bin/env python3
"""Checks that docker-compose.yml (and what it mounts) has the properties the README promises.

Docker does not run on our development machines, so this is the test the compose stack gets:
- Kafka keeps its log on its volume (KAFKA_LOG_DIRS is the volume's mount point);
- every long-running container (infrastructure included) has a restart policy that brings it back
  after a reboot (always or unless-stopped); compare, a one-shot, has none;
- secrets: .env.example ships every secret empty and no placeholder (change-me); every password
  compose passes has a required-value guard (${VAR:?...}) and no default; no container reads the
  whole .env (env_file), and each secret reaches only the services that use it (COINAPI_KEY the
  producer, MYSQL_ROOT_PASSWORD mysql, the Grafana password grafana, the application password the
  services that write, the read-only password mysql, grafana and the dashboard); DATABASE_URL is
  never passed from .env (it would win over MYSQL_HOST=mysql);
- MySQL is 8.4 LTS; its healthcheck passes the password quoted; a script in
  /docker-entrypoint-initdb.d creates a SELECT-only account, which Grafana's MySQL data source and
  the dashboard (compare serve) use;
- every coinstream service serves metrics on METRICS_ADDR and has a healthcheck (its own
  --healthcheck), and the consumers have a per-container KAFKA_GROUP_INSTANCE_ID and a
  stop_grace_period longer than their SHUTDOWN_TIMEOUT;
- host ports bind to 127.0.0.1 and can be moved, MySQL's not on 3306 by default;
- compare has an entrypoint and a ./reports bind mount;
- Prometheus finds every replica of every service (dns_sd_configs, type A; static targets would
  see one under --scale); Grafana has Prometheus and MySQL data sources and the dashboard
  provisioned;
- the Dockerfile caches dependencies (BuildKit cache mounts or cargo-chef) and builds only the
  five binaries.

`check_compose.py --self-test docker-compose.yml` checks the checker: for each defect above it
reintroduces it into an in-memory copy of the files and expects the check to fail naming it.
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

APPS = ["producer", "raw-consumer", "stream-aggregator", "update-counter"]
CONSUMERS = ["raw-consumer", "stream-aggregator", "update-counter"]
INFRA = ["kafka", "mysql", "prometheus", "grafana"]
ONE_SHOT = {"compare"}  # `docker compose run --rm compare`: no restart policy
WRITERS = set(APPS) | {"compare"}  # the services that log in as the application account
READERS = {"grafana", "dashboard"}  # those that log in as the read-only account
RESTART_POLICIES = {"always", "unless-stopped"}
METRICS_PORT = 9100
INITDB = "/docker-entrypoint-initdb.d"

# Each secret compose (or .env) may hold, and the services it may reach.
SECRETS = {
    "MYSQL_ROOT_PASSWORD": {"mysql"},
    "GRAFANA_ADMIN_PASSWORD": {"grafana"},
    "GF_SECURITY_ADMIN_PASSWORD": {"grafana"},
    "COINAPI_KEY": {"producer"},
    "MYSQL_PASSWORD": {"mysql"} | WRITERS,
    "MYSQL_READER_PASSWORD": {"mysql"} | READERS,
    "DATABASE_URL": set(),  # holds a password, and would win over MYSQL_HOST=mysql
    "KAFKA_SASL_PASSWORD": set(),
    "KAFKA_SSL_KEY_PASSWORD": set(),
}
PLACEHOLDER = re.compile(r"(?i)change[-_ ]?me|change[-_ ]?it|replace[-_ ]?me|placeholder|^todo$|"
                         r"^x{3,}$|^<.*>$|^your[-_ ]")


def is_secret(name):
    return name in SECRETS or re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", name) is not None


def refs(text):
    """The compose variables a string interpolates ($$ is a literal $, left to the container)."""
    text = str(text).replace("$$", "")
    return re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)


def strings(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif node is not None:
        yield str(node)


def environment(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict((e.split("=", 1) + [None])[:2] for e in env)
    return env


def unquoted_expansions(cmd):
    """Container-side ($$NAME) expansions in a shell command that are outside double quotes."""
    found, quote, i = [], None, 0
    while i < len(cmd):
        c = cmd[i]
        if quote == "'":
            quote = None if c == "'" else quote
        elif c == "\\":
            i += 1
        elif c in "'\"" and quote is None:
            quote = c
        elif c == '"' and quote == '"':
            quote = None
        elif cmd.startswith("$$", i):
            m = re.match(r"\$\$\{?([A-Za-z_][A-Za-z0-9_]*)", cmd[i:])
            if m and quote != '"':
                found.append(m.group(1))
            i += 1
        i += 1
    return found


def env_file_vars(text):
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out[k.strip().removeprefix("export ").strip()] = v.strip().strip("'\"")
    return out


class Files:
    """The repository's files as the check sees them: on disk, or replaced (None: deleted)."""

    def __init__(self, root, overrides=None):
        self.root, self.overrides = root, overrides or {}

    def _key(self, rel):
        return os.path.normpath(rel.removeprefix("./"))

    def read(self, rel):
        key = self._key(rel)
        if key in self.overrides:
            return self.overrides[key]
        try:
            with open(os.path.join(self.root, key)) as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def listdir(self, rel):
        key = self._key(rel)
        names = set()
        if os.path.isdir(os.path.join(self.root, key)):
            names = set(os.listdir(os.path.join(self.root, key)))
        for k, v in self.overrides.items():
            if os.path.dirname(k) == key:
                (names.add if v is not None else names.discard)(os.path.basename(k))
        return sorted(names)


def check(files, compose_rel):
    problems = []

    def need(cond, message):
        if not cond:
            problems.append(message)

    doc = yaml.safe_load(files.read(compose_rel)) or {}
    services = doc.get("services") or {}
    for name in INFRA + APPS + ["compare", "dashboard"]:
        need(name in services, f"service {name} missing")

    # Restart policies: after a reboot the infrastructure comes back with the services.
    for name, svc in services.items():
        if name in ONE_SHOT:
            continue
        need(str(svc.get("restart", "")) in RESTART_POLICIES,
             f"{name} has no restart policy (restart: unless-stopped): after a reboot or a crash "
             "it stays down")

    # Kafka keeps its data.
    kafka = services.get("kafka", {})
    kenv = environment(kafka)
    mounts = [v.split(":")[1] for v in kafka.get("volumes") or [] if ":" in v]
    need(kenv.get("KAFKA_LOG_DIRS") in mounts, "KAFKA_LOG_DIRS is not the kafka volume's mount point")

    mysql = services.get("mysql", {})
    need(str(mysql.get("image", "")).startswith("mysql:8.4"), "mysql is not 8.4 LTS")

    # Secrets. .env.example ships none, and nothing that looks like one.
    example = files.read(".env.example")
    need(example is not None, ".env.example missing")
    for key, value in env_file_vars(example or "").items():
        if is_secret(key):
            need(value == "", f".env.example ships a value for the secret {key}: ship it empty so "
                 "compose's required-value guard stops the start until it is set")
        need(not PLACEHOLDER.search(value), f".env.example: {key}={value} is a placeholder "
             "(change-me): it would pass the required-value guards")
    # Every password compose passes is required, with no default.
    for text in strings(doc):
        for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*PASSWORD[A-Za-z0-9_]*)([^}]*)\}",
                             text.replace("$$", "")):
            need(m.group(2).startswith(":?"), f"{m.group(1)} has a default or no required-value "
                 f"guard (${{{m.group(1)}{m.group(2)}}}): use ${{{m.group(1)}:?...}}")
    # No container reads .env whole, nor any env_file holding a secret.
    for name, svc in services.items():
        entries = svc.get("env_file") or []
        for e in [entries] if isinstance(entries, (str, dict)) else entries:
            p = e.get("path") if isinstance(e, dict) else e
            base = os.path.basename(str(p))
            held = sorted(k for k in env_file_vars(files.read(str(p)) or "") if is_secret(k))
            if base == ".env" or held:
                need(False, f"{name} reads the shared env_file {p}, which holds secrets "
                     f"({', '.join(held) or 'every password, COINAPI_KEY'}): name its environment "
                     "instead")
            if base == ".env":
                need(False, f"{name}: DATABASE_URL from .env reaches it (env_file {p}) and wins "
                     "over MYSQL_HOST=mysql")
    # Each secret reaches only the services that use it: an interpolation (${VAR...}) or a key
    # passed through from .env or the shell (VAR: with no value).
    for name, svc in services.items():
        env = environment(svc)
        reached = {r for t in strings(svc) for r in refs(t)}
        reached |= {k for k, v in env.items() if v is None}
        for var in sorted(reached):
            if not is_secret(var):
                continue
            if var == "DATABASE_URL":
                need(False, f"{name}: DATABASE_URL is passed from .env into the container, where "
                     "it wins over MYSQL_HOST=mysql")
                continue
            allowed = SECRETS.get(var)
            need(allowed is not None, f"{name} gets {var}, a secret check_compose.py does not know "
                 "(add it to SECRETS with the services that use it)")
            need(allowed is None or name in allowed,
                 f"the secret {var} reaches {name}, which does not use it "
                 f"(only {', '.join(sorted(allowed or [])) or 'no service'})")
        if "DATABASE_URL" in env and env["DATABASE_URL"] is not None \
                and "DATABASE_URL" not in refs(env["DATABASE_URL"]):
            need(not re.search(r"@127\.0\.0\.1|@localhost", str(env["DATABASE_URL"])),
                 f"{name}: DATABASE_URL points at the host, not mysql")

    # The MySQL healthcheck: the password quoted, expanded by the container's shell.
    test = (mysql.get("healthcheck") or {}).get("test") or []
    test = [test] if isinstance(test, str) else test
    shell = test[0] == "CMD-SHELL" if test else False
    command = " ".join(str(t) for t in test[1:]) if test and test[0] in ("CMD", "CMD-SHELL") \
        else " ".join(str(t) for t in test)
    need(test, "mysql has no healthcheck")
    pw_refs = [r for r in refs(command) if "PASSWORD" in r]
    need(not pw_refs, f"the mysql healthcheck has compose interpolate {', '.join(pw_refs)} into "
         "its command (visible, unquoted): use $$VAR in CMD-SHELL, in double quotes")
    if shell:
        bad = [v for v in unquoted_expansions(command) if "PASSWORD" in v]
        need(not bad, f"the mysql healthcheck passes {', '.join(bad)} unquoted (-p$$...): a "
             "password with spaces or shell characters breaks it; quote it "
             "(MYSQL_PWD=\"$$MYSQL_ROOT_PASSWORD\")")
    else:
        need("$$" not in command, "the mysql healthcheck uses $$VAR in CMD form, which no shell "
             "expands: use CMD-SHELL with the variable in double quotes")

    # The read-only account: created at MySQL's first start, used by Grafana and the dashboard.
    menv = environment(mysql)
    need("MYSQL_READER_PASSWORD" in refs(menv.get("MYSQL_READER_PASSWORD", "")),
         "mysql does not get MYSQL_READER_PASSWORD for the read-only account's init script")
    scripts = []
    for v in mysql.get("volumes") or []:
        parts = str(v).split(":")
        if len(parts) >= 2 and parts[1].startswith(INITDB) and parts[0].startswith((".", "/")):
            src = parts[0]
            if files.read(src) is not None:
                scripts.append((src, files.read(src)))
            for n in files.listdir(src):
                if n.endswith((".sh", ".sql")):
                    scripts.append((f"{src}/{n}", files.read(f"{src}/{n}") or ""))
    reader_scripts = [(p, t) for p, t in scripts
                      if re.search(r"CREATE\s+USER", t, re.I) and "MYSQL_READER_PASSWORD" in t]
    need(reader_scripts, f"the read-only user's init script is missing: mysql mounts nothing into "
         f"{INITDB} that creates it (CREATE USER ... MYSQL_READER_PASSWORD, GRANT SELECT ON)")
    for p, t in reader_scripts:
        grants = re.findall(r"GRANT\s+(.+?)\s+ON\b", t, re.I | re.S)
        need(grants and all(g.strip().upper() == "SELECT" for g in grants),
             f"{p} does not make the read-only user SELECT-only "
             f"(grants: {'; '.join(grants) or 'none'})")
    graf = services.get("grafana", {})
    genv = environment(graf)
    prov = next((v.split(":")[0] for v in graf.get("volumes") or [] if "provisioning" in v), None)
    dash = next((v.split(":")[0] for v in graf.get("volumes") or [] if "dashboards" in v), None)
    need(prov and dash, "grafana has no provisioning or dashboards mounted")
    if prov and dash:
        sources = yaml.safe_load(files.read(f"{prov}/datasources/datasources.yml") or "") or {}
        sources = sources.get("datasources") or []
        types = {d.get("type") for d in sources}
        need({"prometheus", "mysql"} <= types, f"grafana data sources: {sorted(types)}")
        for ds in (d for d in sources if d.get("type") == "mysql"):
            user = refs(ds.get("user", ""))
            password = refs((ds.get("secureJsonData") or {}).get("password", ""))
            uses = {r for v in user if v in genv for r in refs(genv[v] or "") or [v]}
            pw_uses = {r for v in password if v in genv for r in refs(genv[v] or "") or [v]}
            need(user and password and uses == {"MYSQL_READER_USER"}
                 and pw_uses == {"MYSQL_READER_PASSWORD"},
                 f"grafana's MySQL data source logs in as {'/'.join(user) or ds.get('user')} "
                 f"({'/'.join(sorted(uses)) or 'not from the environment'}), not the read-only "
                 "user (MYSQL_READER_USER/MYSQL_READER_PASSWORD): the application user can write")
        boards = [b for b in files.listdir(dash) if b.endswith(".json")]
        need(boards, "no dashboard to provision")
        for b in boards:
            panels = json.loads(files.read(f"{dash}/{b}")).get("panels") or []
            uids = {(p.get("datasource") or {}).get("uid") for p in panels}
            need({"prometheus", "mysql"} <= uids, f"{b} lacks Prometheus or MySQL panels")
    denv = environment(services.get("dashboard", {}))
    need(refs(denv.get("MYSQL_USER", "")) == ["MYSQL_READER_USER"]
         and refs(denv.get("MYSQL_PASSWORD", "")) == ["MYSQL_READER_PASSWORD"],
         "the dashboard (compare serve, read-only) does not log in as the read-only user "
         "(MYSQL_READER_USER/MYSQL_READER_PASSWORD)")

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
        env = environment(svc)
        need(env.get("MYSQL_HOST") == "mysql", f"{name} does not get MYSQL_HOST=mysql")
        deps = svc.get("depends_on") or {}
        for needed in ("mysql",) if name in ("compare", "dashboard") else ("kafka", "mysql"):
            cond = (deps.get(needed) or {}).get("condition") if isinstance(deps, dict) else None
            need(cond == "service_healthy", f"{name} does not wait for {needed} to be healthy")
    for name in APPS:
        svc = services.get(name, {})
        env = environment(svc)
        need(env.get("METRICS_ADDR"), f"{name} serves no metrics (METRICS_ADDR)")
        need(env.get("KAFKA_BOOTSTRAP_SERVERS") == "kafka:9092", f"{name} is not sent to kafka:9092")
        test = (svc.get("healthcheck") or {}).get("test") or []
        need(test[:1] == ["CMD"] and "--healthcheck" in test,
             f"{name}'s healthcheck is not its --healthcheck")
    for name in INFRA:
        need("healthcheck" in services.get(name, {}), f"{name} has no healthcheck")

    def seconds(text):
        m = re.fullmatch(r"(\d+)(ms|s|m)", str(text).strip())
        if not m:
            return None
        return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]

    for name in CONSUMERS:
        svc = services.get(name, {})
        env = environment(svc)
        grace = seconds(svc.get("stop_grace_period", "10s"))
        timeout = seconds(env.get("SHUTDOWN_TIMEOUT") or "30s")
        need(grace and timeout and grace > timeout,
             f"{name}: stop_grace_period must exceed SHUTDOWN_TIMEOUT (Docker kills at 10 s by default)")
        need("{hostname}" in str(env.get("KAFKA_GROUP_INSTANCE_ID", "")),
             f"{name} has no per-container KAFKA_GROUP_INSTANCE_ID")

    dashboard = services.get("dashboard", {})
    need(dashboard.get("entrypoint") == ["compare", "serve"], "dashboard does not run compare serve")
    need(str(environment(dashboard).get("COMPARE_LISTEN", "")).startswith("0.0.0.0:"),
         "dashboard does not listen on 0.0.0.0 inside its container")
    test = (dashboard.get("healthcheck") or {}).get("test") or []
    need(test[:1] == ["CMD"] and "--healthcheck" in test, "dashboard's healthcheck is not its --healthcheck")

    compare = services.get("compare", {})
    need(compare.get("entrypoint"), "compare has no entrypoint")
    need(any(str(v).startswith("./reports:") for v in compare.get("volumes") or []),
         "compare has no ./reports bind mount")

    # Prometheus finds every replica of every service by DNS.
    prom = services.get("prometheus", {})
    config = next((v.split(":")[0] for v in prom.get("volumes") or [] if "prometheus.yml" in v), None)
    need(config, "prometheus has no mounted configuration")
    if config:
        pconf = yaml.safe_load(files.read(config) or "") or {}
        jobs = pconf.get("scrape_configs") or []
        static = {t.split(":")[0] for job in jobs for sc in job.get("static_configs") or []
                  for t in sc.get("targets") or []}
        found = {n for job in jobs for sd in job.get("dns_sd_configs") or []
                 if str(sd.get("type", "SRV")).upper() == "A" and sd.get("port") == METRICS_PORT
                 for n in sd.get("names") or []}
        for name in APPS:
            need(name not in static, f"prometheus scrapes {name} through static_configs: under "
                 f"`docker compose up --scale {name}=N` it sees one replica; use dns_sd_configs "
                 f"(type A, port {METRICS_PORT})")
            need(name in found, f"prometheus does not discover {name} by DNS (dns_sd_configs, "
                 f"type A, port {METRICS_PORT})")

    # The Dockerfile.
    dockerfile = files.read("Dockerfile") or ""
    need("--mount=type=cache" in dockerfile or "cargo chef" in dockerfile,
         "the Dockerfile does not cache dependencies")
    need("--workspace" not in dockerfile, "the Dockerfile builds the whole workspace")
    for b in APPS + ["compare"]:
        need(f"-p {b}" in dockerfile, f"the Dockerfile does not build {b}")
    return list(dict.fromkeys(problems)), services


# (what is reintroduced, file, text replaced, replacement, what the failure must say)
COMPOSE = "docker-compose.yml"
READER_SCRIPT = "deploy/mysql/initdb/10-reader.sh"
PROMETHEUS = "deploy/prometheus/prometheus.yml"
DATASOURCES = "deploy/grafana/provisioning/datasources/datasources.yml"
MUTATIONS = [
    ("kafka without a restart policy", COMPOSE,
     "image: apache/kafka:3.9.0\n    restart: unless-stopped\n", "image: apache/kafka:3.9.0\n",
     "kafka has no restart policy"),
    ("mysql without a restart policy", COMPOSE,
     "image: mysql:8.4\n    restart: unless-stopped\n", "image: mysql:8.4\n",
     "mysql has no restart policy"),
    ("prometheus without a restart policy", COMPOSE,
     "image: prom/prometheus:v2.54.1\n    restart: unless-stopped\n",
     "image: prom/prometheus:v2.54.1\n", "prometheus has no restart policy"),
    ("grafana restarting on failure only", COMPOSE,
     "image: grafana/grafana:11.3.0\n    restart: unless-stopped\n",
     "image: grafana/grafana:11.3.0\n    restart: on-failure\n", "grafana has no restart policy"),
    ("the services without a restart policy", COMPOSE,
     "image: coinstream:latest\n  restart: unless-stopped\n", "image: coinstream:latest\n",
     "raw-consumer has no restart policy"),
    ("change-me root password in .env.example", ".env.example",
     "\nMYSQL_ROOT_PASSWORD=\n", "\nMYSQL_ROOT_PASSWORD=change-me\n",
     "ships a value for the secret MYSQL_ROOT_PASSWORD"),
    ("change-me Grafana password in .env.example", ".env.example",
     "\nGRAFANA_ADMIN_PASSWORD=\n", "\nGRAFANA_ADMIN_PASSWORD=change-me\n",
     "GRAFANA_ADMIN_PASSWORD=change-me is a placeholder"),
    ("an application password in .env.example", ".env.example",
     "\nMYSQL_PASSWORD=\n", "\nMYSQL_PASSWORD=coinstream\n",
     "ships a value for the secret MYSQL_PASSWORD"),
    ("a CoinAPI key in .env.example", ".env.example",
     "\nCOINAPI_KEY=\n", "\nCOINAPI_KEY=0123-abcd\n", "ships a value for the secret COINAPI_KEY"),
    ("a default application password", COMPOSE,
     "MYSQL_PASSWORD: ${MYSQL_PASSWORD:?set MYSQL_PASSWORD in .env}\n\n",
     "MYSQL_PASSWORD: ${MYSQL_PASSWORD:-coinstream}\n\n", "MYSQL_PASSWORD has a default"),
    ("one shared env_file for every service", COMPOSE,
     "  stop_grace_period: 40s\n", "  stop_grace_period: 40s\n  env_file:\n    - path: .env\n"
     "      required: false\n", "reads the shared env_file .env, which holds secrets"),
    ("COINAPI_KEY for every streaming service", COMPOSE,
     "  KAFKA_TOPIC_PARTITIONS:\n", "  KAFKA_TOPIC_PARTITIONS:\n  COINAPI_KEY:\n",
     "the secret COINAPI_KEY reaches raw-consumer"),
    ("the root password in grafana", COMPOSE,
     "      GF_SECURITY_ADMIN_PASSWORD:",
     "      MYSQL_ROOT_PASSWORD: ${MYSQL_ROOT_PASSWORD:?x}\n      GF_SECURITY_ADMIN_PASSWORD:",
     "the secret MYSQL_ROOT_PASSWORD reaches grafana"),
    ("the Grafana password in the dashboard", COMPOSE,
     "      COMPARE_LISTEN: 0.0.0.0:8080\n",
     "      COMPARE_LISTEN: 0.0.0.0:8080\n      GF_SECURITY_ADMIN_PASSWORD: "
     "${GRAFANA_ADMIN_PASSWORD:?x}\n", "the secret GRAFANA_ADMIN_PASSWORD reaches dashboard"),
    ("the application password in grafana", COMPOSE,
     "      MYSQL_DATABASE: ${MYSQL_DATABASE:-coinstream}\n    ports:\n      - \"127.0.0.1:${GRAFANA",
     "      MYSQL_DATABASE: ${MYSQL_DATABASE:-coinstream}\n      MYSQL_PASSWORD: "
     "${MYSQL_PASSWORD:?x}\n    ports:\n      - \"127.0.0.1:${GRAFANA",
     "the secret MYSQL_PASSWORD reaches grafana"),
    ("DATABASE_URL passed through from .env", COMPOSE,
     "  METRICS_ADDR: 0.0.0.0:9100\n", "  METRICS_ADDR: 0.0.0.0:9100\n  DATABASE_URL:\n",
     "DATABASE_URL is passed from .env"),
    ("DATABASE_URL interpolated from .env", COMPOSE,
     "  METRICS_ADDR: 0.0.0.0:9100\n", "  METRICS_ADDR: 0.0.0.0:9100\n  DATABASE_URL: "
     "${DATABASE_URL:-}\n", "DATABASE_URL is passed from .env"),
    ("grafana's data source as the application user", DATASOURCES,
     "user: ${MYSQL_READER_USER}", "user: ${MYSQL_USER}",
     "grafana's MySQL data source logs in as MYSQL_USER"),
    ("grafana's reader variables fed the application account", COMPOSE,
     "      MYSQL_READER_USER: ${MYSQL_READER_USER:-coinstream_reader}\n      MYSQL_READER_PASSWORD:"
     " ${MYSQL_READER_PASSWORD:?set MYSQL_READER_PASSWORD in .env}\n      MYSQL_DATABASE",
     "      MYSQL_READER_USER: ${MYSQL_USER:-coinstream}\n      MYSQL_READER_PASSWORD:"
     " ${MYSQL_PASSWORD:?set MYSQL_PASSWORD in .env}\n      MYSQL_DATABASE",
     "not the read-only user"),
    ("the dashboard as the application user", COMPOSE,
     "<<: [*common-env, *reader-db]", "<<: [*common-env, *app-db]",
     "the dashboard (compare serve, read-only) does not log in as the read-only user"),
    ("the unquoted root password in the healthcheck", COMPOSE,
     "MYSQL_PWD=\\\"$$MYSQL_ROOT_PASSWORD\\\" mysqladmin ping -h 127.0.0.1 -u root --silent",
     "mysqladmin ping -h 127.0.0.1 -u root -p$$MYSQL_ROOT_PASSWORD --silent",
     "passes MYSQL_ROOT_PASSWORD unquoted"),
    ("the reader-user init script deleted", READER_SCRIPT, None, None,
     "the read-only user's init script is missing"),
    ("the initdb mount removed", COMPOSE,
     "      - ./deploy/mysql/initdb:/docker-entrypoint-initdb.d:ro\n", "",
     "the read-only user's init script is missing"),
    ("the reader granted everything", READER_SCRIPT, "GRANT SELECT ON", "GRANT ALL ON",
     "does not make the read-only user SELECT-only"),
    ("static Prometheus targets", PROMETHEUS,
     "    dns_sd_configs:\n      - names:\n", "    static_configs:\n      - targets:\n",
     "prometheus scrapes producer through static_configs"),
    ("DNS discovery by SRV (the default type)", PROMETHEUS, "        type: A\n", "",
     "prometheus does not discover raw-consumer by DNS"),
]


def self_test(root, compose_rel):
    files = Files(root)
    problems, _ = check(files, compose_rel)
    if problems:
        print("self-test: the files as they are fail the check: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    failures = []
    for what, rel, old, new, expected in MUTATIONS:
        rel = compose_rel if rel == COMPOSE else rel
        text = files.read(rel)
        if old is None:
            mutated = None
        elif text is None or old not in text:
            failures.append(f"{what}: the mutation no longer applies ({rel} lacks {old!r})")
            continue
        else:
            mutated = text.replace(old, new, 1)
        try:
            problems, _ = check(Files(root, {os.path.normpath(rel): mutated}), compose_rel)
        except Exception as e:  # a mutation must fail the check, not crash it
            failures.append(f"{what}: the check crashed ({type(e).__name__}: {e})")
            continue
        if not any(expected in p for p in problems):
            failures.append(f"{what}: expected a failure saying {expected!r}, got "
                            f"{'; '.join(problems) or 'a pass'}")
    if failures:
        print("self-test failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"self-test: each of {len(MUTATIONS)} reintroduced defects fails the check, naming it")
    return 0


def main(argv):
    args = [a for a in argv if a != "--self-test"]
    path = args[0] if args else "docker-compose.yml"
    root = os.path.dirname(os.path.abspath(path))
    compose_rel = os.path.basename(path)
    if "--self-test" in argv:
        return self_test(root, compose_rel)
    problems, services = check(Files(root), compose_rel)
    if problems:
        print(f"{path}: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"{path}: {len(services)} services; data kept, restart policies, secrets only where used "
          "(none shipped, none from a shared env_file, no DATABASE_URL), read-only user for Grafana "
          "and the dashboard, quoted healthcheck password, ports, healthchecks, metrics, Prometheus "
          "by DNS, Grafana and the image build as the README says")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
