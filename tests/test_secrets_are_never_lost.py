"""Issue 14, "data lost": no careless command costs a secret, a published key, a spent
subset without a verdict, a model or a result. Each test drives the command as a user
would (a subprocess), or the library function behind it, and checks what is on disk."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arena.core.context import Context
from arena.core.keys import TriggerKey
from arena.core.protocols import get_protocol
from arena.ownership import modelfile
from arena.ownership import vendor as ownership
from arena.ownership.ledger import Ledger
from arena.util.errors import ArenaError
from tests.cli_runner import run_arena

SMOKE = get_protocol("smoke")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spent(ledger_path: Path) -> list[str]:
    if not ledger_path.exists():
        return []
    return [e.digest.rsplit(":", 1)[1] for e in Ledger(ledger_path).entries() if e.kind == "spent"]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    return result.stderr


def at_once(count: int, args: list[str], home: Path) -> list[tuple[int, str, str]]:
    """``arena ARGS`` in ``count`` processes started together: (status, stdout, stderr)."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", "from arena.cli import main; main()", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "ARENA_HOME": str(home), "COLUMNS": "250"},
        )
        for _ in range(count)
    ]
    return [(run.wait(timeout=600), *run.communicate()) for run in runs]


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    """A 2-subset key of the smoke protocol and a model file of its architecture (not
    marked: these tests are about what is spent and kept, not about the verdict)."""
    root = tmp_path_factory.mktemp("vendor")
    ownership.keygen("backdoor-wm", SMOKE, root / "keys", {"subsets": 2}, seed=5)
    model = root / "suspect.safetensors"
    modelfile.save_model(Context(protocol=SMOKE, seed=3).owner_model(), model, SMOKE)
    return root


@pytest.fixture
def home(tmp_path, vendor):
    """A fresh ARENA_HOME with a copy of the vendor's files."""
    shutil.copytree(vendor, tmp_path / "v")
    return tmp_path


# --- 1. verify --public spends a subset only once it can decide ---------------------------


def test_failed_public_verifications_spend_no_subset(home):
    keys, ledger = home / "v" / "keys", home / "results.sqlite"
    # A mistyped model path, then a protocol with no calibration (no reference models for
    # the label check): both refused, neither spends one of the two subsets.
    for model in (home / "v" / "suspekt.safetensors", home / "v" / "suspect.safetensors"):
        result = run_arena(
            "verify", "--public", "--vk", str(keys / "vk.json"), "--model", str(model),
            home=home,
        )  # fmt: skip
        one_line_error(result)
        assert spent(ledger) == []
    # Both subsets are still there to reveal.
    for index in ("0", "1"):
        result = run_arena(
            "prove", "--mk", str(keys / "mk.json"), "--out", str(home / f"proof{index}.json"),
            home=home,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert spent(ledger) == ["0", "1"]


# --- 2. prove writes the proof before it spends the subset --------------------------------


def test_prove_into_a_missing_folder_spends_nothing(home):
    keys, ledger = home / "v" / "keys", home / "results.sqlite"
    result = run_arena(
        "prove", "--mk", str(keys / "mk.json"), "--out", str(home / "nodir" / "proof.json"),
        home=home,
    )  # fmt: skip
    assert "does not exist" in one_line_error(result)
    assert spent(ledger) == []
    # An existing file is not overwritten (it may be the proof of a subset spent before).
    existing = home / "proof.json"
    existing.write_text("{}")
    result = run_arena("prove", "--mk", str(keys / "mk.json"), "--out", str(existing), home=home)
    assert "exists" in one_line_error(result)
    assert existing.read_text() == "{}" and spent(ledger) == []


def test_a_proof_is_on_disk_before_its_subset_is_spent(home, monkeypatch):
    keys, ledger = home / "v" / "keys", Ledger(home / "results.sqlite")
    out = home / "proof.json"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Ledger, "append", fail)
    with pytest.raises(OSError):
        ownership.prove(keys / "mk.json", keys / "vk.json", ledger, out=out)
    monkeypatch.undo()
    # Neither spent nor published: the staged proof was removed with the failed append.
    assert not out.exists() and spent(ledger.path) == []
    assert not [p for p in home.iterdir() if p.name.startswith(".proof.json")]
    proof = ownership.prove(keys / "mk.json", keys / "vk.json", ledger, out=out)
    assert out.exists() and proof["subset"] == 0 and spent(ledger.path) == ["0"]


# --- 3, 4. keygen never overwrites a key, and two at once never both "succeed" ------------


