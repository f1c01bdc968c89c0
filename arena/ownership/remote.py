"""A suspect model behind a prediction API, queried as a model: ``RemoteModel``.

The owner often holds no weights of a stolen model, only access to the service that
runs it. ``RemoteModel`` is an ``nn.Module`` whose forward pass sends the images to the
service and returns its answers as logits (one-hot of the labels, or the service's
probabilities), so the one verification path (``arena.core.verify.measure``, through
``vendor.verify`` and ``vendor.verify_public``) decides on it unchanged.

The convention the arena speaks by default, ``arena-predict/1`` (``arena serve`` is its
reference server):

- ``GET /info`` -> ``{"format": "arena-predict/1", "input_shape": [C, H, W],
  "classes": K, "max_batch": B}``
- ``POST /predict`` with ``{"encoding": "float32-base64", "images": [...]}``: each image
  the base64 of its C x H x W little-endian float32 values in [0, 1] (or
  ``"uint8-base64"``: bytes 0-255; or no ``encoding`` and nested lists of floats), at
  most B of them -> ``{"labels": [k, ...]}`` (or ``{"probabilities": [[p, ...], ...]}``).

Another API is described by an adapter module (``--adapter``): a Python file or module
with ``predict(send, images) -> labels or probabilities`` and optionally
``info(send) -> dict`` and ``MAX_BATCH``. ``send(method, path, body=None,
content_type="application/json")`` returns the response body; it is the arena's own
transport, so the adapter's requests are bounded like the convention's.

Every request is bounded: one deadline from connecting to the last byte, a largest
response read (a larger one is refused), bounded retries with exponential back-off on
failures that may pass (no connection, a timeout, HTTP 5xx, 408 and 429), a rate limit in
images per second, and a query budget counting triggers and decoys, refused before
anything is sent when it cannot cover them.

Decoys: ordinary test images of the protocol, with their true labels, are shuffled in
among the triggers in an order drawn from the operating system's randomness, so neither
position nor batch tells them apart; the report says how many the service answered
right. A service whose decoy answers are no better than chance (binomial test at the
protocol's alpha) gives no evidence, and the claim is not verified.

Answers are kept in a journal (``$ARENA_HOME/journals``), one file per endpoint and set
of queries, written atomically after every batch. A run the service breaks off ends
with ``ServiceBrokeOff`` (an ``ArenaError``: exit 2) before the subset is recorded as
spent; the same command again re-sends only the images not yet answered. With
``accept_partial`` a broken-off run instead raises ``PartialAnswers``, and verification
decides on the triggers answered: only under an exact null (labels drawn uniformly and
independently of the images, and never sent), where whichever triggers the service
chooses to answer, each matches its label with probability 1/|L| independently, so the
binomial test on them is exact. Under a fitted null (labels a clean model may predict)
a service that answers selectively could bias the agreement, and a partial decision is
refused.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import json
import math
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.core.protocols import Protocol
from arena.util.errors import ArenaError
from arena.util.jsonio import write_json_atomic
from arena.util.paths import arena_home, make_folder

PREDICT_FORMAT = "arena-predict/1"


JOURNAL_FORMAT = "arena-journal/1"


# HTTP statuses worth another try: the service is busy or restarting, not refusing.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class EndpointLimits:
    """What a verification may spend on a service, and how long it waits for it."""

    timeout: float = 10.0  # seconds for one request, from connecting to its last byte
    retries: int = 3  # further tries of a request that failed in a way that may pass
    backoff: float = 0.5  # seconds before the first retry; doubled for each next one
    rate: float = 100.0  # images sent per second, at most
    max_queries: int | None = None  # images this run may send (triggers and decoys)
    max_response_bytes: int = 4 * 1024 * 1024
    max_batch: int = 64  # images per request, at most (less if the service says so)
    decoys: int = 20  # ordinary test images mixed in with the triggers
    accept_partial: bool = False  # decide on the triggers answered if the service stops

    def __post_init__(self) -> None:
        checks = [
            ("timeout", self.timeout, math.isfinite(self.timeout) and self.timeout > 0, "> 0"),
            ("retries", self.retries, 0 <= self.retries <= 20, "0-20"),
            ("backoff", self.backoff, math.isfinite(self.backoff) and self.backoff >= 0, ">= 0"),
            ("rate", self.rate, math.isfinite(self.rate) and self.rate > 0, "> 0"),
            ("max_batch", self.max_batch, 1 <= self.max_batch <= 10_000, "1-10,000"),
            ("decoys", self.decoys, 0 <= self.decoys <= 100_000, "0-100,000"),
            ("max_response_bytes", self.max_response_bytes, self.max_response_bytes >= 1, ">= 1"),
        ]
        if self.max_queries is not None:
            checks.append(("max_queries", self.max_queries, self.max_queries >= 1, ">= 1"))
        for name, value, fits, allowed in checks:
            if not fits:
                option = {"max_batch": "batch"}.get(name, name).replace("_", "-")
                raise ArenaError(f"--{option} must be {allowed}, got {value}")


def normalize_url(url: str) -> str:
    """The endpoint's base URL in one spelling: scheme and host in lower case, the
    default port dropped, no trailing slash. Credentials in it are refused (the URL is
    written to the ledger and the journal)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise ArenaError(f"--endpoint {url!r} is not a URL: {error}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ArenaError(f"--endpoint must be an http:// or https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise ArenaError(
            "--endpoint must not hold credentials (they would be written to the ledger); "
            "give them to an adapter module (--adapter)"
        )
    if parts.fragment:
        raise ArenaError(f"--endpoint {url!r} has a fragment (#...); drop it")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default) else f"{host}:{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}{query}"


