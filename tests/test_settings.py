"""Operating it: settings from the environment and policy from the TOML file, with the
defaults of docs/rules.md, and bad configuration refused with a message naming the key."""

from __future__ import annotations

import os
import re
from datetime import time
from pathlib import Path

import pytest

from quota_authority.errors import ConfigError
from quota_authority.policy import Policy, RetentionPolicy, TierPolicy
from quota_authority.settings import NOT_SETTINGS, PREFIX, Settings, load_settings, variables

MONDAY, SUNDAY = 0, 6

# Three tiers that are valid on their own; bad-config cases append to or edit them.
VALID_TIERS = """
[[tiers]]
name = "T0"
min_gmv_30d_minor = 0
weekly_limit = 50
max_creator_followers = 20000

[[tiers]]
name = "T1"
min_gmv_30d_minor = 1
weekly_limit = 200
max_creator_followers = 20000
"""


def write_config(tmp_path: Path, toml: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(toml, encoding="utf-8")
    return path


def settings_with(tmp_path: Path, toml: str, **environ: str) -> Settings:
    """``load_settings`` with ``toml`` as the policy file and ``environ`` as the environment."""
    config = write_config(tmp_path, toml)
    return load_settings({"QUOTA_AUTHORITY_CONFIG": str(config), **environ})


def policy_from(tmp_path: Path, toml: str) -> Policy:
    return settings_with(tmp_path, toml).policy


def tier(name: str, minimum: int, limit: int | None, cap: int | None) -> TierPolicy:
    return TierPolicy(name, minimum, limit, cap)


# --- defaults -------------------------------------------------------------------------


def test_default_tiers_are_the_ones_in_product_md() -> None:
    assert load_settings({}).policy.tiers == (
        tier("T0", 0, 50, 20_000),
        tier("T1", 1, 200, 20_000),
        tier("T2", 200_000, 500, 1_000_000),
        tier("T3", 5_000_000, None, None),
    )


def test_default_week_starts_sunday_at_midnight() -> None:
    week = load_settings({}).policy.week

    assert week.refresh_weekday == SUNDAY
    assert week.refresh_time == time(0, 0)


def test_default_time_zone_is_utc() -> None:
    assert load_settings({}).policy.week.default_time_zone == "UTC"


def test_default_starter_pack_is_1000_units() -> None:
    assert load_settings({}).policy.starter_pack_size == 1000


def test_default_allows_5_messages_before_a_reply() -> None:
    assert load_settings({}).policy.messages.max_before_reply == 5


def test_default_keeps_request_ids_14_days() -> None:
    assert load_settings({}).policy.idempotency_retention_days == 14


def test_default_process_settings() -> None:
    settings = load_settings({})

    assert settings.listen == "127.0.0.1:50051"
    assert settings.database_url is None
    assert settings.data_dir == Path(".quota-authority")
    assert settings.config_path is None


def test_blank_environment_values_mean_the_default() -> None:
    settings = load_settings(
        {
            "QUOTA_AUTHORITY_LISTEN": "  ",
            "QUOTA_AUTHORITY_DB_POOL_SIZE": "",
            "QUOTA_AUTHORITY_CONFIG": "",
        }
    )

    assert settings.listen == "127.0.0.1:50051"
    assert settings.db_pool_size == Settings().db_pool_size
    assert settings.config_path is None


# --- the environment ------------------------------------------------------------------


def test_environment_overrides_process_settings(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "QUOTA_AUTHORITY_LISTEN": "0.0.0.0:6000",
            "QUOTA_AUTHORITY_DATABASE_URL": "postgresql://qa@db:5432/quota",
            "QUOTA_AUTHORITY_DATA_DIR": str(tmp_path / "pg"),
            "QUOTA_AUTHORITY_LOG_LEVEL": "debug",
            "QUOTA_AUTHORITY_DB_POOL_SIZE": "25",
            "QUOTA_AUTHORITY_LOCK_TIMEOUT_MS": "750",
            "QUOTA_AUTHORITY_STATEMENT_TIMEOUT_MS": "9000",
            "QUOTA_AUTHORITY_SHUTDOWN_GRACE_S": "2.5",
            "QUOTA_AUTHORITY_HEALTH_INTERVAL_S": "0.5",
            "QUOTA_AUTHORITY_MAX_MESSAGE_BYTES": "65536",
            "QUOTA_AUTHORITY_MAX_CONCURRENT_RPCS": "200",
            "QUOTA_AUTHORITY_EVENT_LOOP": "asyncio",
            "QUOTA_AUTHORITY_BATCH_MAX_SIZE": "32",
            "QUOTA_AUTHORITY_BATCH_MAX_IN_FLIGHT": "2",
            "QUOTA_AUTHORITY_BATCH_FILL_WAIT_MS": "0",
            "QUOTA_AUTHORITY_MAX_DEADLINE_MS": "3000",
            "QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE": "true",
            "QUOTA_AUTHORITY_METRICS_LISTEN": "0.0.0.0:9464",
        }
    )

    assert settings.listen == "0.0.0.0:6000"
    assert settings.database_url == "postgresql://qa@db:5432/quota"
    assert settings.data_dir == tmp_path / "pg"
    assert settings.log_level == "DEBUG"
    assert settings.db_pool_size == 25
    assert settings.lock_timeout_ms == 750
    assert settings.statement_timeout_ms == 9000
    assert settings.shutdown_grace_s == 2.5
    assert settings.health_interval_s == 0.5
    assert (settings.max_message_bytes, settings.max_concurrent_rpcs) == (65536, 200)
    assert settings.event_loop == "asyncio"
    assert (settings.batch_max_size, settings.batch_max_in_flight) == (32, 2)
    assert settings.batch_fill_wait_ms == 0
    assert settings.max_deadline_ms == 3000
    assert settings.allow_unauthenticated_remote
    assert settings.metrics_listen == "0.0.0.0:9464"


