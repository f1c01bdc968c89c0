"""Every command of ``arena`` against careless and hostile input: exit status 2, at most
two lines on stderr, no traceback, and every file that was there before left byte for byte.

The bad inputs are generated from the command tree (``typer.main.get_command``), so a new
command or option is covered without a test written for it: a required option is left
out, an unknown option is given, and each option gets the values that are wrong for its
type (a non-integer, a negative or huge count, a value for a flag, an unknown name, a
malformed ``name=value``, the empty string; for a path a missing file, a folder, a path
through a file, a non-UTF-8 name, a 5,000-character name, whichever are wrong for how the
path is used). ``ARENA_HOME`` is pointed at a file and into a folder nobody can write.
Key files and model cards are tampered with field by field.

The generated cases run in one worker process that calls ``arena.cli.main`` as the
console script does, with its own argv, stdout and stderr per case, and puts the folder
back after each. A sample runs as real processes, where exit codes, signals, closed pipes
and non-UTF-8 bytes in argv are the operating system's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

LONG = "a" * 5000  # beyond any file name (ENAMETOOLONG)
NOT_UTF8 = "\udcff"  # what Python makes of the byte 0xff in argv
HUGE = "1" + "0" * 30
CASE_SECONDS = 10  # refusals take well under a second; a case past this has begun work
SIDECARS = ("-wal", "-shm", "-journal")  # SQLite's own files beside a database

# How a path is used decides which paths are bad for it: a missing input is bad input,
# a missing output is simply made. Keys are option names, or (command, option) pairs.
OUTPUT_FOLDERS = {"cache_dir", ("keygen", "out"), ("leaderboard", "out"), ("leaderboard", "html")}
OUTPUT_FILES = {
    ("mark", "out"),
    ("prove", "out"),
    ("ledger head", "out"),
    ("register", "receipt"),
    ("results export", "out"),
    ("export", "out"),
}
DATABASES = {"db", "ledger"}
BAD_PATHS = {
    "input": {
        "missing": "missing.json",
        "folder": "a-folder",
        "through-a-file": "a-file/x.json",
        "long": LONG,
        "not-utf8": f"{NOT_UTF8}.json",
        "empty": "",
        "markup": "[/red]missing.json",
    },
    "output-file": {
        "folder": "a-folder",
        "through-a-file": "a-file/x.json",
        "long": LONG,
        "empty": "",
    },
    "output-folder": {"file": "a-file", "through-a-file": "a-file/x", "long": LONG, "empty": ""},
    "database": {
        "folder": "a-folder",
        "through-a-file": "a-file/x.sqlite",
        "long": LONG,
        "not-a-database": "a-file",
        "empty": "",
    },
}
NOT_INTEGERS = {"word": "abc", "fraction": "1.5", "nan": "nan", "empty": ""}
BAD_COUNTS = {"negative": "-5", "huge": HUGE}
SEEDS = {"seed"}  # any integer is a seed; only one too big for every RNG is bad
BAD_NAMES = {"unknown": "no-such-name", "empty": ""}
BAD_ASSIGNMENTS = {  # for name=value options (-D, -A)
    "no-equals": "lr",
    "no-name": "=1",
    "unknown": "no_such_parameter=1",
    "twice": None,  # the same name twice, each fine alone
    "empty": "",
}

# A valid invocation of each command, so that the mutated option is what is wrong.
# Commands not listed get their required options filled in by type.
BASES: dict[str, dict[str, list[str]]] = {
    "run": {"protocol": ["--protocol", "smoke"], "attack": ["--attack", "ftal"]},
    "sweep": {
        "protocol": ["--protocol", "smoke"],
        "defense": ["--defense", "backdoor-wm"],
        "attack": ["--attack", "none"],
        "seed": ["--seed", "0"],
    },
    "leaderboard": {"protocol": ["--protocol", "smoke"], "out": ["--out", "boards"]},
    "keygen": {"out": ["--out", "new-keys"], "protocol": ["--protocol", "smoke"]},
    "register": {"vk": ["keys/vk.json"]},
    "mark": {
        "key": ["--key", "keys/mk.json"],
        "out": ["--out", "new-model.safetensors"],
        "data": ["--protocol", "smoke"],
    },
    "prove": {"mk": ["--mk", "keys/mk.json"], "out": ["--out", "proof.json"]},
    "verify": {
        "model": ["--model", "model.safetensors"],
        "vk": ["--vk", "keys/vk.json"],
        "mk": ["--mk", "keys/mk.json"],
        "protocol": ["--protocol", "smoke"],
    },
    "calibrate": {"protocol": ["--protocol", "smoke"]},
    "serve": {"model": ["model.safetensors"], "port": ["--port", "0"]},
    "export": {"model": ["model.safetensors"], "out": ["--out", "new-model.onnx"]},
    "ledger head": {"out": ["--out", "new-head.json"]},
    "ledger check": {"receipts": ["receipts/head.json"]},
    "results export": {"out": ["--out", "new-results.jsonl"], "protocol": ["--protocol", "smoke"]},
    "results import": {"source": ["results.jsonl"]},
}
# What an option needs beside it to be read at all.
CONTEXTS: dict[tuple[str, str], dict[str, list[str]]] = {
    ("verify", "proof"): {"public": ["--public"], "mk": []},  # a proof only in public mode
    ("mark", "like"): {"data": ["--data", "a-folder"]},  # --like only with an image folder
}
# Values that are not wrong where the generator would think so.
ACCEPTED = {
    "keygen:seed:huge",  # numpy seeds any integer: a key's seed has no upper bound
    "verify:cache_dir",  # the cache holds reference models for public mode only
}

# Bad input that is still accepted or refused too late: strict, so that whoever fixes one
# notices and removes it here.
KNOWN_FAILURES: dict[str, str] = {}
SLOW_FAILURES_SECONDS = 3  # a known failure that trains is stopped early: it is known

# The fields of each file that a tamperer changes, one at a time; a test checks that this
# list names every field the files have.
FIELDS = {
    "vk": ("format", "scheme", "num_classes", "image_shape", "commitments"),
    "mk": ("format", "scheme", "num_classes", "image_shape", "triggers"),
    "card": ("format", "model", "num_classes", "channels", "image_size", "protocol"),
}
WRONG_FIELDS = {"a-string": "x", "negative": -1, "huge": 10**30, "null": None, "a-list": [1]}


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    tamper: list[str] = field(default_factory=list)  # [file kind, field, wrong value's label]


def _commands() -> dict[str, object]:
    """Every command and group by its path ("" for arena, "run", "ledger head")."""
    import typer.main

    from arena.cli.commands import app

    found: dict[str, object] = {}

    def walk(command: object, path: str) -> None:
        found[path] = command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def _kind(param: object) -> str:
    """flag, assignments, path, int or str: from typer's annotation, else click's type."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    text = str(annotation) if annotation is not None else getattr(param.type, "name", "")
    if getattr(param, "is_flag", False):
        return "flag"
    if param.name.endswith("_param"):
        return "assignments"
    if "path" in text.lower():
        return "path"
    if "int" in text:
        return "int"
    return "str"


