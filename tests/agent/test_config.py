"""Config parsing: every bad-config fixture fails with its exact message; good ones load."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, parse_config
from agent.daemon import check_specs, embedded_config_text

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"
EXAMPLES = Path(__file__).parent.parent.parent / "examples"
BAD = sorted((FIXTURES / "bad").glob("*.yml"))


def test_there_are_bad_fixtures() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_fails_with_its_message(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fixture's first line is ``# error: <the exact first error>``."""
    expected = path.read_text().splitlines()[0].removeprefix("# error: ")
    monkeypatch.chdir(path.parent)
    monkeypatch.delenv("SEISMO_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(Path(path.name))
    assert info.value.errors[0] == expected


def test_blackbox_example_loads_unchanged_with_icmp_warning() -> None:
    config, warnings = load_config(EXAMPLES / "blackbox-example.yml")
    assert len(config.modules) == 16
    assert config.modules["http_2xx_example"].http.preferred_ip_protocol == "ip4"
    assert config.modules["irc_banner_example"].tcp.query_response[2].send == "PONG ${1}"
    assert config.modules["dns_tcp_example"].dns.transport_protocol == "tcp"
    assert len(warnings) == 1
    assert "icmp_example" in warnings[0] and "not supported" in warnings[0]
    assert warnings[0].startswith(str(EXAMPLES / "blackbox-example.yml") + ":")


def test_env_expansion_with_default_and_escape() -> None:
    text = """
agent:
  region: ${REGION}
  zone: ${ZONE:-z-default}
modules:
  web: {prober: http, http: {bearer_token: "$$literal-${TOKEN}"}}
checks:
  - {name: c, module: web, target: "http://${HOST}:8080/"}
"""
    config, _ = parse_config(text, "t.yml", {"REGION": "eu-west", "TOKEN": "abc", "HOST": "h1"})
    assert config.agent.region == "eu-west"
    assert config.agent.zone == "z-default"
    assert config.modules["web"].http.bearer_token == "$literal-abc"
    assert config.checks[0].target == "http://h1:8080/"


def test_identity_falls_back_to_environment_then_hostname() -> None:
    config, _ = parse_config("agent: {zone: z1}", "t.yml", {})
    ident = config.agent.identity(
        {"SEISMO_REGION": "r-env", "SEISMO_ZONE": "ignored", "SEISMO_NODE": "node-7"}
    )
    assert (ident.region, ident.zone, ident.node) == ("r-env", "z1", "node-7")
    assert config.agent.identity({}).node  # the host name


def test_effective_timeout_order() -> None:
    text = """
modules:
  slow: {prober: http, timeout: 4s}
  plain: {prober: http}
checks:
  - {name: a, module: slow, target: http://x/, interval: 10s}
  - {name: b, module: slow, target: http://x/, interval: 10s, timeout: 2s}
  - {name: c, module: plain, target: http://x/, interval: 3s}
  - {name: d, module: plain, target: http://x/, interval: 60s}
"""
    config, _ = parse_config(text, "t.yml", {})
    got = {s.name: s.timeout for s in check_specs(config)}
    assert got == {"a": 4.0, "b": 2.0, "c": 3.0, "d": 10.0}


def test_all_errors_are_reported_not_just_the_first() -> None:
    text = """
modules:
  a: {prober: http, bogus: 1}
  b: {prober: tcp, timeout: never}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.yml", {})
    assert len(info.value.errors) == 2
    assert info.value.errors[0].startswith("t.yml:3: modules.a.bogus: unknown key")
    assert info.value.errors[1].startswith("t.yml:4: modules.b.timeout:")


def test_embedded_default_is_valid() -> None:
    env = {
        "DEMO_HTTP_PORT": "1",
        "DEMO_HTTPS_PORT": "2",
        "DEMO_DNS_PORT": "3",
        "DEMO_CA_FILE": "/nonexistent/ca.pem",
    }
    config, warnings = parse_config(embedded_config_text(), "<embedded>", env)
    assert warnings == []
    assert {c.module for c in config.checks} <= set(config.modules)
    assert {m.prober for m in config.modules.values()} == {"http", "tcp", "tls", "dns"}
