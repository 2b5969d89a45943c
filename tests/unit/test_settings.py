"""Settings from env and flags (flags win), their validation, and that security settings
reach every Kafka client's options (SASL credentials, a verifying TLS context)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from tests.certs import TlsFiles, write_tls_files
from worker.__main__ import build_parser, load_settings
from worker.kafka import StartupError, client_options
from worker.settings import SaslMechanism, SecurityProtocol, Settings

PASSWORD = "s3cret-Password-x"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))


def settings_from(*flags: str) -> Settings:
    return load_settings(build_parser().parse_args(["run", *flags]))


def invalid(*flags: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        settings_from(*flags)
    message = str(exit_info.value.code)
    assert "\n" not in message
    assert message.startswith("session-worker: invalid settings: ")
    return message.removeprefix("session-worker: invalid settings: ")


def test_defaults_without_env_or_flags() -> None:
    settings = settings_from()
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.security_protocol is SecurityProtocol.PLAINTEXT
    assert settings.log_format == "json"
    assert settings.metrics_max_sessions == 10_000
    assert settings.debug_stall_file is None


def test_env_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_GROUP_ID", "from-env")
    monkeypatch.setenv("WORKER_HTTP_PORT", "9000")
    monkeypatch.setenv("WORKER_CREATE_TOPICS", "true")
    monkeypatch.setenv("WORKER_LOG_FORMAT", "text")

    from_env = settings_from()
    assert (from_env.group_id, from_env.http_port, from_env.create_topics) == (
        "from-env",
        9000,
        True,
    )
    assert from_env.log_format == "text"

    flagged = settings_from(
        "--group-id",
        "from-flag",
        "--http-port",
        "9100",
        "--no-create-topics",
        "--log-format",
        "json",
    )
    assert (flagged.group_id, flagged.http_port, flagged.create_topics) == (
        "from-flag",
        9100,
        False,
    )
    assert flagged.log_format == "json"


def test_log_level_is_checked_and_normalized(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from("--log-level", "debug").log_level == "DEBUG"
    assert invalid("--log-level", "loud") == (
        "log_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )


def test_a_bad_value_is_one_line_naming_the_setting() -> None:
    assert invalid("--http-port", "abc").startswith("http_port: Input should be a valid integer")
    assert invalid("--publish-interval", "0").startswith(
        "publish_interval_s: Input should be greater than 0"
    )


def test_the_commit_interval_cannot_be_shorter_than_the_publish_interval() -> None:
    assert "must be at least WORKER_PUBLISH_INTERVAL_S" in invalid(
        "--publish-interval", "2", "--commit-interval", "1"
    )
    assert settings_from("--publish-interval", "2", "--commit-interval", "2").commit_interval_s == 2


def test_the_changelog_format_is_2_unless_an_upgrade_needs_1() -> None:
    assert settings_from().changelog_format == 2
    assert settings_from("--changelog-format", "1").changelog_format == 1
    assert invalid("--changelog-format", "3").startswith("changelog_format:")


def test_the_inactive_period_reaches_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from().rules().inactive_after_ms == 60_000
    monkeypatch.setenv("WORKER_INACTIVE_AFTER_S", "30")
    assert settings_from().rules().inactive_after_ms == 30_000
    assert settings_from("--inactive-after", "15.5").rules().inactive_after_ms == 15_500
    assert invalid("--inactive-after", "0").startswith("inactive_after_s:")


def test_the_stall_test_hook_is_an_env_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORKER_DEBUG_STALL_FILE", str(tmp_path / "stall"))
    assert settings_from().debug_stall_file == tmp_path / "stall"


def test_plaintext_has_no_security_options() -> None:
    options = client_options(settings_from("--bootstrap-servers", "k1:9092,k2:9092"))
    assert options == {
        "bootstrap_servers": "k1:9092,k2:9092",
        "client_id": "session-worker",
        "security_protocol": "PLAINTEXT",
    }


@pytest.mark.parametrize("mechanism", list(SaslMechanism))
def test_sasl_ssl_reaches_the_client_options(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles, mechanism: SaslMechanism
) -> None:
    monkeypatch.setenv("WORKER_SASL_PASSWORD", PASSWORD)  # secrets: env, not flags
    monkeypatch.setenv("WORKER_SECURITY_PROTOCOL", "PLAINTEXT")  # the flag wins
    settings = settings_from(
        "--security-protocol",
        "SASL_SSL",
        "--sasl-mechanism",
        mechanism.value,
        "--sasl-username",
        "alice",
        "--ssl-cafile",
        str(tls.ca),
    )
    options = client_options(settings)

    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism.value
    assert options["sasl_plain_username"] == "alice"
    assert options["sasl_plain_password"] == PASSWORD
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    (ca,) = context.get_ca_certs()
    assert "session-worker test CA" in str(ca["subject"])


def test_sasl_plaintext_has_no_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("WORKER_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("WORKER_SASL_USERNAME", "alice")
    monkeypatch.setenv("WORKER_SASL_PASSWORD", PASSWORD)
    options = client_options(settings_from())

    assert "ssl_context" not in options
    assert (options["sasl_mechanism"], options["sasl_plain_password"]) == ("PLAIN", PASSWORD)


def test_ssl_without_a_ca_file_trusts_the_system_store() -> None:
    context = client_options(settings_from("--security-protocol", "SSL"))["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert "sasl_mechanism" not in client_options(settings_from("--security-protocol", "SSL"))


def test_host_name_checking_can_be_turned_off(tls: TlsFiles) -> None:
    settings = settings_from(
        "--security-protocol", "SSL", "--ssl-cafile", str(tls.ca), "--no-ssl-check-hostname"
    )
    context = client_options(settings)["ssl_context"]
    assert context.check_hostname is False
    assert context.verify_mode is ssl.CERT_REQUIRED  # the chain is still verified


def test_mutual_tls_loads_an_encrypted_client_key(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    monkeypatch.setenv("WORKER_SSL_KEY_PASSWORD", tls.key_password)
    settings = settings_from(
        "--security-protocol",
        "SSL",
        "--ssl-cafile",
        str(tls.ca),
        "--ssl-certfile",
        str(tls.cert),
        "--ssl-keyfile",
        str(tls.encrypted_key),
    )
    assert isinstance(client_options(settings)["ssl_context"], ssl.SSLContext)


def test_a_wrong_key_password_is_a_startup_error_without_the_password(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    monkeypatch.setenv("WORKER_SSL_KEY_PASSWORD", PASSWORD)
    settings = settings_from(
        "--security-protocol",
        "SSL",
        "--ssl-certfile",
        str(tls.cert),
        "--ssl-keyfile",
        str(tls.encrypted_key),
    )
    with pytest.raises(StartupError, match="cannot load the client certificate") as error:
        client_options(settings)
    assert PASSWORD not in str(error.value)


def test_a_ca_file_that_is_not_pem_is_a_startup_error(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    settings = settings_from("--security-protocol", "SSL", "--ssl-cafile", str(garbage))
    with pytest.raises(StartupError, match=f"cannot load ssl_cafile {garbage}"):
        client_options(settings)


def test_a_missing_ca_file_is_a_startup_error(tmp_path: Path) -> None:
    # Files are checked when the clients are built, not when settings are read: tools read
    # the settings of a deployment whose files exist only inside its containers.
    missing = tmp_path / "nope.pem"
    settings = settings_from("--security-protocol", "SSL", "--ssl-cafile", str(missing))
    with pytest.raises(StartupError, match=f"cannot load ssl_cafile {missing}: .*No such file"):
        client_options(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"WORKER_SECURITY_PROTOCOL": "SASL_SSL", "WORKER_SASL_USERNAME": "alice"},
            "SASL_SSL needs WORKER_SASL_MECHANISM, WORKER_SASL_PASSWORD",
        ),
        (
            {"WORKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "WORKER_SASL_MECHANISM": "PLAIN"},
            "SASL_PLAINTEXT needs WORKER_SASL_USERNAME, WORKER_SASL_PASSWORD",
        ),
        (
            {"WORKER_SASL_PASSWORD": PASSWORD},
            "SASL settings need security_protocol SASL_PLAINTEXT or SASL_SSL",
        ),
        (
            {"WORKER_SECURITY_PROTOCOL": "SASL_SSL", "WORKER_SASL_MECHANISM": "GSSAPI"},
            "sasl_mechanism: Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'",
        ),
        ({"WORKER_SECURITY_PROTOCOL": "TLS"}, "security_protocol: Input should be"),
    ],
)
def test_contradictory_or_missing_security_settings_fail_before_connecting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    problem = invalid()
    assert problem.startswith(message)
    assert PASSWORD not in problem


def test_tls_files_without_tls_are_refused(tls: TlsFiles) -> None:
    assert invalid("--ssl-cafile", str(tls.ca)) == (
        "ssl_* files need security_protocol SSL or SASL_SSL"
    )
    assert invalid("--security-protocol", "SSL", "--ssl-keyfile", str(tls.key)) == (
        "ssl_keyfile and ssl_key_password need ssl_certfile"
    )