def _path_use(command: str, name: str) -> str:
    for use, names in (
        ("database", DATABASES),
        ("output-folder", OUTPUT_FOLDERS),
        ("output-file", OUTPUT_FILES),
    ):
        if name in names or (command, name) in names:
            return use
    return "input"


def _bad_values(command: str, param: object) -> dict[str, str | None]:
    kind = _kind(param)
    if kind == "flag":
        return {"with-a-value": "yes"}
    if kind == "int":
        return {**NOT_INTEGERS, **({"huge": HUGE} if param.name in SEEDS else BAD_COUNTS)}
    if kind == "path":
        return BAD_PATHS[_path_use(command, param.name)]
    if kind == "assignments":
        return BAD_ASSIGNMENTS
    return BAD_NAMES


def _option(param: object) -> str:
    return next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])


def _base(command: str, params: list) -> dict[str, list[str]]:
    if command in BASES:
        return {name: list(tokens) for name, tokens in BASES[command].items()}
    base = {}
    for param in (p for p in params if p.required):
        value = {"int": "1", "str": "smoke"}.get(_kind(param), "keys/vk.json")
        if _kind(param) == "path" and _path_use(command, param.name) != "input":
            value = "new-output"
        is_argument = param.param_type_name == "argument"
        base[param.name] = [value] if is_argument else [_option(param), value]
    return base


def _tokens(given: dict[str, list[str]], params: list, extra: tuple[str, ...] = ()) -> list[str]:
    """Options (and ``extra``) first, then the arguments in their declared order."""
    arguments = [p.name for p in params if p.param_type_name == "argument"]
    options = [t for name, tokens in given.items() if name not in arguments for t in tokens]
    positional = [t for name in arguments for t in given.get(name, [])]
    return [*options, *extra] + (["--", *positional] if positional else [])


