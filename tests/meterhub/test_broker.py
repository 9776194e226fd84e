"""The MQTT broker the tests and the demo use."""

import threading

import paho.mqtt.client as mqtt
import pytest

from meterhub.broker import BrokerAddress, start_embedded


def round_trip(address: BrokerAddress, topic: str = "meters/M1/up") -> bytes:
    received: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()
    protocol = mqtt.MQTTv5 if address.mqtt5 else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
    if address.username:
        client.username_pw_set(address.username, address.password)
    client.on_message = lambda c, u, m: (received.append(m.payload), done.set())
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        assert subscribed.wait(5)
        client.publish(topic, b'{"meter": "M1"}', qos=1).wait_for_publish(5)
        assert done.wait(5), "message did not come back"
    finally:
        client.loop_stop()
        client.disconnect()
    return received[0]


def test_broker_fixture_delivers(mqtt_broker: BrokerAddress) -> None:
    assert round_trip(mqtt_broker) == b'{"meter": "M1"}'


def test_embedded_broker_delivers() -> None:
    broker = start_embedded()
    try:
        assert round_trip(broker.address) == b'{"meter": "M1"}'
    finally:
        broker.stop()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883, None)),
        ("mqtt://col:pw@broker.internal:11883", ("broker.internal", 11883, "col")),
        ("broker.internal", ("broker.internal", 1883, None)),
    ],
)
def test_broker_url_parsing(url: str, expected: tuple[str, int, str | None]) -> None:
    address = BrokerAddress.parse(url)
    assert (address.host, address.port, address.username) == expected


def test_broker_url_with_wrong_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        BrokerAddress.parse("http://x:1")
