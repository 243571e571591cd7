"""Every invalid config in testdata/ gives exactly one line: FILE:LINE: KEY.PATH: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smtp_exporter.config.errors import MAX_LISTED_ERRORS, ConfigErrors
from smtp_exporter.config.loader import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]

TESTDATA = Path(__file__).parent / "testdata"
F = TESTDATA / "files"

# file name (without .bad.yml) -> (line, key path, message)
EXPECTED: dict[str, tuple[int, str, str]] = {
    "yaml_unterminated_quote": (
        4,
        "",
        "invalid YAML: found unexpected end of stream (while scanning a quoted scalar)",
    ),
    "yaml_two_documents": (
        2,
        "",
        "invalid YAML: but found another document (expected a single document in the stream)",
    ),
    "top_level_list": (
        1,
        "",
        "the top level must be a mapping of sections (modules, targets, ...), not a list",
    ),
    "unknown_top_level_key": (1, "", 'unknown key "target" (did you mean "targets"?)'),
    "unknown_module_key": (4, "modules.slow", 'unknown key "timout" (did you mean "timeout"?)'),
    "duplicate_key": (4, "modules.foo.port", 'duplicate key "port" (first at line 3)'),
    "duplicate_module": (4, "modules.foo", 'duplicate key "foo" (first at line 2)'),
    "merge_key": (4, "modules.foo", "merge keys (<<) are not supported"),
    "module_name_invalid": (
        2,
        "modules",
        'invalid module name "my module": use letters, digits, _, . and - (at most 128)',
    ),
    "module_not_mapping": (2, "modules.foo", "must be a mapping, not a list"),
    "bad_duration": (
        3,
        "modules.foo.timeout",
        'invalid duration "10x": expected integers with units ms, s, m, h, d, w, y, largest first, '
        "e.g. 500ms, 10s, 1m30s",
    ),
    "duration_without_unit": (
        3,
        "modules.foo.timeout",
        'invalid duration "10": a unit is required, e.g. 10s',
    ),
    "timeout_zero": (3, "modules.foo.timeout", "must be greater than 0"),
    "timeout_too_long": (3, "modules.foo.timeout", "must be at most 5m, not 10d"),
    "port_out_of_range": (3, "modules.foo.port", "must be between 1 and 65535, not 70000"),
    "port_not_integer": (3, "modules.foo.port", 'must be an integer, not "smtp"'),
    "boolean_wrong_type": (3, "modules.foo.implicit_tls", 'must be true or false, not "1"'),
    "starttls_invalid": (
        3,
        "modules.foo.starttls",
        'invalid value "maybe": must be one of auto, required, never',
    ),
    "starttls_required_with_implicit_tls": (
        4,
        "modules.foo.starttls",
        "starttls: required contradicts implicit_tls: true",
    ),
    "transaction_invalid": (
        3,
        "modules.foo.transaction",
        'invalid value "full": must be one of none, envelope, message',
    ),
    "ip_protocol_invalid": (
        3,
        "modules.foo.ip_protocol",
        'invalid value "ipv6": must be one of auto, ip4, ip6, prefer_ip4, both',
    ),
    "tls_min_version_invalid": (
        4,
        "modules.foo.tls_config.min_version",
        'invalid value "TLS1.2": must be one of TLS10, TLS11, TLS12, TLS13',
    ),
    "tls_cert_without_key": (
        4,
        "modules.foo.tls_config.cert_file",
        "cert_file needs key_file too (a client certificate and its key)",
    ),
    "tls_ca_file_missing": (
        4,
        "modules.foo.tls_config.ca_file",
        f'cannot read "{F}/no-such-ca.pem": No such file or directory',
    ),
    "tls_ca_file_not_pem": (
        4,
        "modules.foo.tls_config.ca_file",
        f'cannot load CA certificates from "{F}/password.txt": no certificate or crl found',
    ),
    "auth_password_in_config": (
        7,
        "modules.submission.auth.password",
        "a password is not allowed in the config file: put it in a file (password_file) "
        "or an environment variable (password_env)",
    ),
    "auth_mechanism_invalid": (
        5,
        "modules.foo.auth.mechanism",
        'invalid value "GSSAPI": must be one of auto, PLAIN, LOGIN, CRAM-MD5, XOAUTH2, OAUTHBEARER',
    ),
    "auth_both_token_sources": (8, "modules.foo.auth", "set token_file or token_env, not both"),
    "auth_password_with_oauth": (
        7,
        "modules.foo.auth.password_file",
        "does not go with mechanism: OAUTHBEARER (an OAuth mechanism takes token_file or token_env)",
    ),
    "auth_token_without_oauth": (
        7,
        "modules.foo.auth.token_file",
        "needs mechanism: XOAUTH2 or OAUTHBEARER",
    ),
    "auth_oauth_without_token": (5, "modules.foo.auth", "missing token_file or token_env"),
    "auth_token_file_missing": (
        7,
        "modules.foo.auth.token_file",
        f'cannot read "{F}/no-such-token": No such file or directory',
    ),
    "auth_token_env_unset": (
        7,
        "modules.foo.auth.token_env",
        "the environment variable named here is not set",
    ),
    "auth_token_in_config": (
        7,
        "modules.foo.auth.token",
        "a token is not allowed in the config file: put it in a file (token_file) "
        "or an environment variable (token_env)",
    ),
    "auth_password_file_missing": (
        6,
        "modules.foo.auth.password_file",
        f'cannot read "{F}/no-such-password": No such file or directory',
    ),
    "auth_password_file_directory": (6, "modules.foo.auth.password_file", f'"{F}" is not a regular file'),
    "auth_password_env_unset": (
        6,
        "modules.foo.auth.password_env",
        "the environment variable named here is not set",
    ),
    "auth_both_password_sources": (7, "modules.foo.auth", "set password_file or password_env, not both"),
    "auth_without_username": (5, "modules.foo.auth", 'missing required key "username"'),
    "auth_without_tls": (
        4,
        "modules.submission.auth",
        "auth needs an encrypted connection: set starttls: required or implicit_tls: true (otherwise a "
        "server that stops offering STARTTLS would receive the password in clear text)",
    ),
    "ehlo_crlf": (
        3,
        "modules.foo.ehlo",
        'invalid value "probe.example.org\\r\\nRSET": must not contain CR, LF or NUL',
    ),
    "ehlo_with_space": (
        3,
        "modules.foo.ehlo",
        'invalid EHLO name "probe example": must be a non-empty name without spaces',
    ),
    "mail_from_newline": (
        3,
        "modules.foo.mail_from",
        'invalid value "probe@example.org\\nRCPT TO:<victim@example.org>\\n": must not contain CR, LF or NUL',
    ),
    "rcpt_to_nul": (
        5,
        "modules.foo.rcpt_to[1]",
        'invalid value "a\\x00b@example.org": must not contain CR, LF or NUL',
    ),
    "rcpt_to_empty_list": (3, "modules.foo.rcpt_to", "must name at least one recipient"),
    "subject_crlf": (
        4,
        "modules.foo.message.subject",
        'invalid value "hi\\r\\nBcc: all@example.org": must not contain CR, LF or NUL',
    ),
    "header_value_lf": (
        5,
        "modules.foo.message.headers.X-Probe",
        'invalid value "a\\nb": must not contain CR, LF or NUL',
    ),
    "header_generated": (
        5,
        "modules.foo.message.headers",
        'header "Subject" is written by the exporter (set subject instead)',
    ),
    "banner_regex_invalid": (
        4,
        "modules.foo.expect.banner",
        'invalid regular expression "ESMTP (Postfix": missing ), unterminated subpattern at position 6',
    ),
    "expect_extension_invalid": (4, "modules.foo.expect.extensions[1]", 'invalid EHLO keyword "8BIT MIME"'),
    "dns_timeout_too_long": (4, "modules.foo.dns.timeout", "must be at most 1m, not 2m"),
    "dns_nameserver_hostname": (
        4,
        "modules.foo.dns.nameservers[1]",
        'invalid nameserver "ns1.example.org": expected an IP address, IP:port or [IPv6]:port',
    ),
    "dns_nameserver_bad_port": (
        4,
        "modules.foo.dns.nameservers[0]",
        'invalid port in nameserver "[2001:db8::53]:99999"',
    ),
    "defaults_unknown_module": (
        2,
        "defaults.module",
        'unknown module "smtp_fulll" (did you mean "smtp_full"?)',
    ),
    "defaults_interval_too_long": (2, "defaults.interval", "must be at most 1d, not 2d"),
    "targets_not_list": (2, "targets", "must be a list, not a mapping"),
    "target_entry_scalar": (2, "targets[0]", "must be a mapping with a target key, not a string"),
    "target_missing": (2, "targets[0]", 'missing required key "target"'),
    "target_invalid": (2, "targets[0].target", "invalid host name in target 'mx1..example.org'"),
    "target_bad_port": (2, "targets[0].target", "invalid port '0' in target 'mx1.example.org:0'"),
    "target_unknown_module": (3, "targets[0].module", 'unknown module "nope"'),
    "target_unknown_key": (3, "targets[0]", 'unknown key "lables" (did you mean "labels"?)'),
    "target_duplicate": (
        4,
        "targets[2]",
        'duplicate target "MX1.example.org:25" with module "smtp_handshake" (also at line 2)',
    ),
    "target_interval_zero": (3, "targets[0].interval", "must be greater than 0"),
    "target_timeout_not_below_interval": (
        5,
        "targets[0]",
        'the timeout 1m of module "slow" must be shorter than the interval 1m',
    ),
    "mx_target_with_port": (
        4,
        "targets[0].target",
        'module "mx_check" has mx: true, so the target must be a mail domain without port, not "example.org:25"',
    ),
    "mx_target_ip": (
        4,
        "targets[0].target",
        'module "mx_check" has mx: true, so the target must be a mail domain without port, not "192.0.2.1"',
    ),
    "mx_mode_each_without_mx": (
        3,
        "targets[0].mx_mode",
        'mx_mode: each needs a module with mx: true ("smtp_handshake" has mx: false)',
    ),
    "mx_mode_invalid": (6, "targets[0].mx_mode", 'invalid value "all": must be one of primary, each'),
    "label_name_invalid": (
        4,
        "targets[0].labels",
        'invalid label name "team-name": must match [a-zA-Z_][a-zA-Z0-9_]*',
    ),
    "label_name_reserved_prefix": (
        4,
        "targets[0].labels",
        'invalid label name "__meta": names starting with __ are reserved',
    ),
    "label_name_clash": (
        4,
        "targets[0].labels",
        'label "instance" clashes with a label the exporter sets itself',
    ),
    "label_value_not_string": (4, "targets[0].labels.team", "must be a string, not a list"),
    "label_value_empty": (
        4,
        "targets[0].labels.team",
        "must not be empty (an empty label is no label in Prometheus)",
    ),
    "max_concurrency_zero": (2, "scheduler.max_concurrency", "must be between 1 and 100000, not 0"),
    "max_concurrency_absurd": (2, "scheduler.max_concurrency", "must be between 1 and 100000, not 1000000"),
    "buckets_empty": (2, "metrics.histogram_buckets", "must not be empty"),
    "buckets_unsorted": (
        2,
        "metrics.histogram_buckets[2]",
        "buckets must be in increasing order (0.25 after 0.5)",
    ),
    "buckets_not_positive": (
        2,
        "metrics.histogram_buckets[0]",
        "must be a positive number of seconds, not 0",
    ),
    "http_probe_max_concurrent_zero": (2, "http_probe.max_concurrent", "must be between 1 and 100000, not 0"),
    "allowed_target_invalid": (
        4,
        "http_probe.allowed_targets[1]",
        'invalid address or CIDR in allowed target "192.0.2.1/24": 192.0.2.1/24 has host bits set',
    ),
    "allowed_target_bad_port": (
        2,
        "http_probe.allowed_targets[0]",
        'invalid port "99999" in allowed target "*.example.org:99999"',
    ),
    "shard_count_zero": (2, "shard.count", "must be between 1 and 100000, not 0"),
    "shard_index_out_of_range": (3, "shard.index", "must be less than shard.count (2), not 2"),
    "delivery_password_in_config": (
        6,
        "modules.roundtrip.delivery.imap.password",
        "a password is not allowed in the config file: put it in a file (password_file) "
        "or an environment variable (password_env)",
    ),
    "delivery_interval_too_short": (
        9,
        "targets[0]",
        'the timeout 10s plus the delivery.timeout 2m of module "roundtrip" must be shorter than '
        "the interval 2m",
    ),
    "delivery_starttls_auto": (
        5,
        "modules.roundtrip.delivery.imap.starttls",
        "starttls: auto would send the IMAP password in clear text to a server that stops offering "
        "STARTTLS: use required, or implicit_tls: true",
    ),
    "delivery_imap_missing": (4, "modules.roundtrip.delivery", 'missing required key "imap"'),
    "delivery_poll_interval_too_long": (
        5,
        "modules.roundtrip.delivery.poll_interval",
        "must be shorter than delivery.timeout (10s)",
    ),
    "delivery_needs_message": (
        3,
        "modules.roundtrip.delivery",
        "delivery needs transaction: message (the message it waits for in the mailbox)",
    ),
    "delivery_imap_clear_text": (
        5,
        "modules.roundtrip.delivery.imap.implicit_tls",
        "the IMAP login needs an encrypted connection: set implicit_tls: true or starttls: required",
    ),
}


def test_every_testdata_file_has_an_expectation() -> None:
    names = {path.name.removesuffix(".bad.yml") for path in TESTDATA.glob("*.bad.yml")}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_config(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMTP_EXPORTER_TEST_UNSET_PASSWORD", raising=False)
    path = str(TESTDATA / f"{name}.bad.yml")
    line, key_path, message = EXPECTED[name]
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    expected = f"{path}:{line}: {key_path}: {message}" if key_path else f"{path}:{line}: {message}"
    assert str(caught.value) == expected
    assert len(str(caught.value).splitlines()) == 1
    assert (caught.value.file, caught.value.line, caught.value.path) == (path, line, key_path)


def test_missing_file_has_no_line(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read config file: No such file or directory"


def test_directory_as_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert str(caught.value) == f"{tmp_path}: cannot read config file: Is a directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"modules:\n  foo:\n    ehlo: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}:3: invalid YAML: not valid UTF-8"


def test_control_character_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "nul.yml"
    path.write_bytes(b"modules:\n  foo:\n    ehlo: a\x00b\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(f"{path}:3: invalid YAML: unacceptable character #x0000")


def test_too_many_targets(tmp_path: Path) -> None:
    path = tmp_path / "many.yml"
    path.write_text("targets:\n" + "- x\n" * 100_001)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == (
        f"{path}:2: targets: too many targets (more than 100000: shard them with shard.count)"
    )


def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yml"
    path.write_text("modules: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(f"{path}")
    assert len(str(caught.value).splitlines()) == 1


def test_message_with_line_breaks_in_key_stays_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "weird.yml"
    path.write_text('modules:\n  "a\\nb\\u2028c": {}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert (
        str(caught.value)
        == f'{path}:2: modules: invalid module name "a\\nb\\u2028c": use letters, digits, _, . and - (at most 128)'
    )
    assert len(str(caught.value).splitlines()) == 1


def test_unreadable_password_file(tmp_path: Path) -> None:
    # Not a permission test (the suite may run as root): a path through a regular file cannot be read.
    (tmp_path / "secrets").write_text("not a directory\n")
    config = tmp_path / "config.yml"
    config.write_text(
        "modules:\n  sub:\n    starttls: required\n    auth:\n      username: u\n"
        "      password_file: secrets/password\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(config))
    assert str(caught.value) == (
        f'{config}:6: modules.sub.auth.password_file: cannot read "{tmp_path}/secrets/password": Not a directory'
    )


# testdata/several_errors.yml: errors in different modules, targets and sections, found in one
# pass, one line each, by line. What refers to a broken part is not reported again: targets[2]
# uses the broken module "slow", targets[3] the broken defaults.
SEVERAL = [
    (3, "modules.slow", 'unknown key "timout" (did you mean "timeout"?)'),
    (7, "modules.bad_port.port", "must be between 1 and 65535, not 70000"),
    (9, "defaults.interval", "must be at most 1d, not 2d"),
    (14, "targets[1].target", "invalid port '99999' in target 'mx2.example.org:99999'"),
    (21, "targets[4]", 'duplicate target "mx1.example.org" with module "fine" (also at line 11)'),
    (25, "targets[5].module", 'unknown module "nosuch"'),
    (28, "scheduler.max_concurrency", "must be between 1 and 100000, not 0"),
    (30, "metrics.phase_histograms", 'must be true or false, not "maybe"'),
    (31, "", 'unknown key "unknown_section"'),
    (34, "shard.index", "must be less than shard.count (2), not 5"),
]


def several_lines(path: str) -> list[str]:
    return [
        f"{path}:{line}: {key}: {message}" if key else f"{path}:{line}: {message}"
        for line, key, message in SEVERAL
    ]


def test_every_independent_error_on_its_own_line() -> None:
    path = str(TESTDATA / "several_errors.yml")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    assert str(caught.value).splitlines() == several_lines(path)
    assert [(error.line, error.path) for error in caught.value.errors] == [
        (line, key) for line, key, _ in SEVERAL
    ]
    assert (caught.value.file, caught.value.line, caught.value.path) == (path, 3, "modules.slow")


def test_errors_in_one_module_stop_at_its_first(tmp_path: Path) -> None:
    path = tmp_path / "two-in-one.yml"
    path.write_text("modules:\n  foo:\n    port: 0\n    timeout: 10x\n  bar:\n    ehlo: a b\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path))
    assert str(caught.value).splitlines() == [
        f"{path}:3: modules.foo.port: must be between 1 and 65535, not 0",
        f'{path}:6: modules.bar.ehlo: invalid EHLO name "a b": must be a non-empty name without spaces',
    ]


def test_invalid_yaml_stops_everything(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("modules:\n  foo:\n    port: 0\nscheduler: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert not isinstance(caught.value, ConfigErrors)
    assert len(str(caught.value).splitlines()) == 1 and "invalid YAML" in str(caught.value)


def test_thousands_of_bad_targets_are_listed_up_to_a_limit(tmp_path: Path) -> None:
    path = tmp_path / "many-bad.yml"
    path.write_text("targets:\n" + "".join(f"  - target: 'mx{i}.example.org:0'\n" for i in range(250)))
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path))
    lines = str(caught.value).splitlines()
    assert len(caught.value.errors) == 250
    assert len(lines) == MAX_LISTED_ERRORS + 1
    assert lines[0].startswith(f"{path}:2: targets[0].target: ")
    assert lines[-1] == f"{path}: {250 - MAX_LISTED_ERRORS} more errors not listed"


def test_config_check_lists_the_config_and_the_web_config_errors(tmp_path: Path) -> None:
    path = str(TESTDATA / "several_errors.yml")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: cert.pem\nbasic_auth_userz: {}\n")
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "smtp_exporter",
            "--config.check",
            "--config.file",
            path,
            "--web.config.file",
            str(web),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert check.returncode == 2
    lines = check.stderr.splitlines()
    assert lines[:-1] == [f"smtp-exporter: {line}" for line in several_lines(path)]
    assert lines[-1].startswith(f"smtp-exporter: {web}:")
    assert "Traceback" not in check.stderr and check.stdout == ""