def _mutations(command: str, leaf: object) -> list[Case]:
    params = [p for p in leaf.params if p.expose_value]
    base = _base(command, params)
    cases = [Case(f"{command}:--no-such-option", _tokens(base, params, ("--no-such-option",)))]
    for param in params:
        if f"{command}:{param.name}" in ACCEPTED:
            continue
        if param.required:
            left = {name: tokens for name, tokens in base.items() if name != param.name}
            cases.append(Case(f"{command}:{param.name}:left-out", _tokens(left, params)))
        for label, value in _bad_values(command, param).items():
            given = {**base, **CONTEXTS.get((command, param.name), {})}
            if param.param_type_name == "argument":
                given[param.name] = [value]
            elif value is None:
                given[param.name] = [f"{_option(param)}=epochs=1"] * 2
            else:
                given[param.name] = [f"{_option(param)}={value}"]
            case_id = f"{command}:{param.name}:{label}"
            if case_id not in ACCEPTED:
                given = {name: tokens for name, tokens in given.items() if tokens}
                cases.append(Case(case_id, _tokens(given, params)))
    if any(p.name in DATABASES or p.name == "cache_dir" for p in params):
        tokens = _tokens(base, params)
        for label in ("a-file", "<unwritable>"):
            cases.append(
                Case(f"{command}:ARENA_HOME:{label.strip('<>')}", tokens, {"ARENA_HOME": label})
            )
    return cases


def _verify(model: str, keys: str = "keys") -> list[str]:
    return ["verify", "--model", model, "--vk", f"{keys}/vk.json", "--mk", f"{keys}/mk.json"] + [
        "--protocol",
        "smoke",
    ]


def generate_cases() -> list[Case]:
    cases = []
    for path, command in _commands().items():
        words = path.split()
        if getattr(command, "commands", None) is not None:  # a group
            cases.append(Case(f"{path or 'arena'}:no-command", words))
            cases.append(Case(f"{path or 'arena'}:unknown-command", [*words, "no-such-command"]))
        else:
            cases += [
                Case(case.id, [*words, *case.args], case.env) for case in _mutations(path, command)
            ]
    for kind, names in FIELDS.items():
        for name in names:
            for label in [*WRONG_FIELDS, "left-out"]:
                folder = f"tampered/{kind}-{name}-{label}"
                if kind == "card":
                    args = _verify(f"{folder}/model.safetensors")
                else:
                    args = _verify("model.safetensors", keys=folder)
                tamper = [kind, name, label]
                cases.append(Case(f"tampered-{kind}:{name}:{label}", args, tamper=tamper))
                if kind == "vk":
                    register = ["register", f"{folder}/vk.json"]
                    cases.append(
                        Case(f"tampered-vk:{name}:{label}:register", register, tamper=tamper)
                    )
    smoke_ftal = ["run", "--protocol", "smoke", "--attack", "ftal"]
    cases += [  # the issue's own examples
        Case("keygen:into-an-existing-key", ["keygen", "--out", "keys", "--protocol", "smoke"]),
        Case(
            "prove:into-a-missing-folder", ["prove", "--mk", "keys/mk.json", "--out", "no/p.json"]
        ),
        Case("verify:public-missing-model", [*_verify("missing.pt"), "--public"]),
        Case("verify:a-pickle", _verify("pickle.pt")),
        Case("run:-A-lr=nan", [*smoke_ftal, "-A", "lr=nan"]),
        Case("run:-A-lr=inf", [*smoke_ftal, "-A", "lr=inf"]),
        Case("run:-A-momentum=nan", [*smoke_ftal, "-A", "momentum=nan"]),
        Case("run:-D-lr=nan", ["run", "--protocol", "smoke", "-D", "lr=nan"]),
        Case("keygen:-D-lr=-inf", ["keygen", "--out", "new-keys", "-D", "lr=-inf"]),
        Case("run:model-far-from-any", ["run", "--protocol", "smoke", "--model", "zzzz-qqqq"]),
    ]
    return cases


# Invocations whose outcome is not a refusal, checked by tests of their own below.
PROBES = [
    Case("probe:help", ["--help"]),
    Case("probe:run-help", ["run", "--help"]),
    Case("probe:ledger-help", ["ledger", "--help"]),
    Case("probe:exposed-verify", _verify("model.safetensors", keys="exposed")),
    Case("probe:exposed-prove", ["prove", "--mk", "exposed/mk.json", "--out", "no/proof.json"]),
    Case("probe:exposed-mark", ["mark", "--key", "exposed/mk.json", "--out", "no-model.pt"]),
]


