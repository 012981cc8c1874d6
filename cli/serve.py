"""``eport serve``: the CA (and later the token service) under gunicorn."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from ca.config import CAConfig


class EPortServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn with our app factory; each worker builds its own app (no shared engines)."""

    def __init__(self, cfg: CAConfig, options: dict[str, Any]) -> None:
        self.cfg_ca = cfg
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from ca.app import create_app

        return create_app(self.cfg_ca)


def run(cfg: CAConfig, host: str, port: int, workers: int, threads: int) -> None:
    EPortServer(
        cfg,
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread" if threads > 1 else "sync",
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "timeout": 60,
            "graceful_timeout": 5,
        },
    ).run()
