"""The documents name only what exists: every HTTP route, ``BDI_*`` variable and MQTT topic
in README.md, docs/CONTRACT.md, docs/OPERATIONS.md and deploy/README.md is checked against
the code, and the contract names every route the API serves. OPERATIONS.md's health codes
and metric names are checked against a running HTTP adapter."""

# ruff: noqa: F811

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from adapters.http.routes_console import CONSOLE_PATHS
from adapters.http.routes_guard import PUBLIC_PATHS
from adapters.mqtt.topics import Topics
from agent.commands import COMMANDS
from agent.config import LEGACY_NAMES, Settings
from agent.config_checks import NOT_SETTINGS
from tests.adapters.test_http_support import Server, serve  # noqa: F401 (fixture)
from tests.support import ROOT

DOCS = ["README.md", "docs/CONTRACT.md", "docs/OPERATIONS.md", "deploy/README.md"]
ROUTE = re.compile(r"`(GET|POST|DELETE|PUT|PATCH) (/[^`\s]*)`")
ENV_NAME = re.compile(r"\bBDI_[A-Z0-9_]*[A-Z0-9]_*")
TOPIC = re.compile(r"`((?:\$share/[^/`]+/)?(?:bdi|<prefix>)/[^`\s]+)`")


def text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    """(method, path) of every route the HTTP adapter serves, FastAPI's own included."""
    from adapters.http.adapter import create_app
    from agent.bootstrap import bootstrap
    from tests.conftest import agent_settings

    app = create_app(bootstrap(agent_settings(tmp_path_factory.mktemp("docs"))))
    served = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    return served | {("GET", path) for path in PUBLIC_PATHS}


@pytest.mark.parametrize("doc", DOCS)
def test_every_route_named_exists(doc: str, routes: set[tuple[str, str]]) -> None:
    named = set(ROUTE.findall(text(doc)))
    assert named <= routes, sorted(named - routes)


def test_the_contract_names_every_route(routes: set[tuple[str, str]]) -> None:
    contract = text("docs/CONTRACT.md")
    missing = [f"{m} {p}" for m, p in sorted(routes) if f"{m} {p}`" not in contract]
    assert not [r for r in missing if not r.endswith("/docs/oauth2-redirect")], missing


def test_the_public_routes_named_are_the_public_routes() -> None:
    for doc in ("README.md", "docs/CONTRACT.md"):
        sentence = re.split(r"\.\s", text(doc).split("except the public", 1)[1], maxsplit=1)[0]
        # The console's page and files are public too (the page asks for the key): /ui/.
        assert "/ui/" in CONSOLE_PATHS
        assert set(re.findall(r"`(/[^`]*)`", sentence)) == PUBLIC_PATHS | {"/ui/"}, doc


def _setting_exists(name: str) -> bool:
    parts = name.removeprefix("BDI_").rstrip("_").lower().split("__")
    model: Any = Settings
    for part in parts:
        fields = model.model_fields
        if part not in fields:
            return False
        model = fields[part].annotation
    # A name ending in "__" (BDI_MQTT__) must be a section, any other a setting.
    is_section = isinstance(model, type) and issubclass(model, BaseModel)
    return is_section == name.endswith("__")


@pytest.mark.parametrize("doc", [*DOCS, "deploy/agent.env.example", "deploy/cell.env"])
def test_every_environment_name_is_a_setting(doc: str) -> None:
    known = NOT_SETTINGS | set(LEGACY_NAMES)
    names = set(ENV_NAME.findall(text(doc)))
    unknown = sorted(n for n in names if n not in known and not _setting_exists(n))
    assert not unknown, unknown


def _code_topics() -> list[list[str]]:
    """The topics the adapter uses, ``*`` for each variable level."""
    own = Topics.of("bdi", "*", "*", None)
    topics = [own.status, own.health, own.stats, own.result("*"), own.result("*", via_pool=True)]
    topics += [own.roi("*", "*", leaf) for leaf in ("state", "last", "alert")]
    topics += [t.replace("+", "*") for t in own.subscriptions()]
    return [t.split("/") for t in topics]


def _doc_topics(doc: str) -> list[str]:
    out = []
    for topic in TOPIC.findall(text(doc)):
        if topic.startswith("bdi/replies/"):
            continue  # the ACL's reply area, checked below
        topic = topic.replace("<prefix>", "bdi").rstrip("/")
        out += [topic.replace("[_batch]", ""), topic.replace("[_batch]", "_batch")]
    return sorted(set(out))