# --- the worker: one process, many invocations of arena.cli.main -----------------------


class CaseTimeout(BaseException):
    """Raised by the alarm in a case that ran too long; no ``except Exception`` stops it."""


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``arena ARGS`` in this process (``tests.cli_runner.invoke``); a case that ran past
    its alarm is reported as such (exit status -1)."""
    from tests.cli_runner import invoke as invoke_here

    try:
        return invoke_here(args, env, passthrough=(CaseTimeout,))
    except CaseTimeout:
        return -1, "", "Timeout: the command was still at work\n"


def _files(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every file under ``root`` with what any write changes (size, mtime, ctime, inode)."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.endswith(SIDECARS):
                info = Path(folder, name).lstat()
                key = str(Path(folder, name).relative_to(root))
                found[key] = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
    return found


def _digests(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in _files(root)}


def _setup(world: Path) -> dict[str, object]:
    """Keys, a marked model, a registered key, a stored match, a ledger receipt and the
    files the bad paths name; returns what only this process knows."""
    import torch

    (world / "receipts").mkdir()
    for step in (
        ["keygen", "--protocol", "smoke", "--seed", "1", "--out", "keys"],
        ["keygen", "--protocol", "smoke", "--seed", "2", "--out", "other-keys"],
        ["register", "keys/vk.json"],
        ["mark", "--key", "keys/mk.json", "--out", "model.safetensors", "--protocol", "smoke"],
        ["run", "--protocol", "smoke", "--attack", "none"],
        ["ledger", "head", "--out", "receipts/head.json"],
        ["results", "export", "--protocol", "smoke", "--out", "results.jsonl"],
    ):
        code, _, err = invoke(step)
        if code != 0:
            raise RuntimeError(f"setup: arena {' '.join(step)} exited {code}: {err}")
    (world / "exposed").mkdir()
    for name in ("mk.json", "vk.json"):
        shutil.copy(world / "keys" / name, world / "exposed" / name)
    (world / "exposed" / "mk.json").chmod(0o644)
    (world / "a-folder").mkdir()
    (world / "a-file").write_text("not a key, a model or a database\n")
    torch.save(torch.nn.Linear(2, 2), world / "pickle.pt")  # needs pickle to load
    unwritable = world / "read-only"
    unwritable.mkdir()
    unwritable.chmod(0o555)
    # root writes anywhere, but the kernel's own folders refuse even root
    home = "/sys/arena-hostile/home" if os.geteuid() == 0 else str(unwritable / "home")
    fields = {
        "vk": list(json.loads((world / "keys/vk.json").read_text())),
        "mk": list(json.loads((world / "keys/mk.json").read_text())),
        "card": list(json.loads((world / "model.safetensors.json").read_text())),
    }
    return {"stand_ins": {"a-file": str(world / "a-file"), "<unwritable>": home}, "fields": fields}


def _tamper(world: Path, kind: str, name: str, label: str) -> None:
    """The folder of a ``tampered-`` case: the keys and the model, one field made wrong."""
    folder = world / "tampered" / f"{kind}-{name}-{label}"
    folder.mkdir(parents=True)
    for file in ("keys/vk.json", "keys/mk.json", "model.safetensors", "model.safetensors.json"):
        shutil.copy(world / file, folder / Path(file).name)
    target = folder / {"vk": "vk.json", "mk": "mk.json", "card": "model.safetensors.json"}[kind]
    fields = json.loads(target.read_text())
    if label == "left-out":
        fields.pop(name, None)
    else:
        fields[name] = WRONG_FIELDS[label]
    target.write_text(json.dumps(fields))
    (folder / "mk.json").chmod(0o600)


def _run_cases(world: Path, pristine: Path, cases: list[Case], stand_ins: dict) -> list[dict]:
    def on_alarm(signum: int, frame: object) -> None:
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    results = []
    for case in cases:
        before = _files(world)
        if case.tamper:
            _tamper(world, *case.tamper)
        env = {name: stand_ins.get(value, value) for name, value in case.env.items()}
        start = time.perf_counter()
        signal.alarm(SLOW_FAILURES_SECONDS if case.id in KNOWN_FAILURES else CASE_SECONDS)
        try:
            code, out, err = invoke(case.args, env)
        finally:
            signal.alarm(0)
        seconds = time.perf_counter() - start
        after = _files(world)
        changed = sorted(name for name in before if after.get(name) != before[name])
        created = sorted(set(after) - set(before))
        for name in changed:  # the world as it was, for the next case
            shutil.copy2(pristine / name, world / name)
        for name in created:
            (world / name).unlink()
        shutil.rmtree(world / "tampered", ignore_errors=True)
        results.append(
            {
                **asdict(case),
                "code": code,
                "stdout": _clip(out),
                "stderr": _clip(err),
                "changed": changed,
                "seconds": round(seconds, 3),
            }
        )
    return results


def _clip(text: str) -> str:
    # Both ends of a long output: "Traceback" opens one, the exception closes it.
    return text if len(text) <= 8000 else f"{text[:2000]} ... {text[-6000:]}"


def worker(world: Path, cases_file: Path, report_file: Path) -> None:
    os.chdir(world)
    known = _setup(world)
    pristine = world.parent / "pristine"
    shutil.copytree(world, pristine, symlinks=True)
    digests = _digests(world)
    cases = [Case(**case) for case in json.loads(cases_file.read_text())]
    started = time.perf_counter()
    results = _run_cases(world, pristine, cases, known["stand_ins"])
    seconds = time.perf_counter() - started
    now = _digests(world)
    report = {
        "results": results,
        "seconds": seconds,
        "fields": known["fields"],
        "altered": sorted(name for name in digests if now.get(name) != digests[name]),
    }
    report_file.write_text(json.dumps(report))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.cli_runner
    worker(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    sys.exit(0)


# --- generated cases, in the worker ------------------------------------------------------

CASES = generate_cases()


def _param(case: Case) -> object:
    reason = KNOWN_FAILURES.get(case.id)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    """The selected generated cases, run by one worker in a fresh folder: its report."""
    root = tmp_path_factory.mktemp("hostile")
    world = root / "world"
    world.mkdir()
    wanted = {
        item.callspec.params["case"].id
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_bad_input_is_refused"
    }
    selected = [case for case in CASES if case.id in wanted] + PROBES
    (root / "cases.json").write_text(json.dumps([asdict(case) for case in selected]))
    env = {**os.environ, "ARENA_HOME": str(world / "home"), "COLUMNS": "250"}
    done = subprocess.run(
        [sys.executable, __file__, str(world), str(root / "cases.json"), str(root / "report")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads((root / "report").read_text())
    report["results"] = {result["id"]: result for result in report["results"]}
    return {**report, "path": world, "env": env}


def check_refused(result: dict) -> None:
    """Exit 2, one or two lines on stderr (a warning and the error), no traceback, and
    nothing that was there before changed."""
    shown = f"arena {' '.join(result['args'])[:300]}\nstderr: {result['stderr'][-1500:]}"
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert "Traceback" not in result["stderr"] + result["stdout"], shown
    assert result["code"] == 2, shown
    assert 1 <= len(lines) <= 2, shown
    assert not result["changed"], f"{shown}\nchanged: {result['changed']}"


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input_is_refused(case: Case, world: dict) -> None:
    check_refused(world["results"][case.id])


def test_every_field_of_keys_and_cards_is_tampered_with(world: dict) -> None:
    for kind, names in world["fields"].items():
        assert set(names) <= set(FIELDS[kind]), f"add the new {kind} fields to FIELDS"


def test_no_file_was_ever_altered(world: dict) -> None:
    assert not world["altered"]  # the final check, on the bytes themselves


def test_help_still_works(world: dict) -> None:
    for name in ("probe:help", "probe:run-help", "probe:ledger-help"):
        result = world["results"][name]
        assert result["code"] == 0, result["stderr"]
        assert "Usage" in result["stdout"] and not result["stderr"], name


@pytest.mark.parametrize("command", ["verify", "prove", "mark"])
def test_a_marking_key_others_can_read_is_warned_about(command: str, world: dict) -> None:
    """Like ssh with a private key: one line, and the command goes on (here to verify a
    model, to refuse a missing folder and a model file that is no .safetensors)."""
    result = world["results"][f"probe:exposed-{command}"]
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert lines[0].startswith("warning: the marking key exposed/mk.json"), result["stderr"]
    assert "(mode 0644)" in lines[0] and "chmod 600" in lines[0]
    assert result["code"] == (0 if command == "verify" else 2), result["stderr"]
    assert len(lines) == (1 if command == "verify" else 2), result["stderr"]


def test_a_pickle_is_refused_in_our_own_words(world: dict) -> None:
    """Not torch's advice to turn weights_only off: arena never unpickles a model."""
    line = world["results"]["verify:a-pickle"]["stderr"].strip()
    assert line == (
        "error: pickle.pt is not a readable state dict: it needs pickle to load, which arena "
        "never does (save a state dict of tensors, or a .safetensors file)"
    )


