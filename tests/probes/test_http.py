"""The http probe against real loopback servers (aiohttp, trustme certificates, a real proxy)."""

from __future__ import annotations

import json
import socket
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from probes import http
from probes.connection import Connector
from probes.modules import Module
from probes.result import ProbeResult, Reason
from probes.runner import run_probe
from tests.probes.http_servers import BODY, Proxy, app_server, make_app

FIXTURES = Path(__file__).parent.parent / "fixtures" / "blackbox"
TIMEOUT = 10.0


def module(**http_cfg: Any) -> Module:
    """An http module; loopback tests prefer IPv4 (``localhost`` is IPv4-only in /etc/hosts)."""
    return Module.model_validate(
        {"prober": "http", "http": {"preferred_ip_protocol": "ip4", **http_cfg}}
    )


async def probe(target: str, timeout: float = TIMEOUT, **http_cfg: Any) -> ProbeResult:
    return await run_probe(module(**http_cfg), target, timeout, connector=Connector())


def metric(result: ProbeResult, name: str, **labels: str) -> float | None:
    wanted = tuple(labels.items())
    for m in result.measurements:
        if m.name == name and m.labels == wanted:
            return m.value
    return None


def names(result: ProbeResult) -> set[str]:
    return {m.name for m in result.measurements}


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with app_server(make_app()) as bound:
        yield bound


@pytest.fixture
async def tls_port(server_ssl: ssl.SSLContext) -> AsyncIterator[int]:
    async with app_server(make_app(), ssl_context=server_ssl) as bound:
        yield bound


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A bound, never-listening port: connecting is refused, and no one else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# --- status, phases, gauges ---------------------------------------------------------------


