"""Settings from env and flags (flags win), their validation, and that security settings
reach every Kafka client's options (SASL credentials, a verifying TLS context)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

import worker.__main__ as worker_main
from tests.certs import TlsFiles, write_tls_files
from worker import cli
from worker.cli import SettingsError, build_parser, load_settings
from worker.kafka.clients import StartupError, client_options
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
    with pytest.raises(SettingsError) as error:
        settings_from(*flags)
    message = str(error.value)
    assert "\n" not in message
    return message


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
        "--log-level=loud: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )
    monkeypatch.setenv("WORKER_LOG_LEVEL", "loud")
    assert invalid().startswith("WORKER_LOG_LEVEL=loud: must be one of")


def test_a_bad_value_is_one_line_naming_the_setting() -> None:
    assert invalid("--http-port", "abc").startswith(
        "--http-port=abc: Input should be a valid integer"
    )
    assert invalid("--publish-interval", "0").startswith(
        "--publish-interval=0: Input should be greater than 0"
    )


def test_the_commit_interval_cannot_be_shorter_than_the_publish_interval() -> None:
    assert "must be at least WORKER_PUBLISH_INTERVAL_S" in invalid(
        "--publish-interval", "2", "--commit-interval", "1"
    )
    assert settings_from("--publish-interval", "2", "--commit-interval", "2").commit_interval_s == 2


def test_the_changelog_format_is_2_unless_an_upgrade_needs_1() -> None:
    assert settings_from().changelog_format == 2
    assert settings_from("--changelog-format", "1").changelog_format == 1
    assert invalid("--changelog-format", "3").startswith("--changelog-format=3:")


def test_the_inactive_period_reaches_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from().rules().inactive_after_ms == 60_000
    monkeypatch.setenv("WORKER_INACTIVE_AFTER_S", "30")
    assert settings_from().rules().inactive_after_ms == 30_000
    assert settings_from("--inactive-after", "15.5").rules().inactive_after_ms == 15_500
    assert invalid("--inactive-after", "0").startswith("--inactive-after=0:")


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
            "settings: SASL_SSL needs WORKER_SASL_MECHANISM, WORKER_SASL_PASSWORD",
        ),
        (
            {"WORKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "WORKER_SASL_MECHANISM": "PLAIN"},
            "settings: SASL_PLAINTEXT needs WORKER_SASL_USERNAME, WORKER_SASL_PASSWORD",
        ),
        (
            {"WORKER_SASL_PASSWORD": PASSWORD},
            "settings: SASL settings need security_protocol SASL_PLAINTEXT or SASL_SSL",
        ),
        (
            {"WORKER_SECURITY_PROTOCOL": "SASL_SSL", "WORKER_SASL_MECHANISM": "GSSAPI"},
            "WORKER_SASL_MECHANISM=GSSAPI: Input should be 'PLAIN', 'SCRAM-SHA-256' or "
            "'SCRAM-SHA-512'",
        ),
        ({"WORKER_SECURITY_PROTOCOL": "TLS"}, "WORKER_SECURITY_PROTOCOL=TLS: Input should be"),
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
        "settings: ssl_* files need security_protocol SSL or SASL_SSL"
    )
    assert invalid("--security-protocol", "SSL", "--ssl-keyfile", str(tls.key)) == (
        "settings: ssl_keyfile and ssl_key_password need ssl_certfile"
    )


# --- one validation for every setting of every command -------------------------------------

CANDIDATES = ("", "bogus value!", "-1", "0", "1.5", "inf", "nan", "1e400", "99999999999")
"""Values tried on every setting; each setting must refuse at least one of them."""
FREE_FORM = frozenset({"debug_stall_file"})
"""Settings for which every candidate is a valid value (any path names a test hook file)."""
COMMAND_ARGV = {
    "run": ["run"],
    "demo": ["demo"],
    "replay": ["replay", "events.ndjson"],
    "tail": ["tail"],
    "topics create": ["topics", "create"],
    "dlq inspect": ["dlq", "inspect"],
    "dlq replay": ["dlq", "replay", "--all"],
}


@pytest.fixture
def fast_main(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """`main` with one parser built for the whole test (building it is most of a call)."""
    parser = cli.build_parser()
    monkeypatch.setattr(worker_main, "build_parser", lambda: parser)
    return worker_main.main


def refuses(name: str, value: str, monkeypatch: pytest.MonkeyPatch, env: bool) -> bool:
    """Whether the Settings model refuses `value` for `name` from the env or as a flag."""
    with monkeypatch.context() as patch:
        if env:
            patch.setenv(cli.env_name(name), value)
        try:
            Settings(**({} if env else {name: value}))  # type: ignore[arg-type]
        except ValidationError:
            return True
    return False


def only_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_refuses_bad_values_with_one_line_and_exit_2(
    name: str,
    fast_main: Callable[[list[str]], int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flag, env = cli.flag_name(name), cli.env_name(name)
    bad_flags = [v for v in CANDIDATES if refuses(name, v, monkeypatch, env=False)]
    bad_envs = [v for v in CANDIDATES if refuses(name, v, monkeypatch, env=True)]
    if name in FREE_FORM:
        assert bad_flags == bad_envs == []
        return
    assert bad_flags, f"{name} accepts every one of {CANDIDATES}"
    # The same values are refused from the env, but for "": an empty variable is unset.
    assert set(bad_envs) == set(bad_flags) - {""}
    for value in CANDIDATES:
        code = fast_main(["run", f"{flag}={value}", "--check-config"])
        out, err = capsys.readouterr()
        if value not in bad_flags:
            assert (code, err) == (0, ""), (value, err)
            continue
        assert code == 2, value
        line = only_line(err)
        assert line.startswith("session-worker run: invalid "), line
        assert f"{flag}=" in line or "invalid settings: " in line, line
        assert out == ""
    for value in bad_envs:
        with monkeypatch.context() as patch:
            patch.setenv(env, value)
            code = fast_main(["run", "--check-config"])
        line = only_line(capsys.readouterr().err)
        assert code == 2, value
        assert f"{env}=" in line or "invalid settings: " in line, line


@pytest.mark.parametrize("command", sorted(COMMAND_ARGV))
def test_every_command_validates_the_settings_it_takes(
    command: str,
    fast_main: Callable[[list[str]], int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    taken = cli.command_settings()[command]
    for name in sorted(taken - FREE_FORM):
        bad = next(v for v in CANDIDATES if refuses(name, v, monkeypatch, env=False))
        argv = [*COMMAND_ARGV[command], f"{cli.flag_name(name)}={bad}", "--check-config"]
        assert fast_main(argv) == 2, argv
        assert only_line(capsys.readouterr().err).startswith(f"session-worker {command}: invalid ")
    # And a bad environment fails every command the same way, before it does anything.
    monkeypatch.setenv("WORKER_LOG_LEVEL", "loud")
    assert fast_main([*COMMAND_ARGV[command], "--check-config"]) == 2
    assert "WORKER_LOG_LEVEL=loud" in only_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("tail", "--http-port=1"),
        ("replay", "--bootstrap-servers=k:9092"),
        ("dlq inspect", "--group-id=g"),
    ],
)
def test_a_flag_the_command_does_not_use_is_refused_with_its_usage(
    command: str,
    flag: str,
    fast_main: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        fast_main([*COMMAND_ARGV[command], flag])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: session-worker {command} [options]")
    assert f"unrecognized arguments: {flag}" in err


def test_check_config_prints_the_settings_of_the_command_with_secrets_masked(
    fast_main: Callable[[list[str]], int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("WORKER_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("WORKER_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("WORKER_SASL_USERNAME", "alice")
    monkeypatch.setenv("WORKER_SASL_PASSWORD", PASSWORD)
    assert fast_main(["tail", "--snapshot-topic", "snaps", "--check-config"]) == 0
    out = capsys.readouterr().out
    report = orjson.loads(out)
    assert report["WORKER_SNAPSHOT_TOPIC"] == "snaps"
    assert report["WORKER_SASL_USERNAME"] == "alice"
    assert PASSWORD not in out
    assert "WORKER_HTTP_PORT" not in report  # tail does not serve HTTP


def test_an_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_GROUP_INSTANCE_ID", "")
    monkeypatch.setenv("WORKER_HTTP_PORT", "")
    settings = settings_from()
    assert (settings.group_instance_id, settings.http_port) == (None, 9464)


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (
            ("--bootstrap-servers", "k1:9092,,k2:9092"),
            "--bootstrap-servers=k1:9092,,k2:9092: must be HOST:PORT",
        ),
        (("--bootstrap-servers", "k1:90x2"), "must be HOST:PORT"),
        (("--bootstrap-servers", "k1:70000"), "port 70000 is not 1-65535"),
        (("--input-topic", "my topic"), "--input-topic='my topic': must be 1 to 249 characters"),
        (("--changelog-topic", "x" * 250), "must be 1 to 249 characters"),
        (("--group-instance-id", "pod/0"), "--group-instance-id=pod/0: must be 1 to 249"),
        (("--rate-window", "1e400"), "--rate-window=1e400: Input should be a finite number"),
        (("--idle-timeout", "1e30"), "--idle-timeout=1e30: Input should be less than or equal"),
        (("--replication-factor", "40000"), "--replication-factor=40000: Input should be less"),
    ],
)
def test_names_numbers_and_brokers_are_checked(flags: tuple[str, str], problem: str) -> None:
    assert problem in invalid(*flags)


def test_brokers_without_a_port_and_ipv6_are_accepted() -> None:
    servers = "kafka-1,[::1]:9093, kafka-2.example:9092"
    assert settings_from("--bootstrap-servers", servers).bootstrap_servers == servers


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "off"])
def test_a_boolean_flag_takes_a_value_or_none(value: str) -> None:
    assert settings_from("--create-topics", value).create_topics is False
    assert settings_from("--create-topics").create_topics is True
    assert settings_from("--no-create-topics").create_topics is False


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (("--dlq-topic", "media.segment-events"), "WORKER_INPUT_TOPIC and WORKER_DLQ_TOPIC are"),
        (("--snapshot-topic", "x", "--dlq-topic", "x"), "WORKER_SNAPSHOT_TOPIC and WORKER_DLQ"),
        (
            ("--changelog-topic", "media.sessions"),
            "WORKER_SNAPSHOT_TOPIC and the changelog topic are both 'media.sessions'",
        ),
    ],
)
def test_each_role_needs_its_own_topic(flags: tuple[str, ...], problem: str) -> None:
    assert problem in invalid(*flags)
