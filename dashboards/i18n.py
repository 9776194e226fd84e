"""Chinese and English texts of the console.

Every `locales/*.toml` file holds tables of keys, each key with both languages:

    [nav]
    home = { zh = "首页", en = "Home" }

so that `t("nav.home")` gives the text in the request's language. A key without both languages is an
error when the catalogue loads, so a page can never show half a translation.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "en"
LOCALES = Path(__file__).parent / "locales"


class CatalogueError(ValueError):
    pass


def _flatten(prefix: str, table: dict[str, Any], into: dict[str, dict[str, str]], source: str) -> None:
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and set(value) == set(LANGUAGES) and all(isinstance(v, str) for v in value.values()):
            if name in into:
                raise CatalogueError(f"{source}: {name} is defined twice")
            into[name] = value
        elif isinstance(value, dict) and not (set(value) & set(LANGUAGES)):
            _flatten(name, value, into, source)
        else:
            raise CatalogueError(f"{source}: {name} needs exactly the texts {LANGUAGES}")


@lru_cache(maxsize=1)
def catalogue() -> dict[str, dict[str, str]]:
    texts: dict[str, dict[str, str]] = {}
    for path in sorted(LOCALES.glob("*.toml")):
        with path.open("rb") as fh:
            _flatten("", tomllib.load(fh), texts, path.name)
    return texts


def translate(language: str, key: str, **values: Any) -> str:
    entry = catalogue().get(key)
    text = entry[language] if entry else key
    return text.format(**values) if values else text


def negotiate(cookie: str | None, user_language: str | None, accept_language: str | None) -> str:
    """The cookie (the switch on every page), then the user's setting, then the browser: Chinese for a
    Chinese browser, English otherwise."""
    for choice in (cookie, user_language):
        if choice in LANGUAGES:
            return choice
    best: tuple[float, str] | None = None
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        base = tag.strip().lower().split("-")[0]
        if base in LANGUAGES and (best is None or quality > best[0]):
            best = (quality, base)
    return best[1] if best else DEFAULT_LANGUAGE
