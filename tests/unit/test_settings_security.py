"""Security settings: SASL password from a file, mutual-TLS files, replication of created topics, and no
password in any printed Redis URL or Kafka bootstrap."""

from __future__ import annotations

import ast
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from adpulse.cli import cli
from adpulse.settings import Settings, redacted_url
from adpulse.stack import free_port
from alerts.router.tokens import WeakKeyError
from streams.app import make_app


def test_sasl_password_comes_from_its_file_and_never_shows(tmp_path: Path) -> None:
    secret = tmp_path / "sasl"
    secret.write_text("canary-sasl-9911\n")
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="adpulse",
        kafka_sasl_password_file=secret,
        _env_file=None,
    )
    options = settings.kafka_client_options()
    assert (
        options["sasl_plain_password"] == "canary-sasl-9911" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    )
    assert "canary" not in repr(settings)
    explicit = settings.model_copy(update={"kafka_sasl_password": "given"})
    assert explicit.kafka_client_options()["sasl_plain_password"] == "given"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_mutual_tls_loads_the_client_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=adpulse",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=cert,
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
        _env_file=None,
    )
    context = settings.kafka_client_options()["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises((OSError, ssl.SSLError)):
        settings.model_copy(update={"kafka_ssl_keyfile": cert}).kafka_ssl_context()  # a certificate is no key


def test_replication_factor_reaches_faust(tmp_path: Path) -> None:
    app = make_app(
        "t",
        "127.0.0.1:9092",
        partitions=4,
        web_host="127.0.0.1",
        web_port=6066,
        datadir=str(tmp_path),
        replication_factor=3,
    )
    assert app.conf.topic_replication_factor == 3


# -- passwords in printed URLs -----------------------------------------------------------------------------

CANARY = "canary-pw-5521"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://:{CANARY}@redis:6379/0", "redis://:***@redis:6379/0"),
        (
            f"rediss://adpulse:{CANARY}@r.internal:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://adpulse:***@r.internal:6380/0?ssl_ca_certs=/ca.pem",
        ),
        (f"redis://:p@ss#{CANARY}@redis:6379/0", "redis://:***@redis:6379/0"),
        (f"unix://:{CANARY}@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        (f"redis://redis:6379/0?password={CANARY}&db=1", "redis://redis:6379/0?password=***&db=1"),
        ("redis://user@redis:6379/0", "redis://user@redis:6379/0"),
        ("b1:9093,b2:9093", "b1:9093,b2:9093"),
        (f"user:{CANARY}@b1:9093,b2:9093", "user:***@b1:9093,b2:9093"),
    ],
)
def test_redacted_url_hides_every_password(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_settings_repr_and_validation_errors_hide_the_redis_password() -> None:
    settings = Settings(redis_url=f"redis://:{CANARY}@redis:6379/0", _env_file=None)
    assert CANARY not in repr(settings) and "redis://:***@redis:6379/0" in repr(settings)
    with pytest.raises(ValidationError) as caught:
        Settings(redis_url=f"http://:{CANARY}@redis:6379/0", _env_file=None)
    assert all(CANARY not in error["msg"] for error in caught.value.errors())


@pytest.mark.parametrize(
    "args",
    [["kpis"], ["alerts"], ["alerts", "ack", "anomaly/ctr/douyin/-"]],
)
def test_cli_errors_show_the_redis_url_without_its_password(
    args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ADPULSE_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("ADPULSE_REDIS_URL", f"redis://:{CANARY}@127.0.0.1:{free_port()}/0")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "cannot reach Redis" in result.output, result.output
    assert CANARY not in result.output and ":***@127.0.0.1" in result.output


def test_a_bad_redis_url_is_refused_without_showing_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ADPULSE_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("ADPULSE_REDIS_URL", f"http://:{CANARY}@127.0.0.1:6379/0")
    result = CliRunner().invoke(cli, ["kpis"])
    assert result.exit_code == 2 and "ADPULSE_REDIS_URL" in result.output
    assert CANARY not in result.output


_SHOWN_ADDRESSES = frozenset({"redis_url", "kafka_bootstrap", "bootstrap"})
_OUTPUT_CALLS = frozenset(
    {"print", "echo", "debug", "info", "warning", "error", "exception", "critical", "secho"}
)


def _raw_addresses(tree: ast.AST) -> Iterator[int]:
    """Lines where a Redis URL or Kafka bootstrap goes into a message as it is (not through redacted_url)."""
    for node in ast.walk(tree):
        shown: list[ast.expr] = []
        # An f-string with words in it is a message; "tcp://{bootstrap}" builds an address.
        words = any(isinstance(v, ast.Constant) and " " in str(v.value) for v in getattr(node, "values", []))
        if isinstance(node, ast.JoinedStr) and words:
            shown = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in _OUTPUT_CALLS:
                shown = list(node.args)
        for value in shown:
            if (
                isinstance(value, ast.Attribute | ast.Name)
                and (getattr(value, "attr", None) or getattr(value, "id", None)) in _SHOWN_ADDRESSES
            ):
                yield value.lineno


def test_no_message_in_the_tree_shows_a_raw_redis_url_or_bootstrap() -> None:
    root = Path(__file__).resolve().parents[2]
    found = [
        f"{path.relative_to(root)}:{line}"
        for folder in ("adpulse", "agents", "alerts", "streams", "benchmarks")
        for path in sorted((root / folder).rglob("*.py"))
        for line in _raw_addresses(ast.parse(path.read_text(), str(path)))
    ]
    assert not found, f"pass these through adpulse.settings.redacted_url: {found}"


# -- the router's token key --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("change-me", "placeholder"),
        ("CHANGEME", "placeholder"),
        ("secret", "placeholder"),
        ("test", "placeholder"),
        ("change-me-" + "3f9c2a7e51d84b06a9e1c7f25b8d4e03", "placeholder"),
        ("s3cr3t-but-short", "too short (16 bytes; at least 32)"),
        ("k" * 64, "one pattern repeated"),
        ("ab12" * 16, "one pattern repeated"),
        ("011010011001011010010110011010010110", "only 2 different characters"),
    ],
)
def test_a_weak_or_placeholder_token_key_is_refused_with_the_command_to_make_one(key: str, why: str) -> None:
    with pytest.raises(WeakKeyError) as caught:
        Settings(router_token_key=key, _env_file=None).token_key()
    message = str(caught.value)
    assert why in message and "openssl rand -hex 32" in message and "secrets.token_hex(32)" in message
    assert len(key) < 10 or key not in message, "the message never repeats the key"