def test_listen_accepts_an_ipv6_address() -> None:
    assert load_settings({"QUOTA_AUTHORITY_LISTEN": "[::1]:50051"}).listen == "[::1]:50051"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("QUOTA_AUTHORITY_LISTEN", "50051"),
        ("QUOTA_AUTHORITY_LISTEN", ":50051"),
        ("QUOTA_AUTHORITY_LISTEN", "localhost:grpc"),
        ("QUOTA_AUTHORITY_LISTEN", "localhost:70000"),
        ("QUOTA_AUTHORITY_DB_POOL_SIZE", "0"),
        ("QUOTA_AUTHORITY_DB_POOL_SIZE", "-3"),
        ("QUOTA_AUTHORITY_DB_POOL_SIZE", "ten"),
        ("QUOTA_AUTHORITY_LOCK_TIMEOUT_MS", "0"),
        ("QUOTA_AUTHORITY_STATEMENT_TIMEOUT_MS", "fast"),
        ("QUOTA_AUTHORITY_SHUTDOWN_GRACE_S", "-1"),
        ("QUOTA_AUTHORITY_HEALTH_INTERVAL_S", "0"),
        ("QUOTA_AUTHORITY_DATABASE_URL", "mysql://db/quota"),
        ("QUOTA_AUTHORITY_LOG_LEVEL", "LOUD"),
        ("QUOTA_AUTHORITY_MAX_MESSAGE_BYTES", "100"),
        ("QUOTA_AUTHORITY_MAX_CONCURRENT_RPCS", "0"),
        ("QUOTA_AUTHORITY_EVENT_LOOP", "trio"),
        ("QUOTA_AUTHORITY_BATCH_MAX_SIZE", "0"),
        ("QUOTA_AUTHORITY_BATCH_MAX_IN_FLIGHT", "0"),
        ("QUOTA_AUTHORITY_BATCH_FILL_WAIT_MS", "-1"),
        ("QUOTA_AUTHORITY_MAX_DEADLINE_MS", "0"),
        ("QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE", "yes"),
        ("QUOTA_AUTHORITY_TLS_CERT_FILE", "/no/such/cert.pem"),
        ("QUOTA_AUTHORITY_CALLERS_FILE", "/no/such/callers.toml"),
        ("QUOTA_AUTHORITY_METRICS_LISTEN", "9464"),
        ("QUOTA_AUTHORITY_HTTP_LISTEN", "8080"),
        ("QUOTA_AUTHORITY_HTTP_LISTEN", "0.0.0.0:8080"),  # beyond loopback, no callers file
    ],
)
def test_bad_environment_value_is_refused_naming_the_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}:"):
        load_settings({key: value})


# --- the policy file ------------------------------------------------------------------