def test_keygen_into_a_folder_with_a_published_vk_is_refused(home):
    folder = home / "published"
    folder.mkdir()
    shutil.copy(home / "v" / "keys" / "vk.json", folder / "vk.json")
    before = digest(folder / "vk.json")
    result = run_arena(
        "keygen", "--out", str(folder), "--protocol", "smoke", "--seed", "1", home=home
    )
    assert "vk.json exists" in one_line_error(result)
    assert digest(folder / "vk.json") == before
    assert sorted(p.name for p in folder.iterdir()) == ["vk.json"]
    # --out naming a file is refused too, and the file is left as it was.
    result = run_arena("keygen", "--out", str(folder / "vk.json"), home=home, process=True)
    assert "is a file" in one_line_error(result)
    assert digest(folder / "vk.json") == before


def test_two_keygens_into_one_new_folder_leave_one_key_and_one_refusal(tmp_path):
    for round_ in range(4):
        folder = tmp_path / f"round{round_}"
        args = ["keygen", "--out", str(folder), "--protocol", "smoke"]
        outcomes = at_once(2, args, tmp_path / "home")
        codes = sorted(code for code, _, _ in outcomes)
        assert codes == [0, 2], outcomes
        winner = next(out for code, out, _ in outcomes if code == 0)
        fingerprint = winner.split("key fingerprint")[1].strip()
        assert TriggerKey.load(folder).fingerprint == fingerprint  # the key it reported
        assert sorted(p.name for p in folder.iterdir()) == ["mk.json", "vk.json"]
        assert (folder / "mk.json").stat().st_mode & 0o777 == 0o600


# --- 5, 6. what would fail after training is refused before it ----------------------------


def _trained_nothing(home: Path) -> bool:
    cache = home / "cache"
    return not cache.exists() or not list(cache.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "args, message",
    [
        (("--seed", str(2**63)), "--seed must lie in"),
        (("--seed", "-1"), "--seed must lie in"),
        (("--attack", "ftal", "-A", "momentum=-0.5"), "momentum must lie in"),
        (("--attack", "ftal", "-A", "weight_decay=-1"), "weight_decay must be"),
        (("--attack", "ftal", "-A", "lr=0"), "lr must be"),
    ],
)
def test_run_refuses_before_training_what_would_fail_after_it(tmp_path, args, message):
    result = run_arena("run", "--protocol", "smoke", *args, home=tmp_path)
    assert message in one_line_error(result)
    assert _trained_nothing(tmp_path)