# Ids that do not name the keys: test collection must be the same in every process (pytest-xdist).
@pytest.mark.parametrize(
    "key",
    [secrets.token_hex(32), secrets.token_hex(16), secrets.token_urlsafe(32)],
    ids=["hex32", "hex16", "urlsafe32"],
)
def test_a_random_token_key_is_accepted(key: str, tmp_path: Path) -> None:
    assert Settings(router_token_key=key, _env_file=None).token_key() == key.encode()
    path = tmp_path / "key"
    path.write_text(key + "\n")
    assert Settings(router_token_key_file=path, _env_file=None).token_key() == key.encode()


def test_a_weak_key_in_the_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("change-me\n")
    with pytest.raises(WeakKeyError, match="ADPULSE_ROUTER_TOKEN_KEY_FILE"):
        Settings(router_token_key_file=path, _env_file=None).token_key()


@pytest.mark.parametrize("command", [["router", "--check"], ["demo", "--duration", "1"]])
def test_router_and_demo_refuse_a_placeholder_key_before_starting(
    command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ADPULSE_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("ADPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADPULSE_ROUTER_TOKEN_KEY", "change-me")
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2, result.output
    assert "ADPULSE_ROUTER_TOKEN_KEY is refused: it is a placeholder" in result.output
    assert "openssl rand -hex 32" in result.output
    assert not (tmp_path / "home").exists(), "nothing was started"
