import pytest

from drivers import registry


def test_unknown_driver_names_the_known_ones() -> None:
    with pytest.raises(registry.UnknownDriver, match="no driver with key 'nope'"):
        registry.create("nope")


def test_every_listed_driver_is_importable_and_declares_itself() -> None:
    for key in registry.BUILTIN:
        factory = registry.factory(key)
        assert callable(factory), key
