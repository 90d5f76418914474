"""The deployment files, checked statically (no Docker engine here): docker-compose.yml, the
Dockerfile, the Caddyfile and .env.example, and that every service's command is also a Makefile
target that runs the same command without Docker.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess

import pytest
import yaml

from digitlib import config

ROOT = config.PROJ_ROOT
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CADDYFILE = (ROOT / "Caddyfile").read_text()
RETRAIN_NOTEBOOK = "notebooks/4.0-dl-retrain-with-feedback.ipynb"
CHECK_ENV = ROOT / "deploy" / "check-env"
PROXY_UPSTREAMS = ROOT / "deploy" / "proxy-upstreams"
HEALTH_URI = "/voila/static/materialcolors.css"
VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def good_env() -> dict[str, str]:
    """.env.example as an operator fills it in: every placeholder replaced by a random secret."""
    env = env_example()
    return {k: secrets.token_urlsafe(32) if v.startswith("change-me") else v for k, v in env.items()}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, as `docker compose` reads .env."""

    def replace(match: re.Match) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise KeyError(f"{name} is required: {rest}")
        return rest if kind == "-" else ""

    return VARIABLE.sub(replace, value)


def service_command(name: str) -> list[str]:
    return [interpolate(part, env_example()) for part in SERVICES[name]["command"]]


