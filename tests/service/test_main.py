"""``python -m service``: the uvicorn options it runs with."""

from __future__ import annotations

import uvicorn
import uvloop

from service.api.server import uvicorn_options
from service.config import Settings


def test_server_runs_the_c_http_parser_and_uvloop():
    config = uvicorn.Config(lambda scope, receive, send: None, **uvicorn_options(Settings(port=8123)))
    config.load()
    assert config.http_protocol_class.__name__ == "HeaderTimeoutProtocol"  # httptools, with a header deadline
    assert config.http_protocol_class.__mro__[1].__name__ == "HttpToolsProtocol"
    loop = config.get_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert (config.host, config.port, config.timeout_graceful_shutdown) == ("127.0.0.1", 8123, 30.0)
    assert config.timeout_keep_alive == 5 and config.http_protocol_class.timeout == 10


def test_an_unusable_database_url_is_one_line_before_the_server_starts(monkeypatch, capsys):
    from service.__main__ import main
    from service.config import get_settings

    monkeypatch.setenv("NORMGATE_DATABASE_URL", "mysql://normgate:s3cret@db/normgate")
    get_settings.cache_clear()
    try:
        assert main() == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.startswith("normgate: error: unsupported database 'mysql'") and "s3cret" not in err