def _matches(doc_topic: str, code: list[str]) -> bool:
    levels = [re.sub(r"^<[^>]+>$", "*", level) for level in doc_topic.split("/")]
    if levels[0] == "$share":
        levels[1] = "*"  # the group's name, whatever the example calls it
    if levels == ["bdi", "*"]:
        return True  # the prefix itself ("Prefix `bdi/<agent_id>`")
    if len(levels) != len(code):
        return False
    if any(c not in ("*", d) for d, c in zip(levels, code, strict=True)):
        return False
    # A command named in a topic is a command of the agent.
    if "cmd" in levels[:-1] or "result" in levels[:-1]:
        return levels[-1] == "*" or levels[-1] in COMMANDS
    return True


@pytest.mark.parametrize("doc", ["README.md", "docs/CONTRACT.md", "docs/OPERATIONS.md"])
def test_every_topic_named_is_one_the_agent_uses(doc: str) -> None:
    code = _code_topics()
    topics = _doc_topics(doc)
    assert topics, f"{doc} names no topic"
    strange = [t for t in topics if not any(_matches(t, c) for c in code)]
    assert not strange, strange


def test_the_reply_area_the_docs_promise_is_in_the_acl() -> None:
    acl = text("configs/mosquitto.acl")
    assert "pattern read bdi/replies/%u/#" in acl and "topic readwrite bdi/#" in acl
    assert "bdi/replies/" in text("docs/OPERATIONS.md")


def test_benchmark_names_in_the_docs_are_the_modules() -> None:
    from tests.bench.run_all import discover

    line = text("docs/BENCHMARKS.md").split("the names are", 1)[1].split(")", 1)[0]
    assert sorted(re.findall(r"`(\w+)`", line)) == sorted(discover())


def test_no_document_cites_a_file_that_is_not_there() -> None:
    for doc in DOCS:
        for cited in re.findall(r"`((?:\.\./)?(?:docs|deploy|configs)/[\w./-]+\.\w+)`", text(doc)):
            base = (ROOT / doc).parent if cited.startswith("..") else ROOT
            assert (base / cited).resolve().is_file() or (ROOT / cited).is_file(), (doc, cited)
    assert "CONTRACT.md" in text("deploy/README.md") and (ROOT / "docs/CONTRACT.md").is_file()


def test_the_makefile_points_at_sections_that_exist() -> None:
    readme = text("README.md")
    for section in re.findall(r'see README, "([^"]+)"', text("Makefile")):
        assert f"## {section}" in readme, section


def _health_table() -> dict[str, int]:
    """OPERATIONS.md's health table: status -> the HTTP code it promises."""
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \|", text("docs/OPERATIONS.md"), re.MULTILINE)
    return {status: int(code) for status, code in rows}


def test_each_health_status_gets_the_http_code_the_docs_give(
    serve: Callable[..., Server],
) -> None:
    table = _health_table()
    assert set(table) == {"ok", "degraded", "loading", "error"}, table
    server = serve()
    services, bus = server.agent.services, server.agent.bus
    states = {  # status -> (the model's state, MQTT's state) that gives it
        "ok": ("ready", "disabled"),
        "degraded": ("ready", "disconnected"),
        "loading": ("loading", "disabled"),
        "error": ("error", "disabled"),
    }
    for status, (model_state, mqtt_state) in states.items():
        services.model_state, services.model_error = model_state, "weights file x not found"
        bus.mqtt_state = mqtt_state
        response = server.client.get("/health")
        assert response.json()["status"] == status, response.json()
        assert response.status_code == table[status], (status, response.status_code)
    services.model_state = "ready"


def test_the_metrics_named_are_the_ones_served(serve: Callable[..., Server]) -> None:
    """Every metric of the monitoring table and of the suggested alerts, with its type."""
    operations = text("docs/OPERATIONS.md")
    section = operations.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    served = serve().client.get("/metrics").text
    types = dict(re.findall(r"^# TYPE (bdi_\w+) (\w+)$", served, re.MULTILINE))
    table = re.findall(r"^\| `(bdi_\w+)` \| (\w+) \|", section, re.MULTILINE)
    assert table
    for name, kind in table:
        assert types.get(name) == kind, (name, kind, types.get(name))
    for name in set(re.findall(r"\b(bdi_\w+)", section)):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert base in types, name
