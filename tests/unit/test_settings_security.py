"""Kafka security settings: SASL password from a file, mutual-TLS files, replication of created topics."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from adpulse.settings import Settings
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