# --- a sample in real processes -------------------------------------------------------


def _process(
    args: list[str], world: dict, env: dict | None = None, closed_stdout: bool = False
) -> subprocess.CompletedProcess:
    """``arena ARGS`` as a process in the world's folder; stdout a pipe nobody reads from
    when ``closed_stdout`` (``arena ... | true``)."""
    stdout = subprocess.PIPE
    if closed_stdout:
        read, stdout = os.pipe()
        os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-c", "from arena.cli import main; main()", *args],
            cwd=world["path"],
            env={**world["env"], **(env or {})},
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    finally:
        if closed_stdout:
            os.close(stdout)


REAL_CASES = {  # name: (args, ARENA_HOME or None, what the one line says)
    "unknown-option": (["run", "--foo"], None, "no such option: --foo (arena run --help)"),
    "no-command": ([], None, "missing command (arena --help)"),
    "not-utf8-path": (["register", "\udcff.json"], None, "\\udcff.json does not exist"),
    "home-a-file": (["leaderboard"], "a-file", "is a file, not a folder; set ARENA_HOME"),
}


@pytest.fixture(scope="module")
def real(world: dict) -> dict:
    """The real-process cases, two at a time."""
    jobs = {
        name: (args, {"ARENA_HOME": str(world["path"] / home)} if home else None, False)
        for name, (args, home, _) in REAL_CASES.items()
    }
    jobs |= {
        "verified": ([*_verify("model.safetensors"), "--json"], None, True),
        "not-verified": (_verify("model.safetensors", keys="other-keys"), None, True),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_process, args, world, env, closed)
            for name, (args, env, closed) in jobs.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(REAL_CASES))
