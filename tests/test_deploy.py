"""The deployment files, checked statically (no Docker engine here): docker-compose.yml, the
Dockerfile, the Caddyfile and .env.example, and that every service's command is also a Makefile
target that runs the same command without Docker.
"""

from __future__ import annotations

import re
import shlex
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
VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


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


def environment(service: str) -> dict[str, str]:
    return {k: interpolate(str(v), env_example()) for k, v in SERVICES[service]["environment"].items()}


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
    assert "8866" in " ".join(dashboard["healthcheck"]["test"])


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
    assert env["DASHBOARD_UPSTREAM"] == "dashboard:8866" and env["LAB_UPSTREAM"] == "lab:8888"
    assert "--port=8888" in service_command("lab")
    assert env["TLS"] == "internal" and env["SITE_ADDRESS"] == "localhost"


def test_caddyfile_serves_https_with_a_local_ca_by_default():
    sites = re.findall(r"^(\S+) \{$", CADDYFILE, flags=re.M)
    assert sites == ["{$SITE_ADDRESS:localhost}", "{$LAB_ADDRESS:localhost:8443}"]
    assert CADDYFILE.count("tls {$TLS:internal}") == 2
    assert "reverse_proxy {$DASHBOARD_UPSTREAM:localhost:8866}" in CADDYFILE
    assert "reverse_proxy {$LAB_UPSTREAM:localhost:8888}" in CADDYFILE
    assert CADDYFILE.count("{") == CADDYFILE.count("}")


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


def test_readme_settings_table_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    assert listed == {s.name for s in config.SETTINGS}