EVERY_SECTION = """
[[tiers]]
name = "Starter"
min_gmv_30d_minor = 0
weekly_limit = 10
max_creator_followers = 5000

[[tiers]]
name = "Growing"
min_gmv_30d_minor = 100000
weekly_limit = 300

[[tiers]]
name = "Top"
min_gmv_30d_minor = 10000000
max_creator_followers = 2000000

[week]
refresh_weekday = "monday"
refresh_time = "09:30"
default_time_zone = "Asia/Tokyo"

[starter_pack]
size = 250

[messages]
max_before_reply = 3

[idempotency]
retention_days = 30

[retention]
decisions_days = 180
ended_pair_weeks_days = 0
gmv_days = 60
"""


def test_policy_file_overrides_the_tiers(tmp_path: Path) -> None:
    assert policy_from(tmp_path, EVERY_SECTION).tiers == (
        tier("Starter", 0, 10, 5_000),
        tier("Growing", 100_000, 300, None),
        tier("Top", 10_000_000, None, 2_000_000),
    )


def test_policy_file_overrides_the_week(tmp_path: Path) -> None:
    week = policy_from(tmp_path, EVERY_SECTION).week

    assert week.refresh_weekday == MONDAY
    assert week.refresh_time == time(9, 30)
    assert week.default_time_zone == "Asia/Tokyo"


def test_policy_file_overrides_the_starter_pack(tmp_path: Path) -> None:
    assert policy_from(tmp_path, EVERY_SECTION).starter_pack_size == 250


def test_policy_file_overrides_messages_before_reply(tmp_path: Path) -> None:
    assert policy_from(tmp_path, EVERY_SECTION).messages.max_before_reply == 3


def test_policy_file_overrides_request_id_retention(tmp_path: Path) -> None:
    assert policy_from(tmp_path, EVERY_SECTION).idempotency_retention_days == 30


def test_policy_file_overrides_the_retention(tmp_path: Path) -> None:
    assert policy_from(tmp_path, EVERY_SECTION).retention == RetentionPolicy(
        decisions_days=180, ended_pair_weeks_days=0, gmv_days=60
    )


def test_retention_defaults_keep_a_quarter_of_decisions_and_every_rules_window() -> None:
    assert Policy().retention == RetentionPolicy(
        decisions_days=91, ended_pair_weeks_days=7, gmv_days=90
    )


def test_settings_remember_the_policy_file_path(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, EVERY_SECTION)

    assert settings.config_path == tmp_path / "policy.toml"


def test_omitted_weekly_limit_and_follower_cap_mean_unlimited(tmp_path: Path) -> None:
    toml = '[[tiers]]\nname = "All"\nmin_gmv_30d_minor = 0\n'

    assert policy_from(tmp_path, toml).tiers == (tier("All", 0, None, None),)


def test_missing_sections_keep_their_defaults(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, "[starter_pack]\nsize = 0\n")

    assert policy.starter_pack_size == 0
    assert policy.tiers == Policy().tiers
    assert policy.week == Policy().week
    assert policy.messages == Policy().messages
    assert policy.idempotency_retention_days == 14


def test_refresh_time_may_be_a_toml_local_time(tmp_path: Path) -> None:
    week = policy_from(tmp_path, "[week]\nrefresh_time = 06:15:30\n").week

    assert week.refresh_time == time(6, 15, 30)


def test_refresh_weekday_ignores_case(tmp_path: Path) -> None:
    assert (
        policy_from(tmp_path, '[week]\nrefresh_weekday = "Wednesday"\n').week.refresh_weekday == 2
    )


# --- bad policy files -----------------------------------------------------------------


