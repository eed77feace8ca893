"""Deployment files, checked as far as a machine with no Docker engine allows."""

from __future__ import annotations

import configparser
import shlex

import pytest
import yaml

from hub.cli import build_parser


@pytest.fixture(scope="module")
def compose(repo_root) -> dict:
    return yaml.safe_load((repo_root / "deploy" / "docker-compose.yml").read_text())


@pytest.mark.parametrize("name", ["couchdb-primary", "couchdb-standby"])
def test_couchdb_services(compose, name):
    service = compose["services"][name]
    assert service["image"] == "couchdb:3"
    env = service["environment"]
    assert {"COUCHDB_USER", "COUCHDB_PASSWORD", "COUCHDB_SECRET"} <= set(env)
    assert any(v.endswith(":/opt/couchdb/data") for v in service["volumes"])
    assert "/_up" in " ".join(service["healthcheck"]["test"])
    assert all(p.startswith("127.0.0.1:") for p in service["ports"]), "never expose 5984 publicly"
    volume = service["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def test_hub_service(compose, repo_root):
    hub = compose["services"]["hub"]
    assert (
        repo_root / hub["build"]["context"].replace("..", ".") / hub["build"]["dockerfile"]
    ).exists()
    assert hub["depends_on"]["couchdb-primary"]["condition"] == "service_healthy"
    assert hub["depends_on"]["couchdb-standby"]["condition"] == "service_healthy"
    urls = hub["environment"]["COUCHFARM_URL"].split(",")
    assert urls == ["http://couchdb-primary:5984", "http://couchdb-standby:5984"]
    assert hub["environment"]["COUCHFARM_USER"] == "hub"
    assert hub["ports"] == ["127.0.0.1:8080:8080"]


def test_entrypoint_commands_parse(repo_root):
    """Every hub command the container runs is one the CLI accepts."""
    script = (repo_root / "deploy" / "hub-entrypoint.sh").read_text()
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        if words and words[0] in ("hub", "exec") and "hub" in words[:2]:
            commands.append(words[words.index("hub") + 1 :])
    assert [c[0] for c in commands] == ["init", "serve"]
    parser = build_parser()
    init = parser.parse_args(commands[0])
    assert init.standby and init.password_from
    serve = parser.parse_args(commands[1])
    assert serve.portal_host == "0.0.0.0" and serve.portal_port == 8080


def test_dockerfile_copies_what_the_hub_needs(repo_root):
    dockerfile = (repo_root / "deploy" / "Dockerfile").read_text()
    for folder in ("hub", "design_docs", "pyproject.toml"):
        assert f"COPY {folder}" in dockerfile or folder in dockerfile
    assert "USER couchfarm" in dockerfile


def test_systemd_unit(repo_root):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((repo_root / "deploy" / "couchfarm-hub.service").read_text())
    exec_start = shlex.split(unit["Service"]["ExecStart"])
    assert exec_start[0].endswith("/hub")
    args = build_parser().parse_args(exec_start[1:])
    assert args.command == "serve"
    assert unit["Service"]["User"] == "couchfarm"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_env_example_names_every_required_variable(repo_root, compose):
    example = (repo_root / "deploy" / ".env.example").read_text()
    text = yaml.safe_dump(compose)
    for var in ("COUCHDB_USER", "COUCHDB_PASSWORD", "COUCHDB_SECRET", "HUB_PASSWORD"):
        assert f"{var}=" in example and var in text