def make_command(target: str, **variables: str) -> list[str]:
    """The last command `make TARGET` would run (dry run; setup is taken as done)."""
    overrides = [f"{k}={v}" for k, v in variables.items()]
    done = subprocess.run(
        # --no-print-directory: under `make test` the nested make would add "Leaving directory" lines.
        ["make", "--no-print-directory", "-n", "-o", "setup", "-o", ".venv/.installed", target, *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return shlex.split(done.stdout.strip().splitlines()[-1])


def depends_on(service: str) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in SERVICES[service]["depends_on"].items()}


def environment(service: str, env: dict[str, str] | None = None) -> dict[str, str]:
    env = env_example() if env is None else env
    return {k: interpolate(str(v), env) for k, v in SERVICES[service]["environment"].items()}


def run_script(script, *args: str, env: dict[str, str], cwd=ROOT) -> subprocess.CompletedProcess:
    """A deploy/ script as the container runs it: POSIX sh, only the given environment."""
    return subprocess.run(
        ["sh", str(script), *args],
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


# --- compose -------------------------------------------------------------------------------------


def test_compose_has_the_stack():
    assert set(SERVICES) == {"db", "migrate", "dashboard", "lab", "trainer", "proxy"}
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith("./") or source in COMPOSE["volumes"], volume  # named volumes are declared


def test_db_is_postgres_16_with_a_volume_a_healthcheck_and_no_public_port():
    db = SERVICES["db"]
    assert db["image"] == "postgres:16-alpine"
    assert "pgdata:/var/lib/postgresql/data" in db["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert "ports" not in db  # reachable only on the compose network
    # Passwords have no defaults: compose refuses to start without them in .env.
    for variable in ("POSTGRES_PASSWORD", "DASHBOARD_DB_PASSWORD"):
        assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", db["environment"][variable])


def test_db_init_creates_the_dashboard_role_from_the_mounted_sql():
    db = SERVICES["db"]
    assert "./deploy/initdb:/docker-entrypoint-initdb.d:ro" in db["volumes"]
    assert "./deploy/sql:/deploy/sql:ro" in db["volumes"]
    script = (ROOT / "deploy/initdb/10-dashboard-role.sh").read_text()
    assert "/deploy/sql/dashboard-role.sql" in script
    assert (ROOT / "deploy/sql/dashboard-role.sql").is_file()
    assert list((ROOT / "deploy/initdb").glob("*.sql")) == []  # the entrypoint would run them without variables


def test_dashboard_waits_for_a_healthy_db_and_the_migration():
    assert depends_on("dashboard") == {"db": "service_healthy", "migrate": "service_completed_successfully"}
    assert depends_on("migrate") == {"db": "service_healthy"}
    assert SERVICES["migrate"]["restart"] == "no"
    dashboard = SERVICES["dashboard"]
    assert "ports" not in dashboard and dashboard["expose"] == ["8866"]  # only through the proxy
    # Docker's health is the same answer Caddy's active check asks for (not a bare TCP connect).
    assert f"http://127.0.0.1:8866{HEALTH_URI}" in " ".join(dashboard["healthcheck"]["test"])


def test_dashboard_runs_voila_with_preheated_kernels():
    command = service_command("dashboard")
    assert command[:4] == [".venv/bin/python", "-m", "voila", "dashboards/digits.ipynb"]
    assert "--preheat_kernel=True" in command and "--port=8866" in command
    voila = yaml.safe_load((ROOT / "voila.json").read_text())  # read from WORKDIR /app, the repo root
    assert voila["VoilaConfiguration"]["preheat_kernel"] is True
    assert voila["MappingKernelManager"]["cull_idle_timeout"] > 0


def test_dashboard_uses_its_own_least_privilege_role_and_migrate_the_owner():
    env = env_example()
    dashboard_url = environment("dashboard")["DATABASE_URL"]
    assert dashboard_url.startswith(f"postgresql+psycopg2://{env['DASHBOARD_DB_USER']}:")
    assert env["POSTGRES_USER"] not in dashboard_url
    assert environment("migrate")["DATABASE_URL"].startswith(f"postgresql+psycopg2://{env['POSTGRES_USER']}:")
    assert service_command("migrate")[-2:] == ["--grant-to", env["DASHBOARD_DB_USER"]]
    assert dashboard_url.endswith("@db:5432/" + env["POSTGRES_DB"])


def test_lab_is_token_protected_from_the_environment():
    lab = SERVICES["lab"]
    assert re.fullmatch(r"\$\{LAB_TOKEN:\?[^}]+\}", lab["environment"]["JUPYTER_TOKEN"])
    assert not any("token=" in part.lower() for part in lab["command"])  # never blanked on the command line
    assert depends_on("lab") == {"db": "service_healthy"}


def test_trainer_runs_the_retrain_notebook_on_demand():
    trainer = SERVICES["trainer"]
    assert trainer["profiles"] == ["trainer"] and trainer["restart"] == "no"
    command = service_command("trainer")
    assert command[0] == ".venv/bin/papermill" and command[1] == RETRAIN_NOTEBOOK
    assert "reports:/app/reports" in trainer["volumes"] and "models:/app/models" in trainer["volumes"]


def test_proxy_is_caddy_with_https_in_front_of_dashboard_and_lab():
    proxy = SERVICES["proxy"]
    assert proxy["image"].startswith("caddy:2")
    assert {"80:80", "443:443"} <= set(proxy["ports"])
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    assert "caddy-data:/data" in proxy["volumes"]  # the local CA and certificates survive restarts
    env = environment("proxy")
    assert env["LAB_UPSTREAM"] == "lab:8888"
    assert "--port=8888" in service_command("lab")
    assert env["TLS"] == "internal" and env["SITE_ADDRESS"] == "localhost"


def dashboard_replicas(env: dict[str, str]) -> int:
    return int(interpolate(str(SERVICES["dashboard"]["deploy"]["replicas"]), env))


def test_compose_runs_dashboard_replicas_and_the_proxy_names_each_of_them():
    env = env_example()
    replicas = dashboard_replicas(env)
    assert replicas == int(env["DASHBOARD_REPLICAS"]) >= 2
    assert "container_name" not in SERVICES["dashboard"]  # one name cannot be given to N containers
    # Every replica shares the one database and the one models volume: a promotion reaches all.
    assert environment("dashboard")["DATABASE_URL"].endswith("@db:5432/" + env["POSTGRES_DB"])
    assert "models:/app/models" in SERVICES["dashboard"]["volumes"]
    # Caddy reaches the replicas from the compose network: its X-Forwarded-For names the visitor.
    trusted = environment("dashboard")["DIGITLIB_TRUSTED_PROXIES"].split(",")
    assert "172.16.0.0/12" in trusted and "0.0.0.0/0" not in trusted
    proxy = SERVICES["proxy"]
    assert proxy["entrypoint"] == ["sh", "/deploy/proxy-upstreams"]
    assert "./deploy/proxy-upstreams:/deploy/proxy-upstreams:ro" in proxy["volumes"]
    # The entrypoint as the container runs it: compose names replicas <project>-dashboard-<n>.
    for count in (replicas, 3):
        done = run_script(
            PROXY_UPSTREAMS,
            "sh",
            "-c",
            'printf %s "$DASHBOARD_UPSTREAMS"',
            env=environment("proxy", {**env, "DASHBOARD_REPLICAS": str(count)}),
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [f"{COMPOSE['name']}-dashboard-{i}:8866" for i in range(1, count + 1)]
        assert dashboard_replicas({**env, "DASHBOARD_REPLICAS": str(count)}) == count
    # Replicas on other hosts: an explicit list wins.
    hosts = "10.0.0.5:8866 10.0.0.6:8866"
    done = run_script(
        PROXY_UPSTREAMS,
        "sh",
        "-c",
        'printf %s "$DASHBOARD_UPSTREAMS"',
        env=environment("proxy", {**env, "DASHBOARD_UPSTREAMS": hosts}),
    )
    assert done.stdout == hosts
    refused = run_script(PROXY_UPSTREAMS, "true", env={"DASHBOARD_REPLICAS": "two"})
    assert refused.returncode == 2 and "DASHBOARD_REPLICAS must be a whole number" in refused.stderr


def test_caddyfile_serves_https_with_a_local_ca_by_default():
    sites = re.findall(r"^(\S+) \{$", CADDYFILE, flags=re.M)
    assert sites == ["{$SITE_ADDRESS:localhost}", "{$LAB_ADDRESS:localhost:8443}"]
    assert CADDYFILE.count("tls {$TLS:internal}") == 2
    assert "reverse_proxy {$DASHBOARD_UPSTREAMS:localhost:8866} {" in CADDYFILE
    assert "reverse_proxy {$LAB_UPSTREAM:localhost:8888}" in CADDYFILE
    assert CADDYFILE.count("{") == CADDYFILE.count("}")


def caddy_json(env: dict[str, str]) -> dict:
    """The Caddyfile as Caddy itself reads it (`caddy adapt`) with the proxy's environment."""
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.fail("caddy is missing: `make caddy` installs Debian's package")
    done = subprocess.run(
        [caddy, "adapt", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def reverse_proxies(node) -> list[dict]:
    if isinstance(node, dict):
        found = [node] if node.get("handler") == "reverse_proxy" else []
        return found + [p for value in node.values() for p in reverse_proxies(value)]
    if isinstance(node, list):
        return [p for value in node for p in reverse_proxies(value)]
    return []


def test_caddy_balances_the_replicas_sticky_with_active_health_checks():
    upstreams = " ".join(f"digitlab-dashboard-{i}:8866" for i in (1, 2, 3))
    env = {**environment("proxy"), "DASHBOARD_UPSTREAMS": upstreams}
    dashboard, lab = reverse_proxies(caddy_json(env))
    assert [u["dial"] for u in dashboard["upstreams"]] == upstreams.split()
    assert [u["dial"] for u in lab["upstreams"]] == ["lab:8888"]
    # Sticky by cookie: the page and its kernel's websocket reach the one replica running the kernel.
    assert dashboard["load_balancing"]["selection_policy"] == {"policy": "cookie", "name": "digitlab_replica"}
    active = dashboard["health_checks"]["active"]
    assert active["uri"] == HEALTH_URI and active["expect_status"] == 200
    assert active["interval"] <= 10e9 and active["timeout"] <= 5e9  # nanoseconds
    assert dashboard["health_checks"]["passive"]["fail_duration"] > 0
    assert dashboard["load_balancing"]["try_duration"] > 0  # a refused dial goes to another replica
    # No header_up touches X-Forwarded-For: Caddy sets it, the kernel caps read the client from it.
    assert "X-Forwarded-For" not in json.dumps(dashboard.get("headers", {}).get("request", {}))


# --- .env ----------------------------------------------------------------------------------------


def test_env_example_defines_every_variable_compose_uses():
    used = set(VARIABLE.findall((ROOT / "docker-compose.yml").read_text()))
    names = {name for name, _, _ in used}
    assert names <= set(env_example()), names - set(env_example())
    for service in SERVICES:
        if "command" in SERVICES[service]:
            service_command(service)  # interpolates without a missing required variable


def test_env_is_ignored_and_the_example_is_not():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0
    example = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT)
    assert example.returncode == 1
    secrets = {k: v for k, v in env_example().items() if k.endswith(("PASSWORD", "TOKEN"))}
    assert len(secrets) == 3 and all(v.startswith("change-me") for v in secrets.values())


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions(keyword: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(keyword + " ")]


def test_dockerfile_installs_cpu_torch_and_the_project_as_a_non_root_user():
    assert dockerfile_instructions("FROM") == ["python:3.11-slim"]
    runs = " ".join(dockerfile_instructions("RUN"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert "torch==2.14.1" in runs and "torchvision==0.29.1" in runs
    assert "pip install --extra-index-url https://download.pytorch.org/whl/cpu -e ." in runs
    assert "models/default ./models/default" in dockerfile_instructions("COPY")
    users = dockerfile_instructions("USER")
    assert users == ["digitlab"] and DOCKERFILE.index("USER digitlab") < DOCKERFILE.index("CMD ")
    assert dockerfile_instructions("WORKDIR") == ["/app"]


def test_dockerfile_default_command_is_the_dashboards():
    [cmd] = dockerfile_instructions("CMD")
    assert yaml.safe_load(cmd) == SERVICES["dashboard"]["command"]
    for service in ("migrate", "dashboard", "lab", "trainer"):
        assert SERVICES[service]["build"] == "." and SERVICES[service]["image"] == "digitlab:latest"


def test_dockerignore_keeps_secrets_and_local_data_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", "data", ".git"} <= set(ignored)


# --- Makefile: the same commands without Docker ----------------------------------------------


@pytest.mark.parametrize(
    ("service", "target", "variables"),
    [
        ("dashboard", "dashboard", {"DASHBOARD_IP": "0.0.0.0", "DASHBOARD_PORT": "8866"}),
        ("lab", "lab", {"LAB_IP": "0.0.0.0", "LAB_PORT": "8888"}),
        ("migrate", "migrate", {"GRANT_TO": "digitlab_dashboard"}),
        ("trainer", "trainer", {}),
        ("proxy", "proxy", {"CADDYFILE": "/etc/caddy/Caddyfile"}),
    ],
)
def test_compose_and_makefile_run_the_same_command(service, target, variables):
    assert service_command(service) == make_command(target, **variables)


def test_makefile_defaults_listen_on_localhost_only():
    assert "--Voila.ip=127.0.0.1" in make_command("dashboard")
    assert "--ip=127.0.0.1" in make_command("lab")


def test_make_db_runs_a_local_postgres_with_the_same_role_sql():
    assert make_command("db") == ["deploy/local-db.sh", "data/postgres", "5433"]
    script = (ROOT / "deploy/local-db.sh").read_text()
    assert "sql/dashboard-role.sql" in script and "initdb" in script and "pg_ctl" in script


def test_every_deployment_target_is_listed_in_make_help():
    listed = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    targets = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {"db", "migrate", "dashboard", "lab", "trainer", "proxy"} <= targets


# --- settings ------------------------------------------------------------------------------------


def test_docs_settings_table_lists_every_setting():
    page = (ROOT / "docs" / "dashboard.md").read_text()  # the README links to it
    table = page.split("## Settings", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    assert listed == {s.name for s in config.SETTINGS}


# --- secrets: deploy/check-env refuses the .env.example placeholders (issue 18) -----------------


def test_every_service_holding_a_secret_runs_the_check_first():
    assert dockerfile_instructions("ENTRYPOINT") == ['["/app/deploy/check-env"]']
    assert "deploy/check-env ./deploy/check-env" in dockerfile_instructions("COPY")
    for service in ("migrate", "dashboard", "lab", "trainer"):
        assert "entrypoint" not in SERVICES[service], service  # the image's: check-env, then the command
    db = SERVICES["db"]
    assert db["entrypoint"] == ["sh", "/deploy/check-env", "docker-entrypoint.sh"] and db["command"] == ["postgres"]
    assert "./deploy/check-env:/deploy/check-env:ro" in db["volumes"]


@pytest.mark.parametrize("service", ["db", "migrate", "dashboard", "lab", "trainer"])
def test_a_service_refuses_the_example_secrets_and_starts_with_real_ones(service):
    """check-env with the environment compose gives the service, as its entrypoint runs it."""
    refused = run_script(CHECK_ENV, "echo", "started", env=environment(service, env_example()))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "placeholder" in refused.stderr and "refusing to start" in refused.stderr
    for secret in ("change-me-owner-password", "change-me-dashboard-password", "change-me-long-random-token"):
        assert secret not in refused.stderr  # names the variable, never shows a value
    started = run_script(CHECK_ENV, "echo", "started", env=environment(service, good_env()))
    assert started.returncode == 0, started.stderr
    assert started.stdout == "started\n"


def test_check_env_names_each_placeholder_in_the_env_file(tmp_path):
    done = run_script(CHECK_ENV, "--env-file", str(ROOT / ".env.example"), env={})
    assert done.returncode == 2
    named = set(re.findall(r"check-env: (\w+) still holds the \.env\.example placeholder", done.stderr))
    assert named == {"POSTGRES_PASSWORD", "DASHBOARD_DB_PASSWORD", "LAB_TOKEN"}
    assert "fix the 3 problem(s) above in" in done.stderr and "token_urlsafe" in done.stderr
    # Filled in, the same file passes; compose's own order holds (the environment overrides .env).
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in good_env().items()))
    assert run_script(CHECK_ENV, "--env-file", str(env_file), env={}).returncode == 0
    overridden = run_script(CHECK_ENV, "--env-file", str(env_file), env={"LAB_TOKEN": "change-me-long-random-token"})
    assert overridden.returncode == 2 and "LAB_TOKEN still holds" in overridden.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LAB_TOKEN", "short-token", "LAB_TOKEN is 11 characters; secrets need at least 16"),
        ("JUPYTER_TOKEN", "", "JUPYTER_TOKEN is 0 characters"),
        ("POSTGRES_PASSWORD", "CHANGEME-please-now", "POSTGRES_PASSWORD still holds the .env.example placeholder"),
        ("DATABASE_URL", "postgresql+psycopg2://u:hunter2@db:5432/x", "the password in DATABASE_URL is 7 characters"),
        ("DATABASE_URL", "postgresql+psycopg2://u:change-me-dashboard-password@db/x", "DATABASE_URL still holds"),
    ],
)
def test_check_env_refuses_short_or_placeholder_secrets(variable, value, message):
    done = run_script(CHECK_ENV, "echo", "started", env={variable: value})
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr
    assert not value or value not in done.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": "sqlite:////app/data/feedback.db"},  # no password: nothing to check
        {"DATABASE_URL": "postgresql+psycopg2://dashboard@db:5432/digitlab"},  # trust or peer auth
        {"DIGITLIB_MODEL": "", "TLS": "internal", "LAB_TOKEN": "x" * 16},
    ],
)
def test_check_env_lets_safe_settings_through(env):
    done = run_script(CHECK_ENV, "echo", "started", env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "started\n", "")


def test_check_env_without_the_env_file_says_how_to_make_it(tmp_path):
    done = run_script(CHECK_ENV, "--env-file", str(tmp_path / ".env"), env={})
    assert done.returncode == 2 and "cp .env.example" in done.stderr


def test_make_up_checks_the_env_file_before_compose(tmp_path):
    lines = subprocess.run(
        ["make", "--no-print-directory", "-n", "up"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert lines == ["deploy/check-env --env-file .env", "docker compose --env-file .env up -d --build"]
    # The real target, as an operator runs it with the example copied unchanged: refused.
    env_file = tmp_path / ".env"
    shutil.copy(ROOT / ".env.example", env_file)
    done = subprocess.run(
        ["make", "--no-print-directory", "check-env", f"ENV_FILE={env_file}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and "LAB_TOKEN still holds the .env.example placeholder" in done.stderr


# --- the Caddyfile run by caddy itself, in front of a stand-in replica ----------------------------


@pytest.mark.slow
def test_caddy_forwards_the_visitors_address_and_pins_it_to_a_replica(tmp_path):
    """A spoofed X-Forwarded-For never reaches a replica as the last hop: the kernel caps trust that."""
    import threading
    import time
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dashboard_server import free_port

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    replica = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    upstream = f"127.0.0.1:{replica.server_address[1]}"
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "SITE_ADDRESS": f"http://127.0.0.1:{port}",
        "LAB_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "CADDY_ADMIN": f"127.0.0.1:{free_port()}",
        "DASHBOARD_UPSTREAMS": upstream,
    }
    caddy_json(env)  # fails clearly without caddy
    caddy = subprocess.Popen(
        ["caddy", "run", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{HEALTH_URI}", headers={"X-Forwarded-For": "6.6.6.6"})
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    seen, headers = json.load(response), response.headers
                break
            except OSError:
                assert time.monotonic() < deadline and caddy.poll() is None, "caddy did not answer"
                time.sleep(0.2)
    finally:
        caddy.terminate()
        caddy.wait(timeout=10)
        replica.shutdown()
    assert seen["x-forwarded-for"].split(",")[-1].strip() == "127.0.0.1"  # the visitor, as Caddy saw it
    assert seen["x-forwarded-proto"] == "http" and seen["host"] == f"127.0.0.1:{port}"
    assert headers["X-Digitlab-Replica"] == upstream
    assert headers["Set-Cookie"].startswith("digitlab_replica=")  # sticky from the first answer
