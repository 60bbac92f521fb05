"""`moerec serve` in development mode announces the /ui/ playground with a working token."""

from moerec.cli import _announce_playground
from moerec.config import ServiceSettings
from moerec.serving.auth import TokenVerifier


def test_development_mode_prints_the_page_and_a_token_the_service_accepts(capsys):
    settings = ServiceSettings()
    _announce_playground(settings, "127.0.0.1", 8123)
    printed = capsys.readouterr().err
    assert "http://127.0.0.1:8123/ui/" in printed
    token = printed.strip().splitlines()[-1]
    principal = TokenVerifier(settings).verify(token)
    assert principal.has("recommend:any")
    assert principal.has("events:write")
    assert not principal.has("admin")


def test_nothing_is_printed_when_the_page_is_off(capsys):
    _announce_playground(ServiceSettings(ui_enabled=False), "127.0.0.1", 8123)
    assert capsys.readouterr().err == ""