def test_bad_input_in_a_real_process(name: str, real: dict) -> None:
    done = real[name]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and REAL_CASES[name][2] in lines[0], lines[0]


@pytest.mark.parametrize("name, status", [("verified", 0), ("not-verified", 1)])
def test_a_closed_stdout_keeps_the_verdict(name: str, status: int, real: dict) -> None:
    """``arena verify ... | true``: the exit status is still the verdict's, and nothing
    is said about the pipe (here verified printing JSON, not verified printing text)."""
    assert real[name].returncode == status, real[name].stderr
    assert not real[name].stderr.strip(), real[name].stderr


def test_ctrl_c_says_what_is_kept_and_exits_130(world: dict) -> None:
    """A real SIGINT in the middle of a command (here: as keygen looks up the protocol)."""
    code = (
        "import os, signal, time\n"
        # As in a terminal: a process started in the background (nohup, '&' in a script)
        # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import arena.cli.commands as cli\n"
        "def interrupted(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "cli.get_protocol = interrupted\n"
        "cli.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "keygen", "--out", "interrupted", "--protocol", "smoke"],
        cwd=world["path"],
        env=world["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == (
        "interrupted; finished artifacts are kept in the cache, re-run to resume"
    )


# --- the same rules, in this process ---------------------------------------------------


def test_json_is_strict(capsys: pytest.CaptureFixture) -> None:
    from arena.cli.commands import _print_json
    from arena.util.errors import ArenaError

    _print_json({"p_value": 0.5})
    assert json.loads(capsys.readouterr().out) == {"p_value": 0.5}
    for number in (float("nan"), float("inf")):
        with pytest.raises(ArenaError, match="JSON"):
            _print_json({"p_value": number})
    assert capsys.readouterr().out == ""


def test_key_warning_only_for_keys_others_can_read(tmp_path: Path, capsys) -> None:
    from arena.cli.commands import _warn_if_exposed

    key = tmp_path / "mk.json"
    key.write_text("{}")
    for mode, warned in ((0o600, False), (0o400, False), (0o640, True), (0o604, True)):
        key.chmod(mode)
        _warn_if_exposed(key)
        assert ("warning" in capsys.readouterr().err) is warned, oct(mode)
    _warn_if_exposed(tmp_path / "missing.json")  # the command reports a missing key
    _warn_if_exposed(None)
    assert capsys.readouterr().err == ""