def endpoint_fingerprint(url: str) -> str:
    """The ledger's model fingerprint of an endpoint: SHA-256 of its normalized URL.

    Not of its answers, which change with every model the service deploys; the ledger
    records where the suspect was seen, and the claim says what it answered there.
    """
    return hashlib.sha256(b"arena-endpoint/1\0" + normalize_url(url).encode()).hexdigest()


class ServiceError(ArenaError):
    """The service failed a request; ``transient`` if trying later may succeed."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class ServiceBrokeOff(ArenaError):
    """The service stopped answering before every query was answered; the answers so far
    are in the journal, and nothing was spent."""


class Transport:
    """Bounded HTTP requests to one base URL: the ``send`` adapters are given."""

    def __init__(self, url: str, limits: EndpointLimits) -> None:
        self.url = normalize_url(url)
        self.limits = limits
        self._parts = urllib.parse.urlsplit(self.url)

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> bytes:
        """The body of a 2xx response to ``method path``, after at most ``retries``
        further tries with exponential back-off; ``ServiceError`` otherwise."""
        attempt = 0
        while True:
            try:
                return self._once(method, path, body, content_type)
            except ServiceError as error:
                if not error.transient or attempt >= self.limits.retries:
                    if error.transient and self.limits.retries:
                        raise ServiceError(
                            f"{error} (after {attempt + 1} tries)", transient=True
                        ) from None
                    raise
                time.sleep(self.limits.backoff * 2**attempt)
                attempt += 1

    def _once(self, method: str, path: str, body: bytes | None, content_type: str) -> bytes:
        target = self._parts.path.rstrip("/") + "/" + path.lstrip("/")
        if self._parts.query:
            target += ("&" if "?" in target else "?") + self._parts.query
        name = f"{method} {self.url}{'/' + path.lstrip('/')}"
        timeout = self.limits.timeout
        kind = HTTPSConnection if self._parts.scheme == "https" else HTTPConnection
        connection = kind(self._parts.hostname, self._parts.port, timeout=timeout)
        # One deadline for the whole request: the socket timeout bounds each wait, the
        # watchdog the sum of them (a service that sends one byte a second).
        expired = threading.Event()
        opened: list[socket.socket] = []  # the response keeps it after the connection lets go

        def cut() -> None:
            expired.set()
            for sock in opened:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(timeout, cut)
        watchdog.daemon = True
        watchdog.start()
        response = None
        try:
            headers = {"Accept": "application/json", "Connection": "close"}
            if body is not None:
                headers["Content-Type"] = content_type
            connection.connect()
            opened.append(connection.sock)
            if expired.is_set():
                cut()
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            data = _read_bounded(response, self.limits.max_response_bytes, name)
            if expired.is_set():
                raise TimeoutError
        except TimeoutError:
            raise ServiceError(f"{name} timed out after {timeout:g} s", transient=True) from None
        except (OSError, HTTPException) as error:
            if expired.is_set():
                raise ServiceError(
                    f"{name} timed out after {timeout:g} s", transient=True
                ) from None
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise ServiceError(f"{name} failed: {reason}", transient=True) from None
        finally:
            watchdog.cancel()
            if response is not None:
                response.close()
            connection.close()
        if not 200 <= response.status < 300:
            detail = data[:200].decode("utf-8", "replace").strip().replace("\n", " ")
            raise ServiceError(
                f"{name} answered HTTP {response.status}" + (f": {detail}" if detail else ""),
                transient=response.status in RETRY_STATUSES,
            )
        return data


def _read_bounded(response: Any, limit: int, name: str) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise ServiceError(
            f"{name} answered {int(declared):,} bytes, more than the {limit:,} read at most",
            transient=False,
        )
    chunks, size = [], 0
    while True:
        chunk = response.read(min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ServiceError(
                f"{name} answered more than the {limit:,} bytes read at most", transient=False
            )


Send = Callable[..., bytes]


class JsonConvention:
    """The ``arena-predict/1`` convention (see the module's docstring)."""

    MAX_BATCH: int | None = None  # the service's own, read from /info

    def info(self, send: Send) -> dict[str, Any]:
        record = _json(send("GET", "info"), "GET /info")
        if record.get("format") != PREDICT_FORMAT:
            raise ServiceError(
                f"GET /info does not speak {PREDICT_FORMAT} (format {record.get('format')!r}); "
                "describe the API with an adapter module (--adapter)",
                transient=False,
            )
        return record

    def predict(self, send: Send, images: np.ndarray) -> Any:
        body = json.dumps(encode_images(images)).encode()
        record = _json(send("POST", "predict", body), "POST /predict")
        if "probabilities" in record:
            return record["probabilities"]
        if "labels" not in record:
            raise ServiceError("POST /predict answered neither labels nor probabilities", False)
        return record["labels"]


def encode_images(images: np.ndarray) -> dict[str, Any]:
    """The ``/predict`` request body for float32 images (N, C, H, W) in [0, 1]."""
    little = np.ascontiguousarray(images, dtype="<f4")
    return {
        "encoding": "float32-base64",
        "images": [base64.b64encode(image.tobytes()).decode("ascii") for image in little],
    }


def decode_images(record: Any, shape: tuple[int, int, int], max_batch: int) -> np.ndarray:
    """A ``/predict`` request body as float32 (N, C, H, W) in [0, 1]; ``ValueError``
    saying what is wrong with one that is not."""
    if not isinstance(record, dict) or not isinstance(record.get("images"), list):
        raise ValueError('the body must be a JSON object with a list "images"')
    images, encoding = record["images"], record.get("encoding")
    if not images:
        raise ValueError("no images")
    if len(images) > max_batch:
        raise ValueError(f"{len(images)} images; at most {max_batch} a request")
    size = int(np.prod(shape))
    decoded = []
    for index, image in enumerate(images):
        if encoding in ("float32-base64", "uint8-base64"):
            if not isinstance(image, str):
                raise ValueError(f"image {index} is not a base64 string")
            try:
                raw = base64.b64decode(image, validate=True)
            except ValueError:
                raise ValueError(f"image {index} is not valid base64") from None
            dtype = "<f4" if encoding == "float32-base64" else np.uint8
            if len(raw) != size * np.dtype(dtype).itemsize:
                raise ValueError(f"image {index} does not hold the {size} values of {list(shape)}")
            values = np.frombuffer(raw, dtype=dtype)
            values = values.astype(np.float32) / (255.0 if dtype is np.uint8 else 1.0)
        elif encoding is None:
            try:
                values = np.asarray(image, dtype=np.float32)
            except (TypeError, ValueError):
                raise ValueError(f"image {index} is not a nested list of numbers") from None
            if values.shape != shape:
                raise ValueError(f"image {index} has shape {list(values.shape)}, not {list(shape)}")
        else:
            raise ValueError(f"unknown encoding {encoding!r} (float32-base64, uint8-base64)")
        values = np.asarray(values, dtype=np.float32).reshape(shape)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError(f"image {index} has values outside [0, 1]")
        decoded.append(values)
    return np.stack(decoded)


def _json(body: bytes, name: str) -> dict[str, Any]:
    try:
        record = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ServiceError(f"{name} answered malformed JSON ({error})", transient=False) from None
    if not isinstance(record, dict):
        raise ServiceError(f"{name} answered JSON that is not an object", transient=False)
    return record


def load_adapter(spec: str | None) -> Any:
    """The adapter: arena's JSON convention, or a user's module (a ``.py`` file or an
    importable name) with ``predict(send, images)``."""
    if spec is None:
        return JsonConvention()
    path = Path(spec)
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise ArenaError(f"adapter {spec} does not exist")
            loaded = importlib.util.spec_from_file_location(f"arena_adapter_{path.stem}", path)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
    except ArenaError:
        raise
    except Exception as error:
        detail = f"{type(error).__name__}: {error}"
        raise ArenaError(f"adapter {spec} failed to load: {detail}") from None
    if not callable(getattr(module, "predict", None)):
        raise ArenaError(f"adapter {spec} defines no predict(send, images) function")
    return module


class PartialAnswers(ArenaError):
    """The service broke off; ``answered`` marks the queries of the forward pass it
    answered. Raised instead of ``ServiceBrokeOff`` when partial decisions are accepted."""

    def __init__(self, message: str, answered: np.ndarray) -> None:
        super().__init__(message)
        self.answered = answered

    def restrict(self, opened: Any, null_kind: str) -> Any:
        """``opened`` cut to the triggers answered, where that is sound (see the module)."""
        if null_kind != "exact":
            raise ArenaError(
                f"{self} A partial decision needs an exact null (labels drawn uniformly); "
                f"this scheme's is {null_kind}: run the same command again to resume"
            )
        if getattr(opened, "has_controls", lambda: False)() or not hasattr(opened, "select"):
            raise ArenaError(f"{self} This key's queries cannot be decided in part.")
        if len(self.answered) != len(opened):
            raise ArenaError(f"{self} The triggers were not sent in one pass; resume instead.")
        indices = np.flatnonzero(self.answered).tolist()
        if not indices:
            raise ArenaError(f"{self} No trigger was answered; nothing to decide on.")
        return opened.select(indices)


@dataclass(frozen=True)
class ServiceReport:
    """What the service was asked and what it answered, beside the claim."""

    endpoint: str
    triggers: int  # queries of the verification (trigger inputs, and controls if any)
    triggers_answered: int
    decoys: int
    decoys_correct: int
    decoy_null_p: float
    decoy_p_value: float | None  # None: no decoys were sent
    alpha: float
    sent_this_run: int  # images sent by this command (the rest came from the journal)
    from_journal: int
    partial: bool  # the verdict was decided on the triggers answered only

    @property
    def answers_are_evidence(self) -> bool:
        """False when the decoys were answered no better than chance."""
        return self.decoy_p_value is None or self.decoy_p_value <= self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "triggers": self.triggers,
            "triggers_answered": self.triggers_answered,
            "decoys": self.decoys,
            "decoys_correct": self.decoys_correct,
            "decoy_null_p": self.decoy_null_p,
            "decoy_p_value": self.decoy_p_value,
            "answers_are_evidence": self.answers_are_evidence,
            "sent_this_run": self.sent_this_run,
            "from_journal": self.from_journal,
            "partial": self.partial,
        }


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, dtype="<f4").tobytes()).hexdigest()