def _make_read_only(path: Path) -> None:
    """Read-only for everyone: a mode for a user, the immutable flag for root."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: no way to make a file read-only here")
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"running as root and chattr +i is not permitted: {result.stderr.strip()}")


def _writable_again(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o644)


def test_a_read_only_results_database_is_refused_before_training(tmp_path):
    db = tmp_path / "ro.sqlite"
    from arena.storage.results import ResultStore

    ResultStore(db)  # the tables exist, as in a database used before
    before = digest(db)
    _make_read_only(db)
    try:
        result = run_arena("run", "--protocol", "smoke", "--db", str(db), home=tmp_path)
        assert "not writable" in one_line_error(result)
        assert _trained_nothing(tmp_path)
        assert digest(db) == before
    finally:
        _writable_again(db)


def test_mark_never_overwrites_a_model_and_checks_before_training(home):
    keys = home / "v" / "keys"
    out = home / "v" / "suspect.safetensors"  # an existing model file
    before = digest(out), digest(modelfile.card_path(out))
    result = run_arena(
        "mark", "--key", str(keys / "mk.json"), "--out", str(out), "--data", "smoke", home=home
    )
    assert "exists" in one_line_error(result)
    assert (digest(out), digest(modelfile.card_path(out))) == before
    for bad, message in (
        (("--out", str(home / "m.pt")), ".safetensors"),
        (("--out", str(home / "m.safetensors"), "--seed", str(2**64)), "--seed must lie in"),
    ):
        result = run_arena("mark", "--key", str(keys / "mk.json"), "--data", "smoke", *bad,
                           home=home, process=True)  # fmt: skip
        assert message in one_line_error(result)
    assert not (home / "m.safetensors").exists()


# --- 16. two verifications at once never reveal one subset --------------------------------


def test_verifications_at_once_reveal_different_subsets(home):
    keys, model = home / "v" / "keys", home / "v" / "suspect.safetensors"
    key_params = {"subsets": 4, "trigger_size": 40}
    shutil.rmtree(keys)
    ownership.keygen("backdoor-wm", SMOKE, keys, key_params, seed=5)
    args = ["verify", "--mk", str(keys / "mk.json"), "--vk", str(keys / "vk.json"),
            "--model", str(model), "--json"]  # fmt: skip
    outcomes = at_once(4, args, home)
    assert all(code in (0, 1) for code, _, _ in outcomes), outcomes  # verdicts, not errors
    opened = sorted(out.split('"triggers_opened": "')[1].split(" of")[0] for _, out, _ in outcomes)
    assert opened == [f"subset {i}" for i in range(4)]
    assert sorted(spent(home / "results.sqlite")) == ["0", "1", "2", "3"]


def test_identical_runs_at_once_store_one_match_with_one_key(tmp_path):
    outcomes = at_once(
        4, ["run", "--protocol", "smoke", "--attack", "none", "--seed", "3"], tmp_path
    )
    assert [code for code, _, _ in outcomes] == [0] * 4, outcomes
    from arena.storage.results import ResultStore

    assert len(ResultStore(tmp_path / "results.sqlite").records("smoke")) == 1
    keys = [p.parent for p in (tmp_path / "cache" / "key").rglob("vk.json")]
    marked = [p.parent for p in (tmp_path / "cache" / "marked").rglob("meta.json")]
    assert len(keys) == 1 and len(marked) == 1  # nothing orphaned


# --- what a review of the above found ------------------------------------------------------


def test_a_public_verification_that_fails_after_choosing_its_subset_spends_nothing(
    home, monkeypatch
):
    """The subset a proof made from mk reveals is recorded as spent with the verdict, not
    before: here the label check fails after the subset was chosen."""
    from arena.ownership import public as public

    keys, ledger = home / "v" / "keys", Ledger(home / "results.sqlite")
    monkeypatch.setattr(ownership, "reference_models", lambda *args: [])

    def broken(*args, **kwargs):
        raise RuntimeError("the label check broke")

    monkeypatch.setattr(ownership, "label_check", broken)
    monkeypatch.setattr(ownership, "sound_null", lambda *args: None)
    with pytest.raises(RuntimeError, match="label check broke"):
        ownership.verify_public(
            home / "v" / "suspect.safetensors",
            keys / "vk.json",
            None,
            SMOKE,
            ledger,
            mk_path=keys / "mk.json",
        )
    assert public is not None and spent(ledger.path) == []


def test_ledger_head_never_overwrites_a_receipt(home):
    out = home / "head.json"
    assert run_arena("ledger", "head", "--out", str(out), home=home).returncode in (0, 2)
    out.write_text('{"kept": true}')
    result = run_arena("ledger", "head", "--out", str(out), home=home)
    assert "exists" in one_line_error(result)
    assert out.read_text() == '{"kept": true}'


def test_paths_that_are_not_utf8_are_recorded_not_crashed_on(home):
    """A path's bytes reach the ledger's labels escaped; the key and model are kept."""
    folder = home / "k\udcffeys"
    shutil.copytree(home / "v" / "keys", folder)
    result = subprocess.run(
        [sys.executable, "-c", "from arena.cli import main; main()", "register",
         str(folder / "vk.json")],
        capture_output=True, text=True, errors="backslashreplace",
        env={**os.environ, "ARENA_HOME": str(home), "COLUMNS": "250"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    labels = [e.label for e in Ledger(home / "results.sqlite").entries()]
    assert any("\\xff" in label for label in labels), labels


def test_a_read_only_ledger_is_refused_before_register_appends(home):
    db = home / "results.sqlite"
    Ledger(db)
    before = digest(db)
    _make_read_only(db)
    try:
        result = run_arena("register", str(home / "v" / "keys" / "vk.json"), home=home)
        assert "not writable" in one_line_error(result)
        assert digest(db) == before
        assert not (home / "v" / "keys" / "vk.json.receipt.json").exists()
    finally:
        _writable_again(db)


def test_keygen_refuses_an_unusable_folder_before_a_keygen_that_trains(home):
    """frontier-stitching's KeyGen trains a clean model first: an --out through a file is
    refused before it."""
    (home / "afile").write_text("x")
    result = run_arena(
        "keygen", "--defense", "frontier-stitching", "--protocol", "smoke",
        "--out", str(home / "afile" / "keys"), home=home,
    )  # fmt: skip
    one_line_error(result)
    assert _trained_nothing(home)


def test_published_files_are_readable_and_the_key_is_not(home):
    keys = home / "v" / "keys"
    result = run_arena(
        "prove", "--mk", str(keys / "mk.json"), "--out", str(home / "proof.json"), home=home
    )
    assert result.returncode == 0, result.stderr
    assert (home / "proof.json").stat().st_mode & 0o777 == 0o644
    assert (keys / "mk.json").stat().st_mode & 0o777 == 0o600
    model = home / "m.safetensors"
    modelfile.save_model(Context(protocol=SMOKE, seed=1).owner_model(), model, SMOKE)
    assert model.stat().st_mode & 0o777 == 0o644


def test_keys_and_models_are_written_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    key = ownership.keygen("backdoor-wm", SMOKE, tmp_path / "keys", seed=1)
    assert TriggerKey.load(tmp_path / "keys").fingerprint == key.fingerprint
    with pytest.raises(ArenaError, match="mk.json exists"):
        ownership.keygen("backdoor-wm", SMOKE, tmp_path / "keys", seed=2)
    model = tmp_path / "m.safetensors"
    modelfile.save_model(Context(protocol=SMOKE, seed=1).owner_model(), model, SMOKE)
    assert model.stat().st_size > 0 and not list(tmp_path.glob(".m.safetensors*"))