async def test_200_sets_blackbox_gauges(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/")
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_http_status_code") == 200
    assert metric(result, "probe_http_content_length") == len(BODY)
    assert metric(result, "probe_http_uncompressed_body_length") == len(BODY)
    assert metric(result, "probe_http_version") == 1.1
    assert metric(result, "probe_http_ssl") == 0
    assert metric(result, "probe_http_redirects") == 0
    assert metric(result, "probe_http_last_modified_timestamp_seconds") == 1445412480
    assert metric(result, "probe_ip_protocol") == 4
    for phase in ("connect", "processing", "transfer"):
        assert result.phases[phase] > 0, phase
        assert metric(result, "probe_http_duration_seconds", phase=phase) == result.phases[phase]
    assert not result.phases.get("tls")
    assert metric(result, "probe_http_duration_seconds", phase="tls") == 0


async def test_target_without_scheme_is_http(port: int) -> None:
    result = await probe(f"127.0.0.1:{port}")
    assert result.reason is Reason.SUCCESS, result.detail


async def test_404_fails_unless_valid(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/status/404")
    assert result.reason is Reason.HTTP_STATUS
    assert metric(result, "probe_http_status_code") == 404
    allowed = await probe(f"http://127.0.0.1:{port}/status/404", valid_status_codes=[404])
    assert allowed.reason is Reason.SUCCESS, allowed.detail


async def test_valid_http_versions(port: int) -> None:
    ok = await probe(f"http://127.0.0.1:{port}/", valid_http_versions=["HTTP/1.1"])
    assert ok.reason is Reason.SUCCESS, ok.detail
    bad = await probe(f"http://127.0.0.1:{port}/", valid_http_versions=["HTTP/2.0"])
    assert bad.reason is Reason.HTTP_VERSION


async def test_connection_refused_keeps_every_gauge(refused_port: int) -> None:
    result = await probe(f"http://127.0.0.1:{refused_port}/")
    assert result.reason is Reason.CONNECT_REFUSED
    assert metric(result, "probe_http_status_code") == 0
    for phase in http.PHASES:
        assert metric(result, "probe_http_duration_seconds", phase=phase) is not None


async def test_slow_response_times_out_in_processing(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/slow", timeout=0.5)
    assert result.reason is Reason.TIMEOUT
    assert "during processing" in result.detail
    assert "processing" in result.phases
    assert result.phases["connect"] > 0


async def test_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with app_server(make_app(), host="::1") as bound:
        result = await probe(f"http://[::1]:{bound}/", preferred_ip_protocol="ip6")
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_ip_protocol") == 6
    assert result.peer == f"[::1]:{bound}"


# --- redirects ----------------------------------------------------------------------------


async def test_redirects_followed_and_counted(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/redirect/3")
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_http_redirects") == 3
    assert metric(result, "probe_http_status_code") == 200
    assert metric(result, "probe_http_uncompressed_body_length") == len("arrived")
    assert result.extra["final_url"] == f"http://127.0.0.1:{port}/redirect/0"


async def test_redirect_not_followed(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/redirect/3", follow_redirects=False)
    assert result.reason is Reason.HTTP_STATUS
    assert metric(result, "probe_http_status_code") == 302
    assert metric(result, "probe_http_redirects") == 1  # blackbox counts the refused one
    kept = await probe(
        f"http://127.0.0.1:{port}/redirect/3", follow_redirects=False, valid_status_codes=[302]
    )
    assert kept.reason is Reason.SUCCESS, kept.detail


async def test_redirect_loop(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/loop")
    assert result.reason is Reason.HTTP_TOO_MANY_REDIRECTS
    assert metric(result, "probe_http_redirects") == 11  # as blackbox: 10 followed, 1 refused
    assert metric(result, "probe_http_status_code") == 302
    fewer = await probe(f"http://127.0.0.1:{port}/loop", max_redirects=2)
    assert fewer.reason is Reason.HTTP_TOO_MANY_REDIRECTS
    assert metric(fewer, "probe_http_redirects") == 3


async def test_relative_redirect(port: int) -> None:
    result = await probe(
        f"http://127.0.0.1:{port}/rel/start", fail_if_body_not_matches_regexp=["query=x=1"]
    )
    assert result.reason is Reason.SUCCESS, result.detail
    assert result.extra["final_url"] == f"http://127.0.0.1:{port}/rel/target?x=1"


async def test_cross_host_redirect_resolves_again(port: int) -> None:
    to = f"http://localhost:{port}/"
    result = await probe(f"http://127.0.0.1:{port}/elsewhere?to={to}")
    assert result.reason is Reason.SUCCESS, result.detail
    assert result.extra["final_url"] == to
    # the resolve phase now includes the lookup of "localhost"; the gauges keep the first one
    assert result.phases["resolve"] > metric(result, "probe_dns_lookup_time_seconds")  # type: ignore[operator]


async def test_cookies_carry_across_redirects(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/cookie/set")
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_http_redirects") == 1
    configured = await probe(
        f"http://127.0.0.1:{port}/cookie/check", headers={"Cookie": "session=abc123"}
    )
    assert configured.reason is Reason.SUCCESS, configured.detail
    merged = await probe(f"http://127.0.0.1:{port}/cookie/set", headers={"Cookie": "theme=dark"})
    assert merged.reason is Reason.SUCCESS, merged.detail


# --- regexes ------------------------------------------------------------------------------


async def test_body_regexes(port: int) -> None:
    url = f"http://127.0.0.1:{port}/"
    ok = await probe(
        url, fail_if_body_not_matches_regexp=["hello"], fail_if_body_matches_regexp=["error"]
    )
    assert ok.reason is Reason.SUCCESS, ok.detail
    assert metric(ok, "probe_failed_due_to_regex") == 0
    matched = await probe(url, fail_if_body_matches_regexp=["hel+o"])
    assert matched.reason is Reason.BODY_MISMATCH
    assert metric(matched, "probe_failed_due_to_regex") == 1
    missing = await probe(url, fail_if_body_not_matches_regexp=["goodbye"])
    assert missing.reason is Reason.BODY_MISMATCH


async def test_header_regexes_and_allow_missing(port: int) -> None:
    url = f"http://127.0.0.1:{port}/"
    hit = {"header": "x-cache", "regexp": "HIT"}
    ok = await probe(url, fail_if_header_not_matches=[hit])
    assert ok.reason is Reason.SUCCESS, ok.detail
    bad = await probe(url, fail_if_header_matches=[hit])
    assert bad.reason is Reason.HEADER_MISMATCH
    assert metric(bad, "probe_failed_due_to_regex") == 1
    absent = {"header": "X-Absent", "regexp": "."}
    assert (await probe(url, fail_if_header_not_matches=[absent])).reason is Reason.HEADER_MISMATCH
    allowed = await probe(url, fail_if_header_not_matches=[{**absent, "allow_missing": True}])
    assert allowed.reason is Reason.SUCCESS, allowed.detail


# --- request shape ------------------------------------------------------------------------


async def test_basic_auth(port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{port}/basic"
    assert (await probe(url)).reason is Reason.HTTP_STATUS
    ok = await probe(url, basic_auth={"username": "user", "password": "s3cret"})
    assert ok.reason is Reason.SUCCESS, ok.detail
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    from_file = await probe(url, basic_auth={"username": "user", "password_file": str(secret)})
    assert from_file.reason is Reason.SUCCESS, from_file.detail


async def test_bearer_token(port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{port}/bearer"
    assert (await probe(url)).reason is Reason.HTTP_STATUS
    assert (await probe(url, bearer_token="t0ken")).reason is Reason.SUCCESS
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    assert (await probe(url, bearer_token_file=str(token))).reason is Reason.SUCCESS
    auth = {"type": "Bearer", "credentials": "t0ken"}
    assert (await probe(url, authorization=auth)).reason is Reason.SUCCESS


async def test_a_rotated_secret_file_is_sent_at_the_next_probe(port: int, tmp_path: Path) -> None:
    # one module and one connector, as a check has: the first request is memoised, and the
    # memo must follow the file's content, not keep the first token
    token = tmp_path / "token"
    token.write_text("old\n")
    mod = module(bearer_token_file=str(token))
    connector = Connector()
    url = f"http://127.0.0.1:{port}/bearer"
    assert (await run_probe(mod, url, TIMEOUT, connector=connector)).reason is Reason.HTTP_STATUS
    token.write_text("t0ken\n")
    assert (await run_probe(mod, url, TIMEOUT, connector=connector)).reason is Reason.SUCCESS
    token.write_text("old\n")
    assert (await run_probe(mod, url, TIMEOUT, connector=connector)).reason is Reason.HTTP_STATUS


async def test_missing_secret_file_is_config_error(port: int, tmp_path: Path) -> None:
    result = await probe(f"http://127.0.0.1:{port}/bearer", bearer_token_file=str(tmp_path / "no"))
    assert result.reason is Reason.CONFIG_ERROR


async def test_post_with_body_and_host_header(port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{port}/echo"
    result = await probe(
        url,
        method="POST",
        body="ping",
        headers={"Host": "shop.example"},
        fail_if_body_not_matches_regexp=["^POST ping$"],
        fail_if_header_not_matches=[{"header": "X-Host", "regexp": "^shop.example$"}],
    )
    assert result.reason is Reason.SUCCESS, result.detail
    payload = tmp_path / "body.json"
    payload.write_text('{"a": 1}')
    from_file = await probe(
        url, method="PUT", body_file=str(payload), fail_if_body_not_matches_regexp=['PUT \\{"a"']
    )
    assert from_file.reason is Reason.SUCCESS, from_file.detail


async def test_head(port: int) -> None:
    result = await probe(
        f"http://127.0.0.1:{port}/echo",
        method="HEAD",
        fail_if_header_not_matches=[{"header": "X-Method", "regexp": "HEAD"}],
    )
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_http_uncompressed_body_length") == 0


@pytest.mark.parametrize("kind", ["gzip", "deflate"])
async def test_compression(port: int, kind: str) -> None:
    url = f"http://127.0.0.1:{port}/compressed/{kind}"
    result = await probe(url, compression=kind, fail_if_body_not_matches_regexp=[f"^({BODY})+$"])
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_http_uncompressed_body_length") == len(BODY) * 100
    assert metric(result, "probe_http_content_length") < len(BODY) * 100  # type: ignore[operator]


async def test_compression_mismatch_is_a_protocol_error(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/", compression="gzip")
    assert result.reason is Reason.HTTP_PROTOCOL_ERROR


async def test_brotli_without_module_is_config_error(port: int) -> None:
    try:
        import brotli  # noqa: F401
    except ImportError:
        result = await probe(f"http://127.0.0.1:{port}/", compression="br")
        assert result.reason is Reason.CONFIG_ERROR
        assert "brotli" in result.detail
    else:
        pytest.skip("brotli is installed")


async def test_oauth2_is_config_error(port: int) -> None:
    oauth2 = {"client_id": "x", "client_secret": "y", "token_url": "http://127.0.0.1:1/token"}
    result = await probe(f"http://127.0.0.1:{port}/", oauth2=oauth2)
    assert result.reason is Reason.CONFIG_ERROR
    assert result.detail == "oauth2 is not supported by seismo yet"


# --- TLS ----------------------------------------------------------------------------------


async def test_https_valid(tls_port: int, ca_file: str) -> None:
    result = await probe(f"https://localhost:{tls_port}/", tls_config={"ca_file": ca_file})
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_http_ssl") == 1
    assert result.phases["connect"] > 0
    assert result.phases["tls"] > 0
    assert metric(result, "probe_http_duration_seconds", phase="tls") == result.phases["tls"]
    assert result.tls is not None


async def test_https_wrong_ca(tls_port: int, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    result = await probe(f"https://127.0.0.1:{tls_port}/", tls_config={"ca_file": str(other)})
    assert result.reason is Reason.TLS_UNTRUSTED
    assert metric(result, "probe_http_ssl") == 0


async def test_insecure_skip_verify(tls_port: int) -> None:
    result = await probe(
        f"https://127.0.0.1:{tls_port}/", tls_config={"insecure_skip_verify": True}
    )
    assert result.reason is Reason.SUCCESS, result.detail


async def test_fail_if_ssl_and_not_ssl(port: int, tls_port: int, ca_file: str) -> None:
    plain = await probe(f"http://127.0.0.1:{port}/", fail_if_not_ssl=True)
    assert plain.reason is Reason.TLS_REQUIRED
    secure = await probe(
        f"https://127.0.0.1:{tls_port}/", fail_if_ssl=True, tls_config={"ca_file": ca_file}
    )
    assert secure.reason is Reason.TLS_FORBIDDEN


async def test_mtls(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client = ca.issue_cert("probe@seismo.test")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(key_file))
    async with app_server(make_app(), ssl_context=server_ctx) as bound:
        url = f"https://127.0.0.1:{bound}/"
        ok = await probe(
            url,
            tls_config={"ca_file": ca_file, "cert_file": str(cert_file), "key_file": str(key_file)},
        )
        refused = await probe(url, tls_config={"ca_file": ca_file})
    assert ok.reason is Reason.SUCCESS, ok.detail
    assert not refused.success
    assert metric(refused, "probe_http_status_code") == 0


async def test_https_redirect_to_http_reports_final_hop(
    port: int, tls_port: int, ca_file: str
) -> None:
    to = f"http://127.0.0.1:{port}/"
    result = await probe(
        f"https://127.0.0.1:{tls_port}/elsewhere?to={to}", tls_config={"ca_file": ca_file}
    )
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_http_ssl") == 0
    assert result.phases["tls"] > 0  # spent on the first hop, summed as blackbox does
    assert result.tls is None


# --- proxies ------------------------------------------------------------------------------


async def test_http_through_proxy(port: int) -> None:
    proxy = Proxy()
    async with proxy.running() as proxy_port:
        result = await probe(
            f"http://localhost:{port}/", proxy_url=f"http://127.0.0.1:{proxy_port}"
        )
    assert result.reason is Reason.SUCCESS, result.detail
    # absolute-form, with the resolved address as blackbox sends it
    assert proxy.request_lines == [f"GET http://127.0.0.1:{port}/ HTTP/1.1"]


async def test_http_through_proxy_without_resolving(port: int) -> None:
    proxy = Proxy()
    async with proxy.running() as proxy_port:
        result = await probe(
            f"http://localhost:{port}/",
            proxy_url=f"http://127.0.0.1:{proxy_port}",
            skip_resolve_phase_with_proxy=True,
        )
    assert result.reason is Reason.SUCCESS, result.detail
    assert proxy.request_lines == [f"GET http://localhost:{port}/ HTTP/1.1"]
    assert "resolve" not in result.phases


async def test_https_through_proxy_connect(tls_port: int, ca_file: str) -> None:
    proxy = Proxy()
    async with proxy.running() as proxy_port:
        result = await probe(
            f"https://localhost:{tls_port}/",
            proxy_url=f"http://127.0.0.1:{proxy_port}",
            tls_config={"ca_file": ca_file},
        )
    assert result.reason is Reason.SUCCESS, result.detail
    assert proxy.request_lines == [f"CONNECT 127.0.0.1:{tls_port} HTTP/1.1"]
    assert result.phases["tls"] > 0


async def test_proxy_down_is_proxy_error(port: int, refused_port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/", proxy_url=f"http://127.0.0.1:{refused_port}")
    assert result.reason is Reason.PROXY_ERROR


# --- floods -------------------------------------------------------------------------------


async def test_flood_with_body_size_limit(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/flood", body_size_limit="1MiB")
    assert result.reason is Reason.BODY_TOO_LARGE
    assert metric(result, "probe_http_uncompressed_body_length") == 1024 * 1024


async def test_large_body_keeps_memory_bounded(port: int) -> None:
    size = 64 * 1024 * 1024
    tracemalloc.start()
    try:
        result = await probe(
            f"http://127.0.0.1:{port}/flood?size={size}",
            timeout=60,
            fail_if_body_matches_regexp=["NEEDLE"],
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.reason is Reason.SUCCESS, result.detail
    assert metric(result, "probe_http_uncompressed_body_length") == size
    assert metric(result, "probe_http_content_length") == -1  # chunked: unknown, as Go says
    assert peak < http.BODY_MATCH_CAP + 16 * 1024 * 1024


# --- blackbox parity ----------------------------------------------------------------------


def _blackbox_names() -> dict[str, dict[str, list[str]]]:
    data: dict[str, dict[str, list[str]]] = json.loads((FIXTURES / "http.json").read_text())
    return data


async def test_names_cover_blackbox_http(port: int, refused_port: int) -> None:
    """blackbox 0.23's metric names (recorded from the real binary) for the same cases."""
    recorded = _blackbox_names()["http_2xx"]
    cases = {
        "success": f"http://127.0.0.1:{port}/status/200",
        "status_404": f"http://127.0.0.1:{port}/status/404",
        "refused": f"http://127.0.0.1:{refused_port}/",
    }
    for case, url in cases.items():
        result = await run_probe(Module.model_validate({"prober": "http"}), url, TIMEOUT)
        missing = set(recorded[case]) - names(result)
        assert not missing, f"{case}: {sorted(missing)}"


async def test_names_cover_blackbox_https(tls_port: int, ca_file: str) -> None:
    recorded = _blackbox_names()["https_2xx"]["success"]
    result = await probe(f"https://localhost:{tls_port}/", tls_config={"ca_file": ca_file})
    assert result.success, result.detail
    missing = set(recorded) - names(result)
    assert not missing, sorted(missing)


# HELP lines as /usr/bin/prometheus-blackbox-exporter 0.23.0 printed them for http_2xx
BLACKBOX_HELP = """
# HELP probe_failed_due_to_regex Indicates if probe failed due to regex
# HELP probe_http_content_length Length of http content response
# HELP probe_http_duration_seconds Duration of http request by phase, summed over all redirects
# HELP probe_http_last_modified_timestamp_seconds Returns the Last-Modified HTTP response header \
in unixtime
# HELP probe_http_redirects The number of redirects
# HELP probe_http_ssl Indicates if SSL was used for the final redirect
# HELP probe_http_status_code Response HTTP status code
# HELP probe_http_uncompressed_body_length Length of uncompressed response body
# HELP probe_http_version Returns the version of HTTP of the probe response
"""


async def test_help_strings_are_blackbox_023(port: int) -> None:
    result = await probe(f"http://127.0.0.1:{port}/")
    helps = {m.name: m.help for m in result.measurements}
    for line in BLACKBOX_HELP.replace("\\\n", "").strip().splitlines():
        name, text = line.removeprefix("# HELP ").split(" ", 1)
        assert helps[name] == text, name


def test_public_surface() -> None:
    assert sorted(http.__all__) == ["BODY_MATCH_CAP", "MAX_HEAD", "PHASES", "READ_CHUNK", "probe"]