def tiers_plus(extra: str) -> str:
    return VALID_TIERS + "\n[[tiers]]\n" + extra


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        pytest.param(
            '[[tiers]]\nname = "A"\nmin_gmv_30d_minor = 0\n'
            '[[tiers]]\nname = "B"\nmin_gmv_30d_minor = 0\n',
            "tiers[1].min_gmv_30d_minor",
            id="tier-threshold-not-increasing",
        ),
        pytest.param(
            tiers_plus('name = "T2"\nmin_gmv_30d_minor = 1\n'),
            "tiers[2].min_gmv_30d_minor",
            id="tier-threshold-repeated",
        ),
        pytest.param(
            '[[tiers]]\nname = "A"\nmin_gmv_30d_minor = 5\n',
            "tiers[0].min_gmv_30d_minor",
            id="first-tier-not-at-zero",
        ),
        pytest.param(
            '[[tiers]]\nname = "A"\nmin_gmv_30d_minor = 0\n[[tiers]]\nname = "B"\n',
            "tiers[1].min_gmv_30d_minor",
            id="tier-threshold-missing",
        ),
        pytest.param(
            tiers_plus('name = "T2"\nmin_gmv_30d_minor = "200000"\n'),
            "tiers[2].min_gmv_30d_minor",
            id="tier-threshold-not-an-integer",
        ),
        pytest.param(
            tiers_plus('name = "T2"\nmin_gmv_30d_minor = -1\n'),
            "tiers[2].min_gmv_30d_minor",
            id="tier-threshold-negative",
        ),
        pytest.param(
            tiers_plus('name = "T2"\nmin_gmv_30d_minor = 200000\nweekly_limit = -5\n'),
            "tiers[2].weekly_limit",
            id="weekly-limit-negative",
        ),
        pytest.param(
            tiers_plus('name = "T2"\nmin_gmv_30d_minor = 200000\nmax_creator_followers = 1.5\n'),
            "tiers[2].max_creator_followers",
            id="follower-cap-not-an-integer",
        ),
        pytest.param(
            tiers_plus('name = "T1"\nmin_gmv_30d_minor = 200000\n'),
            "tiers[2].name",
            id="duplicate-tier-name",
        ),
        pytest.param(
            tiers_plus("min_gmv_30d_minor = 200000\n"),
            "tiers[2].name",
            id="tier-name-missing",
        ),
        pytest.param(
            tiers_plus('name = " "\nmin_gmv_30d_minor = 200000\n'),
            "tiers[2].name",
            id="tier-name-blank",
        ),
        pytest.param(
            tiers_plus('name = "T2"\nmin_gmv_30d_minor = 200000\nweekly_quota = 500\n'),
            "tiers[2].weekly_quota",
            id="unknown-tier-key",
        ),
        pytest.param("tiers = []\n", "tiers", id="no-tiers"),
        pytest.param(
            '[week]\nrefresh_weekday = "someday"\n',
            "week.refresh_weekday",
            id="unknown-weekday",
        ),
        pytest.param(
            "[week]\nrefresh_weekday = 6\n",
            "week.refresh_weekday",
            id="weekday-as-a-number",
        ),
        pytest.param(
            '[week]\nrefresh_time = "25:00"\n',
            "week.refresh_time",
            id="refresh-time-out-of-range",
        ),
        pytest.param(
            "[week]\nrefresh_time = 930\n",
            "week.refresh_time",
            id="refresh-time-not-a-time",
        ),
        pytest.param(
            '[week]\nrefresh_time = "09:30+09:00"\n',
            "week.refresh_time",
            id="refresh-time-with-offset",
        ),
        pytest.param(
            '[week]\ndefault_time_zone = "Mars/Olympus_Mons"\n',
            "week.default_time_zone",
            id="unknown-time-zone",
        ),
        pytest.param(
            '[week]\ndefault_time_zone = ""\n',
            "week.default_time_zone",
            id="empty-time-zone",
        ),
        pytest.param(
            '[week]\ndefault_time_zone = "../../etc/passwd"\n',
            "week.default_time_zone",
            id="time-zone-path",
        ),
        pytest.param(
            "[week]\ndefault_time_zone = 9\n",
            "week.default_time_zone",
            id="time-zone-not-a-string",
        ),
        pytest.param('[week]\nstart_day = "sunday"\n', "week.start_day", id="unknown-week-key"),
        pytest.param("week = 3\n", "week", id="week-not-a-table"),
        pytest.param("[starter_pack]\nsize = -1\n", "starter_pack.size", id="pack-negative"),
        pytest.param(
            '[starter_pack]\nsize = "lots"\n', "starter_pack.size", id="pack-not-an-integer"
        ),
        pytest.param("[starter_pack]\nsize = true\n", "starter_pack.size", id="pack-boolean"),
        pytest.param("[starter_pack]\nunits = 10\n", "starter_pack.units", id="unknown-pack-key"),
        pytest.param(
            "[messages]\nmax_before_reply = -1\n",
            "messages.max_before_reply",
            id="messages-negative",
        ),
        pytest.param(
            "[messages]\nmax_before_reply = 2.5\n",
            "messages.max_before_reply",
            id="messages-not-an-integer",
        ),
        pytest.param(
            "[idempotency]\nretention_days = 7\n",
            "idempotency.retention_days",
            id="retention-under-14-days",
        ),
        pytest.param(
            "[retention]\ndecisions_days = 7\n",
            "retention.decisions_days",
            id="decisions-kept-less-than-a-week-and-a-day",
        ),
        pytest.param(
            "[retention]\ngmv_days = 37\n",
            "retention.gmv_days",
            id="gmv-kept-less-than-the-tier-window-needs",
        ),
        pytest.param(
            "[retention]\nended_pair_weeks_days = -1\n",
            "retention.ended_pair_weeks_days",
            id="pair-weeks-negative",
        ),
        pytest.param(
            "[retention]\naudit_days = 30\n", "retention.audit_days", id="retention-unknown-key"
        ),
        pytest.param("[limits]\nweekly = 5\n", "limits", id="unknown-section"),
        pytest.param("[week\n", "QUOTA_AUTHORITY_CONFIG", id="not-toml"),
    ],
)
def test_bad_policy_is_refused_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}:"):
        policy_from(tmp_path, toml)


