"""Every text of the console exists in Chinese and English."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dashboards import i18n

TEMPLATES = Path(i18n.__file__).parent / "templates"
LITERAL_KEY = re.compile(r"""\bt\(\s*['"]([a-z_]+\.[a-z0-9_.]+)['"]\s*[,)]""")


def test_catalogue_loads_with_both_languages() -> None:
    texts = i18n.catalogue()
    assert texts, "no texts"
    for key, entry in texts.items():
        assert entry["zh"].strip() and entry["en"].strip(), key


def test_every_key_used_in_templates_exists() -> None:
    texts = i18n.catalogue()
    missing = []
    for template in sorted(TEMPLATES.rglob("*.html")):
        for key in LITERAL_KEY.findall(template.read_text(encoding="utf-8")):
            if key not in texts:
                missing.append(f"{template.relative_to(TEMPLATES)}: {key}")
    assert missing == []


def test_a_broken_catalogue_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.toml").write_text('[a]\nb = { zh = "只有中文" }\n', encoding="utf-8")
    monkeypatch.setattr(i18n, "LOCALES", tmp_path)
    i18n.catalogue.cache_clear()
    try:
        with pytest.raises(i18n.CatalogueError, match=r"a\.b"):
            i18n.catalogue()
    finally:
        monkeypatch.undo()
        i18n.catalogue.cache_clear()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("en-US,en;q=0.9", "en"),
        ("fr-FR,zh-TW;q=0.5", "zh"),
        ("", "en"),
        ("de-DE", "en"),
        ("en;q=0.4,zh;q=0.8", "zh"),
    ],
)
def test_language_from_the_browser(header: str, expected: str) -> None:
    assert i18n.negotiate(None, None, header) == expected


def test_cookie_then_user_setting_win_over_browser() -> None:
    assert i18n.negotiate("en", "zh", "zh-CN") == "en"
    assert i18n.negotiate(None, "en", "zh-CN") == "en"