class RemoteModel(nn.Module):
    """The service at ``url`` as a model: forward(images) -> logits of its answers."""

    def __init__(
        self,
        url: str,
        protocol: Protocol,
        limits: EndpointLimits | None = None,
        adapter: Any = None,
        journal_dir: Path | None = None,
        decoy_source: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.limits = limits or EndpointLimits()
        self.transport = Transport(url, self.limits)
        self.url = self.transport.url
        self.protocol = protocol
        self.adapter = adapter if adapter is not None else JsonConvention()
        self.journal_dir = journal_dir or arena_home() / "journals"
        self._decoy_source = decoy_source or self._test_split
        self.num_classes = protocol.num_classes
        self.batch = self.limits.max_batch
        self._check_info()
        self._known: dict[str, np.ndarray] = {}  # answers of the last pass, by image
        self.service_report: ServiceReport | None = None
        self.journal: Path | None = None
        self.sent = 0  # images this object sent

    def ledger_fingerprint(self) -> str:
        return endpoint_fingerprint(self.url)

    def _check_info(self) -> None:
        """Ask the service what it takes (when the adapter can) and refuse one that does
        not fit the protocol: the key decides only on a model of its own input and classes."""
        if not callable(getattr(self.adapter, "info", None)):
            batch = getattr(self.adapter, "MAX_BATCH", None)
            if isinstance(batch, int) and batch >= 1:
                self.batch = min(self.batch, batch)
            return
        try:
            info = self.adapter.info(self.transport.send)
        except ServiceError as error:
            raise ArenaError(f"cannot ask the service what it takes: {error}") from None
        protocol = self.protocol
        wanted = [protocol.channels, protocol.image_size, protocol.image_size]
        shape, classes, batch = info.get("input_shape"), info.get("classes"), info.get("max_batch")
        if shape != wanted:
            raise ArenaError(
                f"the service at {self.url} takes images of shape {shape}, protocol "
                f"{protocol.name!r} has {wanted}; verify it under its own protocol (--protocol)"
            )
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
            raise ArenaError(f"the service at {self.url} gives no class count in /info")
        self.num_classes = classes
        if isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1:
            self.batch = min(self.batch, batch)

    def _test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        from arena.core.data import load_splits

        test = load_splits(self.protocol).test
        return test.images, test.labels

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        queries = images.detach().float().cpu().numpy()
        digests = [_digest(image) for image in queries]
        if digests and all(digest in self._known for digest in digests):
            answers = [self._known[digest] for digest in digests]  # a re-measure of this pass
        else:
            answers = self._session(queries, digests)
        return torch.as_tensor(np.stack(answers), dtype=torch.float32)

    # ------------------------------------------------------------------ one pass

    def _session(self, queries: np.ndarray, digests: list[str]) -> list[np.ndarray]:
        make_folder(self.journal_dir, "the answers of prediction APIs")
        identity = hashlib.sha256(
            (self.ledger_fingerprint() + "\0" + "".join(digests)).encode()
        ).hexdigest()
        self.journal = self.journal_dir / f"{identity[:40]}.json"
        journal = self._open_journal(identity, len(queries))
        decoy_images, decoy_labels = self._decoys(journal)
        everything = np.concatenate([queries, decoy_images]) if len(decoy_images) else queries
        order = journal["order"]
        answers: list[Any] = journal["answers"]
        missing = [position for position in order if answers[position] is None]
        from_journal = len(order) - len(missing)
        budget = self.limits.max_queries
        if budget is not None and len(missing) > budget:
            raise ArenaError(
                f"--max-queries {budget} cannot cover the {len(missing)} images still to send "
                f"({len(queries)} triggers and {len(decoy_images)} decoys, "
                f"{from_journal} answered before); nothing was sent"
            )
        sent_now = 0
        failure: ServiceError | None = None
        last = 0.0
        for start in range(0, len(missing), self.batch):
            positions = missing[start : start + self.batch]
            wait = last + len(positions) / self.limits.rate - time.monotonic()
            if last and wait > 0:
                time.sleep(wait)
            last = time.monotonic()
            try:
                result = self.adapter.predict(self.transport.send, everything[positions])
                batch_answers = self._check_answers(result, len(positions))
            except ServiceError as error:
                failure = error
                break
            for position, answer in zip(positions, batch_answers):
                answers[position] = answer.tolist()
            sent_now += len(positions)
            self.sent += len(positions)
            write_json_atomic(self.journal, journal, mode=0o600)
        have = [answer is not None for answer in answers]
        if failure is not None and not (self.limits.accept_partial and failure.transient):
            where = f" in {self.journal}" if any(have) else ""
            raise ServiceBrokeOff(
                f"{failure}; {sum(have)} of {len(order)} answers kept{where}; "
                "nothing was spent: run the same command again to resume"
            )
        logits = [self._logits(answer) for answer in answers]
        decoys = [
            (int(np.argmax(logits[len(queries) + index])), int(label))
            for index, label in enumerate(decoy_labels)
            if have[len(queries) + index]
        ]
        triggers_answered = int(sum(have[: len(queries)]))
        self.service_report = self._report(
            len(queries), triggers_answered, decoys, sent_now, from_journal, failure is not None
        )
        self._known = {digest: logit for digest, logit, got in zip(digests, logits, have) if got}
        if failure is not None:
            raise PartialAnswers(
                f"{failure}; {sum(have)} of {len(order)} answers kept in {self.journal}.",
                np.asarray(have[: len(queries)], dtype=bool),
            )
        return logits[: len(queries)]

    def _open_journal(self, identity: str, count: int) -> dict[str, Any]:
        """The journal of this set of queries at this endpoint: made with a fresh decoy
        draw and order, or read back to resume."""
        assert self.journal is not None
        if self.journal.exists():
            try:
                record = json.loads(self.journal.read_text())
                total = count + int(record["decoys"])
                if (
                    record.get("format") == JOURNAL_FORMAT
                    and record.get("identity") == identity
                    and sorted(record["order"]) == list(range(total))
                    and len(record["answers"]) == total
                ):
                    return record
            except (OSError, ValueError, KeyError, TypeError):
                pass
            raise ArenaError(
                f"the journal {self.journal} is not one this verification wrote; move it away "
                "to start over (its answers would be asked again)"
            )
        seed = secrets.randbits(63)
        decoys = self.limits.decoys
        order = np.random.default_rng(seed).permutation(count + decoys).tolist()
        return {
            "format": JOURNAL_FORMAT,
            "endpoint": self.url,
            "identity": identity,
            "seed": seed,
            "decoys": decoys,
            "order": order,
            "answers": [None] * (count + decoys),
        }

    def _decoys(self, journal: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        count = int(journal["decoys"])
        if count == 0:
            return np.zeros((0, *self._shape()), np.float32), np.zeros(0, np.int64)
        images, labels = self._decoy_source()
        if count > len(labels):
            raise ArenaError(
                f"{count} decoys asked for; the protocol's test split has {len(labels)}"
            )
        rng = np.random.default_rng([int(journal["seed"]), 1])
        chosen = rng.choice(len(labels), size=count, replace=False)
        return images[chosen].float().numpy(), labels[chosen].numpy()

    def _shape(self) -> tuple[int, int, int]:
        size = self.protocol.image_size
        return (self.protocol.channels, size, size)

    def _check_answers(self, result: Any, count: int) -> np.ndarray:
        """Labels (count,) or probabilities (count, K) from the adapter, checked."""
        try:
            answers = np.asarray(result, dtype=np.float64)
        except (TypeError, ValueError):
            raise ServiceError("the service's answers are not numbers", transient=False) from None
        classes = self.num_classes
        if answers.ndim == 1 and len(answers) == count:
            if not np.isfinite(answers).all() or (answers != np.round(answers)).any():
                raise ServiceError("the service answered labels that are not integers", False)
            if answers.min() < 0 or answers.max() >= classes:
                raise ServiceError(f"the service answered labels outside 0-{classes - 1}", False)
            return answers.astype(np.int64)
        if answers.shape == (count, classes) and np.isfinite(answers).all():
            return answers.astype(np.float32)
        raise ServiceError(
            f"the service answered {list(answers.shape)} for {count} images; expected "
            f"{count} labels or {count} x {classes} probabilities",
            transient=False,
        )

    def _logits(self, answer: Any) -> np.ndarray:
        if answer is None:  # never answered: no class agrees with it
            return np.full(self.num_classes, -np.inf, np.float32)
        if isinstance(answer, list):
            return np.asarray(answer, np.float32)
        logits = np.zeros(self.num_classes, np.float32)
        logits[int(answer)] = 1.0
        return logits

    def _report(
        self,
        triggers: int,
        answered: int,
        decoys: list[tuple[int, int]],
        sent_now: int,
        from_journal: int,
        partial: bool,
    ) -> ServiceReport:
        from scipy.stats import binomtest

        correct = sum(answer == label for answer, label in decoys)
        null_p = 1.0 / self.num_classes
        p_value = (
            float(binomtest(correct, len(decoys), null_p, alternative="greater").pvalue)
            if decoys
            else None
        )
        return ServiceReport(
            endpoint=self.url,
            triggers=triggers,
            triggers_answered=answered,
            decoys=len(decoys),
            decoys_correct=correct,
            decoy_null_p=null_p,
            decoy_p_value=p_value,
            alpha=self.protocol.alpha,
            sent_this_run=sent_now,
            from_journal=from_journal,
            partial=partial,
        )

    def forget(self) -> None:
        """Remove the journal of the last pass, once its verdict is recorded."""
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)
