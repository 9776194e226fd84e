"""Routes: which driver decodes what arrives on which MQTT topic filter."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from drivers import registry
from drivers.base import Driver
from meterhub.settings import MqttRoute


@dataclass(frozen=True)
class Route:
    filter: str
    driver_key: str
    driver: Driver
    response_topic: str | None = None

    def matches(self, topic: str) -> bool:
        return bool(mqtt.topic_matches_sub(self.filter, topic))

    def reply_topic(self, topic: str) -> str | None:
        """The response topic for an uplink on `topic`; {1}, {2}… are the filter's + segments."""
        if self.response_topic is None:
            return None
        wild = [part for part, pattern in zip(topic.split("/"), self.filter.split("/"), strict=False) if pattern == "+"]
        return self.response_topic.format("", *wild)


def build_routes(configured: list[MqttRoute]) -> list[Route]:
    routes = []
    for index, route in enumerate(configured):
        options = dict(route.settings)
        if route.settings_file is not None:
            try:
                with open(route.settings_file, "rb") as fh:
                    options = {**tomllib.load(fh), **options}
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"collector.routes[{index}].settings_file: {exc}") from exc
        try:
            driver = registry.create(route.driver, options)
        except (registry.UnknownDriver, ValueError) as exc:
            raise ValueError(f"collector.routes[{index}] ({route.filter}): {exc}") from exc
        routes.append(Route(route.filter, route.driver, driver, route.response_topic))
    return routes


def find_route(routes: list[Route], topic: str) -> Route | None:
    for route in routes:
        if route.matches(topic):
            return route
    return None
