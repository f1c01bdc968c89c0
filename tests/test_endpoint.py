"""Verifying a suspect where it lives: behind a prediction API (``arena serve`` and
``arena verify --endpoint``), or as an ONNX file.

The reference server runs as a real ``arena serve`` process on a free loopback port; the
bad services (silent, slow, malformed, huge) are small ``http.server`` stubs here. Every
bad case must end in one line on stderr and exit 2 within the declared timeouts, with no
subset spent; a run the service breaks off resumes without sending an answered image
again, and its subset is recorded spent once, with the verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from arena.core.context import Context
from arena.core.protocols import get_protocol
from arena.ownership import modelfile
from arena.ownership import vendor as ownership
from arena.ownership.ledger import Ledger
from arena.ownership.remote import (
    PREDICT_FORMAT,
    EndpointLimits,
    RemoteModel,
    decode_images,
    encode_images,
    endpoint_fingerprint,
    normalize_url,
)
from arena.ownership.serve import PredictionServer
from arena.storage.clean import train_clean
from arena.util.errors import ArenaError
from tests.cli_runner import run_arena

SMOKE = get_protocol("smoke")
FAST = ["--timeout", "1", "--retries", "1"]  # a bad service is given up on in seconds


@pytest.fixture(scope="module")
def vendor(tmp_path_factory, train_seed):
    """A key of 2 x 20 triggers, registered, the model marked with it, and a clean model
    of the same protocol (trained once each)."""
    root = tmp_path_factory.mktemp("endpoint")
    keys = root / "keys"
    params = {"trigger_size": 40, "subsets": 2}
    ownership.keygen("backdoor-wm", SMOKE, keys, params, seed=train_seed + 3)
    ledger = Ledger(root / "owner.sqlite")
    ownership.register_key(keys / "vk.json", ledger)
    marked = ownership.mark(
        keys / "mk.json",
        keys / "vk.json",
        SMOKE,
        root / "acme.safetensors",
        ledger,
        seed=train_seed,
        params={"triggers_per_batch": 10},
    )
    ctx = Context(protocol=SMOKE, seed=train_seed + 100)
    clean = ctx.owner_model()
    train_clean(clean, ctx)
    modelfile.save_model(clean, root / "clean.safetensors", SMOKE)
    return {"root": root, "keys": keys, "marked": marked, "clean": root / "clean.safetensors"}


def _serve(*args: str) -> tuple[subprocess.Popen, str]:
    """``arena serve ARGS --port 0`` as a process; its URL from its first line."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from arena.cli import console; console()", "serve", *args]
        + ["--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise AssertionError(f"arena serve did not start: {line}{process.stderr.read()}")
    return process, line.split(" on ")[1].split()[0]


@pytest.fixture(scope="module")
def servers(vendor):
    """The marked model, the clean model, and the marked model behind evade-detector,
    each served by its own ``arena serve`` process."""
    started = {
        "marked": _serve(str(vendor["marked"])),
        "clean": _serve(str(vendor["clean"])),
        "evasive": _serve(str(vendor["marked"]), "--filter", "evade-detector"),
    }
    yield {name: url for name, (_, url) in started.items()}
    for process, _ in started.values():
        process.terminate()
        process.wait(timeout=30)


def _verify_endpoint(vendor, url, ledger, *extra, home):
    keys = vendor["keys"]
    return run_arena(
        "verify",
        "--endpoint",
        url,
        "--vk",
        str(keys / "vk.json"),
        "--mk",
        str(keys / "mk.json"),
        "--protocol",
        "smoke",
        "--ledger",
        str(ledger),
        "--json",
        *extra,
        home=home,
    )


def _spent(ledger_path: Path) -> list[str]:
    return [entry.digest for entry in Ledger(ledger_path).entries() if entry.kind == "spent"]


def test_the_marked_model_verifies_through_its_api(vendor, servers, tmp_path):
    result = _verify_endpoint(vendor, servers["marked"], tmp_path / "l.sqlite", home=tmp_path)
    assert result.returncode == 0, result.stderr
    claim = json.loads(result.stdout)
    evidence, service = claim["evidence"], claim["service"]
    print(f"marked via endpoint: {evidence['successes']} of {evidence['trials']}")
    assert claim["verified"] and evidence["trials"] == 20
    assert evidence["successes"] >= evidence["required_successes"]
    assert service["decoys"] == 20 and service["answers_are_evidence"]
    assert service["decoys_correct"] >= 10  # chance is 2 of 20; a smoke model answers 70-90%
    assert service["sent_this_run"] == 40 and service["from_journal"] == 0
    assert claim["model_fingerprint"] == endpoint_fingerprint(servers["marked"])
    assert len(_spent(tmp_path / "l.sqlite")) == 1
    assert not list((tmp_path / "journals").iterdir())  # the verdict is in; nothing to resume


def test_the_clean_model_does_not_verify(vendor, servers, tmp_path):
    result = _verify_endpoint(vendor, servers["clean"], tmp_path / "l.sqlite", home=tmp_path)
    assert result.returncode == 1, result.stderr
    claim = json.loads(result.stdout)
    print(f"clean via endpoint: {claim['evidence']['successes']} of 20")
    assert not claim["verified"] and claim["service"]["answers_are_evidence"]


def test_behind_evade_detector(vendor, servers, tmp_path):
    """The detector flags the abstract triggers and answers them with the runner-up
    class, while it answers the decoys (test images) as the model does: the mark is not
    found, and the decoys show the service is not answering garbage."""
    result = _verify_endpoint(vendor, servers["evasive"], tmp_path / "l.sqlite", home=tmp_path)
    claim = json.loads(result.stdout)
    evidence, service = claim["evidence"], claim["service"]
    print(
        f"behind evade-detector: {evidence['successes']} of {evidence['trials']}, decoys "
        f"{service['decoys_correct']} of {service['decoys']}"
    )
    assert result.returncode == 1 and not claim["verified"]
    assert evidence["successes"] < evidence["required_successes"]
    assert service["answers_are_evidence"] and service["decoys_correct"] >= 10


def test_public_verification_through_the_endpoint(vendor, servers, tmp_path, smoke_calibration):
    keys = vendor["keys"]
    ledger = tmp_path / "results.sqlite"
    result = run_arena(
        "verify",
        "--public",
        "--endpoint",
        servers["marked"],
        "--vk",
        str(keys / "vk.json"),
        "--mk",
        str(keys / "mk.json"),
        "--protocol",
        "smoke",
        "--ledger",
        str(ledger),
        "--db",
        str(smoke_calibration["db"]),
        "--cache-dir",
        str(smoke_calibration["cache"].root),
        "--json",
        home=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    claim = json.loads(result.stdout)
    assert claim["label_check"]["passed"] and claim["evidence"]["trials"] == 10
    assert claim["service"]["decoys"] == 20 and claim["verified"]
    assert len(_spent(ledger)) == 1


class _StoppingServer(PredictionServer):
    """The reference server, which goes away after answering ``stop_after`` requests."""

    stop_after = 2

    requests = 0
    stopper: threading.Thread | None = None

    def predict(self, images):
        if self.requests >= self.stop_after:
            if self.stopper is None:
                self.stopper = threading.Thread(target=self._stop, daemon=True)
                self.stopper.start()
            raise ConnectionAbortedError  # this request is dropped unanswered
        self.requests += 1
        return super().predict(images)

    def _stop(self):
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address):
        pass  # the dropped request: on purpose


def _start(server: PredictionServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def test_a_service_that_stops_midway_is_resumed_without_spending_twice(vendor, tmp_path):
    model = modelfile.load_model(vendor["marked"], SMOKE)
    first = _StoppingServer(("127.0.0.1", 0), model, SMOKE)
    port = first.server_address[1]
    url = f"http://127.0.0.1:{port}"
    _start(first)
    ledger = tmp_path / "l.sqlite"
    args = ("--batch", "8", "--timeout", "2", "--retries", "1")
    broken = _verify_endpoint(vendor, url, ledger, *args, home=tmp_path)
    assert broken.returncode == 2, broken.stdout
    line = broken.stderr.strip()
    assert len(line.splitlines()) == 1 and "16 of 40 answers kept" in line, line
    assert "run the same command again to resume" in line
    assert _spent(ledger) == []  # nothing spent without a verdict
    assert first.answered == 16
    first.stopper.join(timeout=10)  # the address is free again
    # The service comes back on the same address; the same command resumes.
    second = PredictionServer(("127.0.0.1", port), model, SMOKE)
    _start(second)
    try:
        resumed = _verify_endpoint(vendor, url, ledger, *args, home=tmp_path)
    finally:
        second.shutdown()
        second.server_close()
    assert resumed.returncode == 0, resumed.stderr
    claim = json.loads(resumed.stdout)
    print(f"resumed: {claim['evidence']['successes']} of 20, service {claim['service']}")
    assert second.answered == 24  # only the images not answered before
    assert claim["service"]["sent_this_run"] == 24 and claim["service"]["from_journal"] == 16
    assert claim["verified"] and claim["triggers_opened"].startswith("subset 0 of 2")
    key = _key_fingerprint(vendor)
    assert _spent(ledger) == [f"{key}:0"]  # spent once, with the verdict


def test_a_partial_decision_when_declared(vendor, tmp_path):
    """--accept-partial: the triggers answered before the service went away decide (an
    exact null: whichever the service answered, each matches with probability 1/|L|)."""
    model = modelfile.load_model(vendor["marked"], SMOKE)
    server = _StoppingServer(("127.0.0.1", 0), model, SMOKE)
    server.stop_after = 3
    _start(server)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    ledger = tmp_path / "l.sqlite"
    args = ("--batch", "8", "--timeout", "2", "--retries", "0", "--accept-partial")
    result = _verify_endpoint(vendor, url, ledger, *args, home=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    claim = json.loads(result.stdout)
    service = claim["service"]
    answered = service["triggers_answered"]
    assert service["partial"] and 0 < answered < 20
    assert claim["evidence"]["trials"] == answered
    assert len(_spent(ledger)) == 1


def _key_fingerprint(vendor) -> str:
    from arena.core.keys import TriggerKey

    return TriggerKey.load(vendor["keys"]).fingerprint


def test_the_budget_is_refused_before_anything_is_sent(vendor, tmp_path):
    model = modelfile.load_model(vendor["marked"], SMOKE)
    server = PredictionServer(("127.0.0.1", 0), model, SMOKE)
    _start(server)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = _verify_endpoint(
            vendor, url, tmp_path / "l.sqlite", "--max-queries", "39", home=tmp_path
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2
    assert "--max-queries 39 cannot cover the 40 images" in result.stderr
    assert server.answered == 0 and _spent(tmp_path / "l.sqlite") == []


class _Stub(BaseHTTPRequestHandler):
    """A bad service: /info is honest, /predict misbehaves as ``mode`` says."""

    mode = "malformed"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.mode == "silent":
            time.sleep(30)
            return
        info = {"format": PREDICT_FORMAT, "input_shape": [1, 16, 16], "classes": 10}
        self._send(json.dumps({**info, "max_batch": 64}).encode())

    def do_POST(self):
        self._body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.mode == "slow":
            time.sleep(30)
        elif self.mode == "drip":  # headers at once, then a byte every 0.3 s
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.3)
        elif self.mode == "probabilities":  # class 4 most likely for every image
            count = len(json.loads(self._body)["images"])
            row = [0.05] * 10
            row[4] = 0.55
            self._send(json.dumps({"probabilities": [row] * count}).encode())
        elif self.mode == "malformed":
            self._send(b'{"labels": [1, 2,')
        elif self.mode == "huge":
            self._send(b" " * (8 * 1024 * 1024))
        elif self.mode == "huge-undeclared":
            self.send_response(200)
            self.end_headers()  # no length: the body runs until the connection closes
            for _ in range(8):
                self.wfile.write(b" " * (1024 * 1024))

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the client hung up on a bad answer: as it should


def _stub(mode: str):
    handler = type(f"Stub_{mode}", (_Stub,), {"mode": mode})
    server = _QuietServer(("127.0.0.1", 0), handler)
    _start(server)
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# (mode, what the one line says, the most seconds it may take: 2 tries of 1 s, a back-off
# of 0.5 s, and the command's own start)
BAD_SERVICES = [
    ("silent", "GET http://127.0.0.1", "timed out after 1 s", 2 * 1 + 0.5),
    ("slow", "0 of 40 answers kept", "timed out after 1 s", 2 * 1 + 0.5),
    ("drip", "0 of 40 answers kept", "timed out after 1 s", 2 * 1 + 0.5),
    ("malformed", "0 of 40 answers kept", "malformed JSON", 1),
    ("huge", "0 of 40 answers kept", "more than the 4,194,304", 1),
    ("huge-undeclared", "0 of 40 answers kept", "more than the 4,194,304", 1),
]


@pytest.mark.parametrize(("mode", "kept", "reason", "seconds"), BAD_SERVICES)
def test_a_bad_service_is_one_line_and_exit_2(vendor, tmp_path, mode, kept, reason, seconds):
    server, url = _stub(mode)
    ledger = tmp_path / "l.sqlite"
    started = time.monotonic()
    try:
        result = _verify_endpoint(vendor, url, ledger, *FAST, home=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    elapsed = time.monotonic() - started
    print(f"{mode}: exit {result.returncode} after {elapsed:.2f} s: {result.stderr.strip()}")
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert kept in result.stderr and reason in result.stderr
    assert elapsed < seconds + 3.0  # 3 s for loading the key, the split and the ledger
    assert _spent(ledger) == [] if ledger.exists() else True


def test_a_service_that_garbles_ordinary_queries_is_not_evidence(vendor, tmp_path):
    """A service that answers the triggers as the marked model does but every test image
    wrong: the decoys, answered below chance, say its answers are not evidence, and the
    claim is not verified although the triggers agree."""
    from arena.core.data import load_splits

    test_images = load_splits(SMOKE).test.images
    ordinary = {image.numpy().tobytes() for image in test_images}

    class Garbling(PredictionServer):
        def predict(self, images):
            labels = super().predict(images)
            return [
                (label + 1) % 10 if image.numpy().tobytes() in ordinary else label
                for image, label in zip(images, labels)
            ]

    model = modelfile.load_model(vendor["marked"], SMOKE)
    server = Garbling(("127.0.0.1", 0), model, SMOKE)
    _start(server)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = _verify_endpoint(vendor, url, tmp_path / "l.sqlite", home=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    claim = json.loads(result.stdout)
    service = claim["service"]
    assert claim["evidence"]["successes"] >= claim["evidence"]["required_successes"]
    assert service["decoys_correct"] == 0 and not service["answers_are_evidence"]
    assert result.returncode == 1 and not claim["verified"]


def test_endpoint_options_belong_to_endpoint(vendor, tmp_path):
    keys = vendor["keys"]
    result = run_arena(
        "verify",
        "--model",
        str(vendor["marked"]),
        "--vk",
        str(keys / "vk.json"),
        "--mk",
        str(keys / "mk.json"),
        "--decoys",
        "5",
        home=tmp_path,
    )
    assert result.returncode == 2 and "--decoys is an option of --endpoint" in result.stderr
    both = run_arena(
        "verify",
        "--model",
        str(vendor["marked"]),
        "--endpoint",
        "http://127.0.0.1:9",
        "--vk",
        str(keys / "vk.json"),
        home=tmp_path,
    )
    assert both.returncode == 2 and "one of them" in both.stderr


def test_urls_are_normalized_and_credentials_refused():
    assert normalize_url("HTTP://Example.COM:80/api/") == "http://example.com/api"
    assert normalize_url("https://example.com:8443") == "https://example.com:8443"
    assert endpoint_fingerprint("http://a.b/x/") == endpoint_fingerprint("http://A.B:80/x")
    for bad in ("ftp://a.b", "http://user:pw@a.b", "a.b:80", "http://a.b#x"):
        with pytest.raises(ArenaError):
            normalize_url(bad)
    with pytest.raises(ArenaError, match="--timeout must be > 0"):
        EndpointLimits(timeout=0)


def test_the_convention_round_trips_images():
    images = np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)
    assert np.array_equal(decode_images(encode_images(images), (1, 16, 16), 8), images)
    nested = {"images": images.tolist()}
    assert np.allclose(decode_images(nested, (1, 16, 16), 8), images)
    for bad, message in [
        ({"images": []}, "no images"),
        ({"images": images.tolist() * 3}, "at most 8"),
        ({"images": [[[[2.0] * 16] * 16]]}, "outside"),
        ({"encoding": "float32-base64", "images": ["AAAA"]}, "does not hold"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode_images(bad, (1, 16, 16), 8)


def test_an_adapter_module_describes_another_api(vendor, tmp_path):
    """An API of another shape (here: /v2/classify, answering {"predictions": [{"class":
    k}]}) through a user's adapter file, bounded by the arena's own transport."""

    class Other(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            record = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            images = torch.tensor(record["pixels"], dtype=torch.float32)
            with torch.no_grad():
                labels = model(images).argmax(dim=1).tolist()
            body = json.dumps({"predictions": [{"class": k} for k in labels]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    model = modelfile.load_model(vendor["marked"], SMOKE).eval()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    _start(server)
    adapter = tmp_path / "other_api.py"
    adapter.write_text(
        "import json\n"
        "MAX_BATCH = 16\n"
        "def predict(send, images):\n"
        "    body = json.dumps({'pixels': images.tolist()}).encode()\n"
        "    answer = json.loads(send('POST', 'v2/classify', body))\n"
        "    return [p['class'] for p in answer['predictions']]\n"
    )
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = _verify_endpoint(
            vendor, url, tmp_path / "l.sqlite", "--adapter", str(adapter), home=tmp_path
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["service"]["decoys_correct"] >= 10


def test_onnx_verifies_with_the_same_k_of_n_as_safetensors(vendor, tmp_path):
    onnx_path = modelfile.export_onnx(vendor["marked"], tmp_path / "acme.onnx", SMOKE)
    keys = vendor["keys"]
    claims = {}
    for name, path in (("safetensors", vendor["marked"]), ("onnx", onnx_path)):
        claims[name] = ownership.verify(
            path, keys / "mk.json", keys / "vk.json", SMOKE, Ledger(tmp_path / f"{name}.sqlite")
        )
    evidence = {name: (c.evidence.successes, c.evidence.trials) for name, c in claims.items()}
    print(f"k of n: {evidence}")
    assert evidence["onnx"] == evidence["safetensors"] and claims["onnx"].verified
    loaded = modelfile.load_model(onnx_path, SMOKE)
    images = torch.rand(7, 1, 16, 16)
    reference = modelfile.load_model(vendor["marked"], SMOKE).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images), reference(images), atol=1e-4)
    # Its ledger fingerprint is the file's, not the (empty) state dict's.
    assert claims["onnx"].model_fingerprint != claims["safetensors"].model_fingerprint
    with pytest.raises(ArenaError, match="refusing to overwrite"):
        modelfile.export_onnx(vendor["marked"], onnx_path, SMOKE)


def test_an_onnx_file_is_served_and_verified_through_its_api(vendor, tmp_path):
    onnx_path = modelfile.export_onnx(vendor["marked"], tmp_path / "acme.onnx", SMOKE)
    server = PredictionServer(("127.0.0.1", 0), modelfile.load_model(onnx_path, SMOKE), SMOKE)
    _start(server)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = _verify_endpoint(vendor, url, tmp_path / "l.sqlite", home=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr


def test_a_file_that_is_no_onnx_model_is_refused(tmp_path):
    bogus = tmp_path / "x.onnx"
    bogus.write_bytes(b"not a protobuf")
    with pytest.raises(ArenaError, match="not a model onnxruntime can run"):
        modelfile.load_model(bogus, SMOKE)


def test_remote_model_is_a_module_measure_can_query(vendor):
    """The wrapper alone: logits of the service's labels, classes from /info."""
    model = modelfile.load_model(vendor["marked"], SMOKE).eval()
    server = PredictionServer(("127.0.0.1", 0), model, SMOKE, max_batch=4)
    _start(server)
    try:
        remote = RemoteModel(
            f"http://127.0.0.1:{server.server_address[1]}", SMOKE, EndpointLimits(decoys=0)
        )
        assert remote.num_classes == 10 and remote.batch == 4
        images = torch.rand(9, 1, 16, 16)
        logits = remote(images)
        with torch.no_grad():
            assert logits.argmax(dim=1).tolist() == model(images).argmax(dim=1).tolist()
        remote.forget()
    finally:
        server.shutdown()
        server.server_close()


def test_probabilities_are_answers_too(tmp_path):
    server, url = _stub("probabilities")
    try:
        remote = RemoteModel(url, SMOKE, EndpointLimits(decoys=0), journal_dir=tmp_path)
        logits = remote(torch.rand(5, 1, 16, 16))
    finally:
        server.shutdown()
        server.server_close()
    assert logits.shape == (5, 10) and logits.argmax(dim=1).tolist() == [4] * 5
    assert remote.service_report.triggers_answered == 5 and remote.service_report.decoys == 0
