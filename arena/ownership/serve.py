"""``arena serve``: a model file as a prediction API of the ``arena-predict/1`` convention
(``arena.ownership.remote``), optionally behind an evasion attack's query filter.

It is the reference server of the convention: what ``arena verify --endpoint`` is tested
against, and what a vendor runs to rehearse a dispute, for instance against a thief who
serves the stolen model behind ``evade-detector``. Standard library only
(``http.server``); one forward pass at a time; every request bounded in size.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arena.core.context import Context, default_device
from arena.core.plugin import QueryAttack
from arena.core.protocols import Protocol
from arena.core.registry import attacks
from arena.ownership.modelfile import load_model
from arena.ownership.remote import PREDICT_FORMAT, decode_images
from arena.util.errors import ArenaError


class PredictionServer(ThreadingHTTPServer):
    """Answers ``GET /info`` and ``POST /predict`` with ``model``'s top-1 labels."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        model: nn.Module,
        protocol: Protocol,
        max_batch: int = 64,
        read_timeout: float = 30.0,
    ) -> None:
        if not 1 <= max_batch <= 10_000:
            raise ArenaError(f"--max-batch must be 1-10,000, got {max_batch}")
        self.model = model.eval()
        self.protocol = protocol
        self.max_batch = max_batch
        self.read_timeout = read_timeout
        self.shape = (protocol.channels, protocol.image_size, protocol.image_size)
        values = self.shape[0] * self.shape[1] * self.shape[2]
        # Nested lists spend at most about 25 characters a value; base64 far fewer.
        self.max_request_bytes = max_batch * values * 25 + 65536
        self.device = default_device()
        self.model.to(self.device)
        self.lock = threading.Lock()  # one forward pass at a time
        self.answered = 0
        try:
            super().__init__(address, _Handler)
        except OSError as error:
            host, port = address
            raise ArenaError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line on stderr, not a traceback: a client that hung up, a bad request."""
        error = sys.exc_info()[1]
        print(f"request from {client_address[0]} failed: {error!r}", file=sys.stderr)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def info(self) -> dict[str, Any]:
        return {
            "format": PREDICT_FORMAT,
            "input_shape": list(self.shape),
            "classes": self.protocol.num_classes,
            "max_batch": self.max_batch,
        }

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[int]:
        with self.lock:
            logits = self.model(images.to(self.device))
            self.answered += len(images)
        return logits.argmax(dim=1).cpu().tolist()


class _Handler(BaseHTTPRequestHandler):
    server: PredictionServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # a client that stops sending is dropped
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a request log line per batch would bury the server's own lines

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/info":
            self._answer(404, {"error": f"no such path {self.path}; GET /info, POST /predict"})
            return
        self._answer(200, self.server.info())

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/predict":
            self._answer(404, {"error": f"no such path {self.path}; GET /info, POST /predict"})
            return
        length = self.headers.get("Content-Length", "")
        if not length.strip().isdigit():
            self._answer(411, {"error": "a Content-Length is required"})
            return
        if int(length) > self.server.max_request_bytes:
            self._answer(413, {"error": f"at most {self.server.max_request_bytes:,} bytes"})
            return
        try:
            record = json.loads(self.rfile.read(int(length)))
            images = decode_images(record, self.server.shape, self.server.max_batch)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            self._answer(400, {"error": f"malformed JSON: {error}"})
            return
        except ValueError as error:
            self._answer(400, {"error": str(error)})
            return
        labels = self.server.predict(torch.from_numpy(images))
        self._answer(200, {"labels": labels})

    def _answer(self, status: int, record: dict[str, Any]) -> None:
        body = json.dumps(record).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


def served_model(
    model_path: Path,
    protocol: Protocol,
    architecture: str | None = None,
    query_filter: str | None = None,
    filter_params: dict[str, Any] | None = None,
    seed: int = 0,
) -> nn.Module:
    """The model of ``model_path``, behind the query filter of evasion attack
    ``query_filter`` (fitted on the protocol's attacker split at ``seed``) if one is named."""
    model = load_model(model_path, protocol, architecture).to(default_device()).eval()
    if query_filter is None:
        return model
    attack_class = attacks.get(query_filter)
    if not (isinstance(attack_class, type) and issubclass(attack_class, QueryAttack)):
        raise ArenaError(
            f"--filter {query_filter!r} is not a query-time attack; choose an evasion "
            "attack (arena list attacks), e.g. evade-detector"
        )
    attack = attack_class(filter_params)
    return attack.serve(model, Context(protocol=protocol, seed=seed))
