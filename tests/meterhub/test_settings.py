from pathlib import Path

import pytest

from meterhub.settings import SettingsError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meterhub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_use_embedded_store_under_var() -> None:
    settings = load_settings()
    assert settings.database.url is None
    assert settings.data_dir == Path("var")
    assert settings.timezone == "Asia/Shanghai"


def test_toml_file_is_read(tmp_path: Path) -> None:
    config = write(
        tmp_path, 'data_dir = "/srv/meterhub"\n[database]\nurl = "postgresql://u@db.example:5433/gas"\npool_max = 4\n'
    )
    settings = load_settings(config)
    assert settings.database.url == "postgresql://u@db.example:5433/gas"
    assert settings.database.pool_max == 4
    assert settings.data_dir == Path("/srv/meterhub")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, '[database]\nurl = "postgresql://file@h/db"\n')
    monkeypatch.setenv("METERHUB_DATABASE_URL", "postgresql://env@h/db")
    monkeypatch.setenv("METERHUB_DATA_DIR", "/data")
    monkeypatch.setenv("METERHUB_LOG_LEVEL", "DEBUG")
    settings = load_settings(config)
    assert settings.database.url == "postgresql://env@h/db"
    assert settings.data_dir == Path("/data")
    assert settings.log.level == "DEBUG"


def test_default_file_in_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERHUB_CONFIG")
    monkeypatch.chdir(tmp_path)
    write(tmp_path, 'timezone = "Europe/Berlin"\n')
    assert load_settings().timezone == "Europe/Berlin"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[database]\npool_max = "many"\n', "database.pool_max"),
        ("[database]\npool_max = 0\n", "database.pool_max"),
        ('[database]\nurl = "mysql://x"\n', "database.url"),
        ('[database]\ntimescale = "maybe"\n', "database.timescale"),
        ('timezone = "Mars/Olympus"\n', "timezone"),
        ('[log]\nlevel = "LOUD"\n', "log.level"),
        ("[database]\npoolsize = 3\n", "database.poolsize"),
        ('colour = "blue"\n', "colour"),
    ],
)
def test_wrong_value_in_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(write(tmp_path, text))
    assert key in str(err.value)


def test_wrong_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERHUB_DATABASE_POOL_MAX", "abc")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "database.pool_max" in str(err.value)
    assert "METERHUB_DATABASE_POOL_MAX" in str(err.value)


def test_broken_toml_and_missing_file_are_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(SettingsError, match=r"meterhub\.toml"):
        load_settings(write(tmp_path, "[database\n"))


def test_sample_config_at_repo_root_is_valid() -> None:
    sample = Path(__file__).resolve().parents[2] / "meterhub.sample.toml"
    settings = load_settings(sample)
    assert settings.database.url is None
    assert settings.timezone == "Asia/Shanghai"


def test_sample_config_with_every_example_uncommented_is_valid(tmp_path: Path) -> None:
    import re

    sample = (Path(__file__).resolve().parents[2] / "meterhub.sample.toml").read_text(encoding="utf-8")
    uncommented = re.sub(r"^# (?=\[|[a-z_]+ = )", "", sample, flags=re.MULTILINE)
    settings = load_settings(write(tmp_path, uncommented))
    assert settings.collector.share_group == "collectors"
    assert [r.driver for r in settings.collector.routes] == ["native_json", "native_json", "cjt188", "json_mapping"]
    assert settings.poller.device[0].bus == settings.poller.bus[0].name