def test_unknown_section_is_reported_as_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown section"):
        policy_from(tmp_path, "[limits]\nweekly = 5\n")


def test_missing_policy_file_is_refused_naming_the_variable_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"

    with pytest.raises(ConfigError) as refused:
        load_settings({"QUOTA_AUTHORITY_CONFIG": str(missing)})

    assert "QUOTA_AUTHORITY_CONFIG" in str(refused.value)
    assert str(missing) in str(refused.value)


# --- variables that are no setting ------------------------------------------------------------


def test_a_misspelled_setting_is_refused_naming_the_nearest_setting() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"QUOTA_AUTHORITY_DATABSE_URL": "postgresql://quota@db/quota"})

    assert str(refused.value) == (
        "QUOTA_AUTHORITY_DATABSE_URL: unknown variable, not a setting; "
        "did you mean QUOTA_AUTHORITY_DATABASE_URL?"
    )


def test_an_unknown_variable_like_no_setting_is_refused_pointing_to_the_docs() -> None:
    with pytest.raises(ConfigError, match=r"^QUOTA_AUTHORITY_FOO: unknown variable.*operations"):
        load_settings({"QUOTA_AUTHORITY_FOO": "1"})


def test_an_unknown_variable_set_empty_counts_as_unset_like_a_setting() -> None:
    assert load_settings({"QUOTA_AUTHORITY_DATABSE_URL": " "}) == load_settings({})


def test_the_variables_our_own_tools_read_are_let_through() -> None:
    assert load_settings(dict.fromkeys(NOT_SETTINGS, "x")) == load_settings({})


# Unknown on purpose, in the tests and docs that show one refused.
UNKNOWN_ON_PURPOSE = {"QUOTA_AUTHORITY_DATABSE_URL", "QUOTA_AUTHORITY_FOO"}
ROOT = Path(__file__).resolve().parents[1]
_NOT_OURS = {"node_modules", "dist", "__pycache__"}


def _repository_files() -> list[Path]:
    """The repository's own files: no hidden directory but .ci (.git, .venv, data
    directories), no installed or built ones."""
    files = []
    for directory, subdirectories, names in os.walk(ROOT):
        subdirectories[:] = [
            d for d in subdirectories if d not in _NOT_OURS and (d == ".ci" or d[0] != ".")
        ]
        files += [Path(directory, name) for name in names]
    return files


def test_every_variable_of_our_prefix_the_repository_names_is_let_through() -> None:
    """A variable a script, the Makefile, a client or a doc sets would otherwise stop every
    command run where it is set: it must be a setting or in NOT_SETTINGS."""
    known = {v.name for v in variables().values()} | NOT_SETTINGS.keys()
    name = re.compile(re.escape(PREFIX) + r"[A-Z0-9_]*[A-Z0-9]")
    named: dict[str, str] = {}
    for path in _repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for found in name.findall(text):
            named.setdefault(found, str(path.relative_to(ROOT)))
    assert "QUOTA_AUTHORITY_TARGET" in named and "QUOTA_AUTHORITY_LISTEN" in named  # it looked
    unknown = {n: where for n, where in named.items() if n not in known | UNKNOWN_ON_PURPOSE}
    assert not unknown, f"variables that every command would refuse: {unknown}"
