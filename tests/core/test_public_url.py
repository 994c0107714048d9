"""``ISTMO_PUBLIC_URL`` (``broker.config.public_url_of``): what is accepted, the one form
it is kept in, and what is refused with a message naming the setting, never the value; the
clients' side of the same form (``clients.oauth.canonical_url``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.config import MAX_PUBLIC_URL_CHARS, Settings, public_url_of
from clients.oauth import canonical_url, token_endpoint
from schemas.errors import ConfigError


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("https://istmo.example.org", "https://istmo.example.org"),
        ("https://istmo.example.org/", "https://istmo.example.org"),
        ("HTTPS://Istmo.Example.ORG/", "https://istmo.example.org"),
        ("https://istmo.example.org:443", "https://istmo.example.org"),  # default port
        ("https://istmo.example.org:8443", "https://istmo.example.org:8443"),
        ("https://istmo.example.org:", "https://istmo.example.org"),
        ("https://broker-2", "https://broker-2"),  # a name may end in a digit
        ("https://10.0.0.7", "https://10.0.0.7"),
        ("https://[2001:db8::0001]:8443", "https://[2001:db8::1]:8443"),
        ("http://localhost:8844", "http://localhost:8844"),  # http on loopback only
        ("http://127.0.0.1:8844", "http://127.0.0.1:8844"),
        ("http://127.0.0.2", "http://127.0.0.2"),
        ("http://[::1]:8844/", "http://[::1]:8844"),
        ("http://127.0.0.1:80", "http://127.0.0.1"),
    ],
)
def test_accepted_and_kept_in_one_form(given: str, kept: str) -> None:
    assert public_url_of(given) == kept
    assert public_url_of(kept) == kept  # the form is stable
    assert canonical_url(given) == kept  # clients build the same audience from it
    assert token_endpoint(given) == kept + "/v1/token"


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("", "characters long"),
        ("https://" + "a" * MAX_PUBLIC_URL_CHARS + ".org", "characters long"),
        ("https://istmo.example.org /", "printable ASCII"),
        ("https://istmo.example.org\n", "printable ASCII"),
        ("https://ístmo.example.org", "printable ASCII"),
        ("istmo.example.org", "https://"),
        ("ftp://istmo.example.org", "https://"),
        ("javascript:alert(1)", "https://"),
        ("https:istmo.example.org", "no host"),
        ("https:///v1", "no host"),
        ("http://istmo.example.org", "loopback hosts only"),
        ("http://10.0.0.7:8844", "loopback hosts only"),
        ("https://admin:hunter2@istmo.example.org", "user name or password"),
        ("https://istmo.example.org\\@evil.example", "user name or password"),
        ("https://istmo.example.org/?next=x", "query or a fragment"),
        ("https://istmo.example.org/?", "query or a fragment"),
        ("https://istmo.example.org/#top", "query or a fragment"),
        ("https://istmo.example.org/istmo", "path"),
        ("https://istmo.example.org/v1/token", "path"),
        ("https://istmo.example.org:0", "port"),
        ("https://istmo.example.org:99999", "port"),
        ("https://istmo.example.org:https", "port"),
        ("https://istmo_example.org", "valid host"),
        ("https://-istmo.example.org", "valid host"),
        ("https://istmo..example.org", "valid host"),
        ("https://istmo.example.org.", "valid host"),
        ("https://999.1.1.1", "valid host"),  # a browser reads it as an IPv4 address
        ("https://1.2.3", "valid host"),
        ("https://[fe80::1%25eth0]", "valid host"),
        ("http://::1:8844", "port"),  # an IPv6 address without brackets
    ],
)
def test_refused_naming_the_setting_not_the_value(given: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        public_url_of(given)
    message = str(caught.value)
    assert message.startswith("ISTMO_PUBLIC_URL (--public-url) ")
    assert reason in message
    assert "https://istmo.example.org" in (caught.value.hint or "")  # what to give
    assert "hunter2" not in message + (caught.value.hint or "")
    if given:
        assert given not in message


def test_from_the_environment_or_the_flag() -> None:
    env = {"ISTMO_PUBLIC_URL": "https://Istmo.Example.org/"}
    assert Settings.from_env(env).public_url == "https://istmo.example.org"
    flag = Settings.from_env(env, public_url="https://other.example.org:8443/")
    assert flag.public_url == "https://other.example.org:8443"  # the flag wins
    assert Settings.from_env({"ISTMO_PUBLIC_URL": ""}).public_url is None  # empty: unset
    with pytest.raises(ConfigError, match="ISTMO_PUBLIC_URL"):
        Settings.from_env({"ISTMO_PUBLIC_URL": "http://istmo.example.org"})
    with pytest.raises(ConfigError, match="ISTMO_PUBLIC_URL"):
        Settings.from_env({}, public_url="https://istmo.example.org/api")


def test_base_url_is_the_public_url_else_loopback() -> None:
    plain = Settings.from_env({}, api_port=8855)
    assert plain.public_url is None
    assert plain.api_url == plain.base_url == "http://127.0.0.1:8855"
    public = Settings.from_env({"ISTMO_PUBLIC_URL": "https://istmo.example.org"}, api_port=8855)
    assert public.base_url == "https://istmo.example.org"
    assert public.api_url == "http://127.0.0.1:8855"  # where local tools still call
    assert Settings.from_env({}, host="::1", api_port=8855).api_url == "http://[::1]:8855"


def test_the_deploy_examples_set_a_valid_public_url() -> None:
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    env = (deploy / "systemd" / "istmo.env.example").read_text()
    k8s = (deploy / "k8s" / "20-broker.yaml").read_text()
    found = re.findall(r"^ISTMO_PUBLIC_URL=(\S+)$", env, re.M)
    found += re.findall(r'^\s+ISTMO_PUBLIC_URL: "([^"]+)"$', k8s, re.M)
    assert found == ["https://istmo.region.example"] * 2
    assert all(public_url_of(url) == url for url in found)
