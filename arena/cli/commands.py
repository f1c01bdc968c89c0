"""The ``arena`` command: argument parsing and printing only; the work is in the library."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import signal
import stat
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from arena.core.environment import apply_deterministic_defaults, threads_setting
from arena.core.params import document_params
from arena.core.protocols import PROTOCOLS, get_protocol
from arena.core.registry import BrokenPlugin, registry_for
from arena.eval import leaderboard as boards
from arena.report.text import k_of_n
from arena.storage.artifacts import ArtifactCache
from arena.storage.record import (
    DetectorRecord,
    DisputeRecord,
    EvidenceRecord,
    MatchRecord,
    NullRecord,
)
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError
from arena.util.paths import make_folder
from arena.util.progress import RichReporter

if TYPE_CHECKING:
    from arena.eval.match import MatchSpec

app = typer.Typer(
    help="Watermark Arena: DNN watermarks against removal, forgery, piracy and evasion attacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


stdout = Console()


stderr = Console(stderr=True)


DbOption = Annotated[
    Path | None, typer.Option("--db", help="results database [default: $ARENA_HOME/results.sqlite]")
]


CacheOption = Annotated[
    Path | None, typer.Option("--cache-dir", help="artifact cache [default: $ARENA_HOME/cache]")
]


def _parse_assignments(values: list[str] | None, option: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for value in values or []:
        name, sep, setting = value.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ArenaError(f"{option} expects name=value, got {value!r}")
        if name in parsed:  # the last one silently winning would hide a typo in a script
            raise ArenaError(
                f"{option} sets {name!r} twice: {parsed[name]!r} and {setting.strip()!r}"
            )
        parsed[name] = setting.strip()
    return parsed


@app.command()
def run(
    defense: Annotated[
        str, typer.Option(help="defense plugin (arena list defenses)")
    ] = "backdoor-wm",
    attack: Annotated[
        str, typer.Option(help="attack plugin (arena list attacks), or a chain 'a+b' of them")
    ] = "none",
    protocol: Annotated[
        str, typer.Option(help="evaluation protocol (arena list protocols)")
    ] = "mnist5k",
    seed: Annotated[int, typer.Option(help="match seed")] = 0,
    model: Annotated[
        str | None, typer.Option(help="a timm model other than the protocol's")
    ] = None,
    defense_param: Annotated[
        list[str] | None, typer.Option("--defense-param", "-D", help="defense parameter name=value")
    ] = None,
    attack_param: Annotated[
        list[str] | None, typer.Option("--attack-param", "-A", help="attack parameter name=value")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON record on stdout")
    ] = False,
    db: DbOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Run one match: clean -> mark -> verify -> attack -> verify -> score -> store."""
    from arena.eval.match import MatchSpec, play_match

    spec = MatchSpec(
        defense=defense,
        attack=attack,
        protocol=protocol,
        seed=seed,
        model=model,
        defense_params=_parse_assignments(defense_param, "--defense-param"),
        attack_params=_parse_assignments(attack_param, "--attack-param"),
    )
    record = play_match(
        spec, store=ResultStore(db), cache=ArtifactCache(cache_dir), progress=RichReporter(stderr)
    )
    if as_json:
        _print_json(record.to_dict())
    else:
        _print_match(record)


def _evidence_cells(evidence: EvidenceRecord | None, null: NullRecord) -> list[str]:
    if evidence is None:
        return ["n/a"] * 4
    verdict = "[green]verified[/]" if evidence.verified else "[red]not verified[/]"
    if not null.sound:
        verdict = f"[yellow]no verdict (null {null.kind})[/]"
    elif not evidence.applicable:
        verdict = "not applicable (another task)"
    needed = evidence.required_successes
    return [
        k_of_n(evidence.successes, evidence.trials, words=True)
        + (f" (needs {needed})" if needed else ""),
        f"{evidence.null_p:.3g}",
        f"{evidence.p_value:.2e}",
        verdict,
    ]


def _print_claims(dispute: DisputeRecord | None) -> None:
    """Forgery and piracy: every claim the arena judged, check by check."""
    if not dispute:
        return
    table = Table(title="claims of ownership", title_justify="left")
    for column in ("key", "model", "answers", "p-value", "label check", "ledger order", "claim"):
        table.add_column(column)
    for claim in dispute.claims:
        evidence, check = claim.evidence, claim.label_check
        table.add_row(
            claim.party,
            claim.model,
            k_of_n(evidence.successes, evidence.trials, words=True),
            f"{evidence.p_value:.2e}",
            "n/a" if check is None else ("passed" if check.passed else "[red]failed[/]"),
            "key first" if claim.registered_before_model_seen else "[red]key after model[/]",
            "[green]passes[/]" if claim.verified else "[red]fails[/]",
        )
    if dispute.claims:
        stdout.print(table)
    clean = dispute.clean_models
    if clean:
        line = (
            f"attacker's key on {clean.models} independent clean models: "
            f"{clean.verified_without_label_check} verified (mean agreement "
            f"{clean.mean_agreement:.2f})"
        )
        if clean.label_check_applies:
            line += f", {clean.claimed_with_label_check} claimed with the label check"
        stdout.print(line)


def _print_detector(detector: DetectorRecord | None) -> None:
    if detector:
        test = k_of_n(detector.test_flagged, detector.test_queries, words=True)
        verification = k_of_n(
            detector.verification_flagged, detector.verification_queries, words=True
        )
        stdout.print(
            f"query filter: flagged {test} clean test queries, {verification} verification queries"
        )


def _print_match(record: MatchRecord) -> None:
    title = (
        f"{record.attack} vs {record.defense} on {record.protocol} "
        f"v{record.protocol_version} ({record.model}), seed {record.seed}"
    )
    table = Table(title=title, title_justify="left")
    for column in ("model", "test acc", "trigger evidence", "null p", "p-value", "verdict"):
        table.add_column(column)
    null = record.null
    for label, part in (
        ("clean", record.clean),
        ("marked", record.marked),
        ("attacked", record.attacked),
    ):
        table.add_row(label, f"{part.test_acc:.4f}", *_evidence_cells(part.evidence, null))
    owner_head = record.attacked.owner_head_evidence
    if owner_head is not None:
        table.add_row("attacked, owner head", "", *_evidence_cells(owner_head, null))
    stdout.print(table)
    if null.source:
        stdout.print(f"null: {null.source}", highlight=False)
    _print_claims(record.claim)
    _print_detector(record.attacked.detector)
    succeeded = "[red]yes[/]" if record.attack_succeeded else "[green]no[/]"
    if record.unsound_null:
        succeeded = "[yellow]no verdict[/]"
    stdout.print(
        f"attack succeeded: {succeeded} ({record.outcome}); alpha {record.marked.evidence.alpha:g}"
    )
    stdout.print(
        f"functionality preservation: {100 * record.functionality_preservation:+.2f} "
        "points of test accuracy (marked - clean)"
    )
    threat_model = record.threat_model.to_dict()
    stdout.print(f"threat model: {', '.join(f'{k}={v}' for k, v in threat_model.items())}")
    cached = [phase for phase, hit in record.cached.items() if hit]
    seconds = ", ".join(f"{phase} {value:.1f}s" for phase, value in record.seconds.items())
    stdout.print(f"time: {seconds}" + (f" (from cache: {', '.join(cached)})" if cached else ""))
    if record.replay_seconds is not None:
        stdout.print(
            f"finished match: key opened, artifacts checked and the stored record returned in "
            f"{record.replay_seconds:.1f}s"
        )


ExecutorOption = Annotated[
    str,
    typer.Option(
        help="local: one match after another in this process; ray: matches as Ray tasks "
        "(pip install 'watermark-arena[ray]')"
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(help="ray: join this cluster (e.g. 'auto'); default: start a local one"),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(help="ray: matches at once on the local cluster [default: the CPUs]"),
]
DiscardOption = Annotated[
    bool,
    typer.Option(
        "--discard-attacked",
        help="keep no attacked model once its match is stored (a finished match still "
        "counts; re-measuring one plays its attack again)",
    ),
]


def _attack_label(spec: MatchSpec) -> str:
    """The spec's attack, with the parameters it sets (a point of a budget curve)."""
    if not spec.attack_params:
        return spec.attack
    params = ", ".join(f"{name}={value}" for name, value in spec.attack_params.items())
    return escape(f"{spec.attack} [{params}]")  # printed through console markup


@app.command()
def sweep(
    defense: Annotated[
        list[str], typer.Option(help="defense plugin, repeatable; 'all' for every one")
    ] = ["all"],  # noqa: B006 (typer reads the default, never mutates it)
    attack: Annotated[
        list[str],
        typer.Option(
            help="attack plugin or chain ('a+b'), repeatable; 'all' for every plugin, "
            "'chains' for the robustness study's chains"
        ),
    ] = ["all"],  # noqa: B006
    protocol: Annotated[str, typer.Option(help="evaluation protocol")] = "mnist5k",
    seed: Annotated[list[int], typer.Option(help="match seed, repeatable")] = [0],  # noqa: B006
    db: DbOption = None,
    cache_dir: CacheOption = None,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate",
            help="only print what the sweep would cost (from the stored matches' timings)",
        ),
    ] = False,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    workers: WorkersOption = None,
    discard_attacked: DiscardOption = False,
    budget_curve: Annotated[
        bool,
        typer.Option(
            "--budget-curve",
            help="play each attack at every budget of its declared grid (its removal-cost "
            "curve: the leaderboard reports the cheapest that removes each mark)",
        ),
    ] = False,
) -> None:
    """Run every defense x attack x seed match; finished ones are skipped, so an
    interrupted sweep resumes where it stopped. Exit 1 if a match failed."""
    from arena.eval.sweep import estimate_sweep, plan
    from arena.eval.sweep import sweep as run_sweep

    runner = _sweep_executor(executor, address, workers)
    skipped: list[tuple[str, str, str]] = []
    specs = plan(protocol, defense, attack, seed, skipped, budget_curve=budget_curve)
    store, cache = ResultStore(db), ArtifactCache(cache_dir)
    costs, predicted = estimate_sweep(specs, store)
    if estimate:
        stdout.print(f"unit costs on this machine: {costs.describe()}", highlight=False)
        stdout.print(predicted.describe(), highlight=False)
        return
    stderr.print(
        f"sweep: {len(specs)} matches on {protocol}, seeds {', '.join(map(str, seed))}; "
        f"{predicted.describe()}",
        highlight=False,
    )
    for skipped_defense, skipped_attack, reason in skipped:
        stderr.print(
            f"skipped: {skipped_attack} does not apply to {skipped_defense} ({reason})",
            highlight=False,
        )

    report = run_sweep(
        specs,
        store=store,
        cache=cache,
        progress=RichReporter(stderr),
        on_match=_sweep_log(len(specs)),
        executor=runner,
        discard_attacked=discard_attacked,
    )
    stdout.print(report.summary(), highlight=False)
    for spec, error in report.failed:
        stdout.print(f"failed: {spec.defense} x {_attack_label(spec)}, seed {spec.seed}: {error}")
    if report.failed:
        raise typer.Exit(1)


def _sweep_executor(executor: str, address: str | None, workers: int | None) -> Any:
    """``arena sweep``'s executor: None for the local one, else a ``RaySweep`` whose
    tasks train with ``ARENA_THREADS`` threads (default: one per task)."""
    from arena.eval.sweep import RaySweep

    if executor not in ("local", "ray"):
        raise ArenaError(f"unknown executor {executor!r}; choose local or ray")
    if executor == "local":
        if address is not None or workers is not None:
            raise ArenaError("--address and --workers are options of --executor ray")
        return None
    threads = threads_setting() if os.environ.get("ARENA_THREADS", "").strip() else 1
    return RaySweep(address, workers, threads)


def _sweep_log(total: int) -> Callable[[int, Any, MatchRecord | None, str], None]:
    """A line on stderr as each match ends: its place among those ended, its verdict."""
    ended = 0

    def log(index: int, spec: Any, record: MatchRecord | None, note: str) -> None:
        nonlocal ended
        ended += 1  # matches end in the graph's order locally, in any order on Ray
        verdict = ""
        if record is not None:
            evidence = record.attacked.evidence
            verdict = (
                f"{k_of_n(evidence.successes, evidence.trials)}, "
                f"{'verified' if evidence.verified else 'not verified'}, "
                f"attack {'succeeded' if record.attack_succeeded else 'failed'}; "
            )
        stderr.print(
            f"[{ended}/{total}] {spec.defense} x {_attack_label(spec)}, seed {spec.seed}: "
            f"{verdict}{note}",
            highlight=False,
        )

    return log


@app.command("list")
def list_plugins(
    kind: Annotated[str | None, typer.Argument(help="defenses, attacks or protocols")] = None,
) -> None:
    """List plugins and protocols with their details and source package."""
    kinds = [kind] if kind else ["defenses", "attacks", "protocols"]
    for index, name in enumerate(kinds):
        if index:
            stdout.print()
        if name == "protocols":
            _list_protocols()
        else:
            _list_registry(name)


def _list_registry(kind: str) -> None:
    registry = registry_for(kind)
    protocol = get_protocol("smoke")
    _print_heading(f"{registry.kind}s")
    for info in registry.entries():
        plugin = info.cls
        stdout.print()
        stdout.print(Text.assemble((info.name, "bold"), f"  ({info.source})"))
        for line in dict.fromkeys((info.summary, getattr(plugin, "paper", ""))):
            if line:  # the docstring's first line, then the paper it cites
                _print_wrapped(line, indent=2)
        if registry.kind == "defense":
            _print_wrapped(f"family: {plugin.family}; access: {plugin.access}", indent=2)
        else:
            _print_wrapped(f"threat: {plugin.threat}", indent=2)
            _print_wrapped(
                f"threat model ({protocol.name}): {_threat_summary(plugin, protocol)}", indent=2
            )
        _print_params(plugin.Params)
    for broken in registry.broken():
        _print_broken(broken)


def _print_params(params_type: type) -> None:
    """Each parameter as ``name: type = default  constraint`` over its help."""
    docs = document_params(params_type)
    _print_wrapped("parameters:" if docs else "parameters: none", indent=2)
    for doc in docs:
        constraint = doc.constraint
        if constraint[:1] in ("[", "("):
            constraint = f"in {constraint}"
        head = f"{doc.name}: {doc.type} = {doc.default}"
        _print_wrapped(f"{head}  {constraint}" if constraint else head, indent=4, hanging=8)
        if doc.help:
            _print_wrapped(doc.help, indent=8, hanging=8)


def _print_heading(title: str) -> None:
    stdout.print(Text(title, style="bold underline"))


def _print_wrapped(text: str, indent: int, hanging: int | None = None) -> None:
    """``text`` wrapped to the terminal's width (80 columns in a pipe), its first line
    indented by ``indent``, the others by ``hanging`` (default: two more)."""
    lines = textwrap.wrap(
        text,
        width=max(stdout.width, 40),
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + 2 if hanging is None else hanging),
        break_on_hyphens=False,
    )
    for line in lines:
        stdout.print(line, markup=False, highlight=False, soft_wrap=True)


def _threat_summary(plugin: type, protocol: Any) -> str:
    """The attack's ``ThreatModel`` on ``protocol``, by its own field names."""
    from arena.core.context import Context

    try:
        threat = plugin().threat_model(Context(protocol=protocol))
    except Exception as error:  # a third-party plugin's bug must not break the listing
        return f"(unavailable: {error})"
    return ", ".join(
        f"{name}: {value}" for name, value in threat.to_dict().items() if value is not None
    )


def _print_broken(broken: BrokenPlugin) -> None:
    stderr.print(
        f"[yellow]warning[/]: {broken.kind} {broken.name!r} failed to load: "
        f"{escape(str(broken.error))}"
    )


def _list_protocols() -> None:
    _print_heading("protocols")
    for protocol in PROTOCOLS.values():
        stdout.print()
        stdout.print(Text.assemble((protocol.name, "bold"), f"  (version {protocol.version})"))
        for line in (
            protocol.description,
            f"data: {protocol.dataset}; model: {protocol.model} @ {protocol.image_size}px",
            "split (owner/attacker/test): "
            f"{protocol.owner_size}/{protocol.attacker_size}/{protocol.test_size}",
            f"owner training: {_settings_line(protocol.training)}; augment: {protocol.augment}",
            f"triggers: {protocol.trigger_size}, {protocol.triggers_per_batch} per batch",
            f"marking a trained model: {protocol.mark_epochs} epochs at lr {protocol.mark_lr:g}, "
            f"{protocol.mark_triggers_per_batch} triggers per batch",
            f"attack epochs: {protocol.attack_epochs}",
            f"alpha: {protocol.alpha:g}; delta: {protocol.delta:g}",
        ):
            _print_wrapped(line, indent=2)


def _settings_line(settings: Any) -> str:
    """A ``TrainSettings`` by its own field names."""
    return ", ".join(f"{name} {value}" for name, value in dataclasses.asdict(settings).items())


@app.command()
def leaderboard(
    protocol: Annotated[
        str | None, typer.Option(help="protocol to render [default: every protocol with results]")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for <protocol>.md and <protocol>.json")] = Path(
        "leaderboards"
    ),
    html: Annotated[
        Path | None,
        typer.Option(help="also write a static site per protocol to <html>/<protocol>/"),
    ] = None,
    db: DbOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Rank and render every stored match of a protocol: terminal, Markdown and JSON (and
    with --html, a static site with plots and the keys' triggers)."""
    from arena.report import leaderboard as render

    store = ResultStore(db)
    protocols = [get_protocol(protocol)] if protocol else boards.protocols_in(store)
    if not protocols:
        raise ArenaError(
            f"the results database {store.path} holds no matches yet; run arena run first"
        )
    if cache_dir is not None:  # only the site reads it; a bad path is still refused
        make_folder(cache_dir, "the artifact cache")
    if html is not None:
        from arena.report.site import check_site_folder, publish

        for chosen in protocols:  # before anything is written
            check_site_folder(html / chosen.name)
    for chosen in protocols:
        board = boards.build(store, chosen)
        markdown, data = render.write(board, out)
        for table in render.rich_tables(board):
            stdout.print(table)
        stdout.print(f"wrote {markdown} and {data}")
        if html is not None:
            cache = ArtifactCache(cache_dir)  # the keys the site draws
            index = publish(chosen, html, db=db, cache=cache, markdown_dir=out, board=board)
            stdout.print(f"wrote the site {index}")


LedgerOption = Annotated[
    Path | None,
    typer.Option("--ledger", help="ledger database [default: $ARENA_HOME/results.sqlite]"),
]


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="folder for mk.json (secret) and vk.json (public)")],
    defense: Annotated[str, typer.Option(help="watermarking scheme")] = "backdoor-wm",
    protocol: Annotated[
        str, typer.Option(help="protocol whose input shape the key fits")
    ] = "mnist5k",
    classes: Annotated[
        int | None, typer.Option(help="number of classes [default: protocol's]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="only for reproducible experiments")] = None,
    defense_param: Annotated[
        list[str] | None, typer.Option("--defense-param", "-D", help="defense parameter name=value")
    ] = None,
) -> None:
    """Sample a marking key (secret, mode 0600) and its verification key (public)."""
    import dataclasses

    from arena.ownership import vendor as ownership

    chosen = get_protocol(protocol)
    if classes is not None:
        from arena.core.keys import check_num_classes

        try:
            check_num_classes(classes)
        except ValueError as error:
            raise ArenaError(f"--classes: {error}") from None
        chosen = dataclasses.replace(chosen, num_classes=classes)
    key = ownership.keygen(
        defense, chosen, out, _parse_assignments(defense_param, "--defense-param"), seed
    )
    stdout.print(
        f"wrote {out / 'mk.json'} (secret) and {out / 'vk.json'} (public); "
        f"key fingerprint {key.fingerprint}"
    )


ReceiptsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--receipt", help="ledger receipt (arena register, arena ledger head), repeatable"
    ),
]


@app.command()
def register(
    vk: Annotated[Path, typer.Argument(help="verification key to record")],
    ledger: LedgerOption = None,
    receipt: Annotated[
        Path | None,
        typer.Option(help="receipt to keep outside the ledger [default: VK.receipt.json]"),
    ] = None,
) -> None:
    """Record a verification key's commitment in the ledger, timestamped, and write the
    receipt that later shows whether the ledger was rewritten."""
    from arena.ownership import vendor as ownership
    from arena.ownership.ledger import Ledger, load_receipt, save_receipt
    from arena.storage.results import check_writable

    book = Ledger(ledger)
    receipt = receipt or vk.with_name(vk.name + ".receipt.json")
    if receipt.exists():  # a receipt kept from before is evidence: replaced only if it holds
        book.check_receipts([load_receipt(receipt)])
    elif not receipt.parent.is_dir():
        raise ArenaError(f"the folder of the receipt {receipt} does not exist")
    check_writable(book.path, "ledger")
    entry = ownership.register_key(vk, book)
    save_receipt(book.receipt(entry), receipt)
    stdout.print(
        f"key {entry.digest} registered at {ownership._iso(entry.recorded_at)} "
        f"(ledger entry {entry.position}); keep the receipt {receipt} outside the ledger"
    )


@app.command()
def mark(
    key: Annotated[Path, typer.Option(help="marking key mk.json (vk.json beside it)")],
    out: Annotated[Path, typer.Option(help="marked model file (.safetensors)")],
    data: Annotated[
        str,
        typer.Option(
            "--data", "--protocol", help="a protocol, or an image folder with a subfolder per class"
        ),
    ] = "mnist5k",
    like: Annotated[
        str, typer.Option(help="with an image folder: the protocol whose size and budgets apply")
    ] = "mnist5k",
    model: Annotated[str | None, typer.Option(help="timm model [default: protocol's]")] = None,
    start_from: Annotated[
        Path | None,
        typer.Option("--from", help="your trained model file: mark it instead of a fresh model"),
    ] = None,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    defense_param: Annotated[
        list[str] | None, typer.Option("--defense-param", "-D", help="marking parameter name=value")
    ] = None,
    ledger: LedgerOption = None,
) -> None:
    """Train a watermarked model with your key and record its fingerprint."""
    from arena.core.data import folder_protocol
    from arena.ownership import modelfile
    from arena.ownership import vendor as ownership
    from arena.ownership.ledger import Ledger

    _warn_if_exposed(key)
    if Path(data).is_dir():
        chosen = folder_protocol(Path(data), get_protocol(like)).with_model(model)
    else:
        chosen = get_protocol(data).with_model(model)
    path = ownership.mark(
        key,
        key.with_name("vk.json"),
        chosen,
        out,
        Ledger(ledger),
        seed,
        RichReporter(stderr),
        _parse_assignments(defense_param, "--defense-param"),
        start_from,
    )
    stdout.print(f"wrote {path} and {modelfile.card_path(path)}")


@app.command()
def prove(
    mk: Annotated[Path, typer.Option(help="marking key (secret)")],
    out: Annotated[Path, typer.Option(help="proof file to publish")],
    vk: Annotated[
        Path | None, typer.Option(help="verification key [default: vk.json beside mk]")
    ] = None,
    subset: Annotated[
        int | None, typer.Option(help="trigger subset to reveal [default: first unrevealed]")
    ] = None,
    ledger: LedgerOption = None,
) -> None:
    """Reveal one trigger subset as a public proof that anyone with vk can check."""
    from arena.ownership import vendor as ownership
    from arena.ownership.ledger import Ledger

    _warn_if_exposed(mk)
    proof = ownership.prove(mk, vk or mk.with_name("vk.json"), Ledger(ledger), subset, out)
    stdout.print(
        f"wrote {out}: the openings of subset {proof['subset']} "
        f"({len(proof['openings'])} triggers), now spent"
    )


def Opt(kind: Any, help: str, *names: str) -> Any:  # noqa: N802 (read as a type)
    """``Annotated[kind, typer.Option(*names, help=help)]``: an option in one line."""
    return Annotated[kind, typer.Option(*names, help=help)]


def EndpointOption(help: str, kind: type = float) -> Any:  # noqa: N802 (read as a type)
    """An option of ``arena verify --endpoint`` only; None when not given."""
    return Opt(kind | None, f"endpoint: {help}")


@app.command()
def verify(
    vk: Opt(Path, "verification key"),
    model: Opt(Path | None, "suspect model file (.safetensors, a state dict, or .onnx)") = None,
    endpoint: Opt(str | None, "suspect behind a prediction API: its URL (not --model)") = None,
    mk: Opt(Path | None, "marking key: opened and revealed to the verifier (private mode)") = None,
    public: Opt(
        bool,
        "cut-and-choose public verification: reveals one subset, checks its labels against "
        "clean reference models",
        "--public",
    ) = False,
    proof: Opt(
        Path | None, "public mode: the owner's proof (arena prove); made from mk if absent"
    ) = None,
    protocol: Opt(
        str | None,
        "protocol: input shape, classes, alpha, calibration [default: the one the model card "
        "names, else mnist5k]",
    ) = None,
    arch: Opt(str | None, "timm model when no model card is beside it") = None,
    as_json: Opt(bool, "print one JSON record on stdout", "--json") = False,
    subset: Opt(int | None, "trigger subset to reveal [default: first unrevealed]") = None,
    ledger: LedgerOption = None,
    receipt: ReceiptsOption = None,
    db: Opt(
        Path | None,
        "results database with the calibrations [default: $ARENA_HOME/results.sqlite]",
        "--db",
    ) = None,
    cache_dir: CacheOption = None,
    adapter: EndpointOption("a Python file or module describing another API (README)", str) = None,
    max_queries: EndpointOption("images this run may send, triggers and decoys", int) = None,
    decoys: EndpointOption("test images mixed in with the triggers [default: 20]", int) = None,
    rate: EndpointOption("images sent per second, at most [default: 100]", float) = None,
    timeout: EndpointOption("seconds for one request, to its last byte [default: 10]") = None,
    retries: EndpointOption("further tries of a failed request [default: 3]", int) = None,
    batch: EndpointOption("images per request, at most [default: 64]", int) = None,
    accept_partial: Annotated[
        bool,
        typer.Option(
            "--accept-partial",
            help="endpoint: if the service stops answering, decide on the triggers it "
            "answered (exact nulls only) instead of keeping them to resume",
        ),
    ] = False,
) -> None:
    """Verify ownership of a model: exit 0 verified, 1 not verified, 2 bad input.

    The suspect is a model file (--model) or a prediction API (--endpoint)."""
    from arena.ownership import vendor as ownership
    from arena.ownership.ledger import Ledger, load_receipt
    from arena.storage.calibrations import CalibrationStore

    _warn_if_exposed(mk)
    settings = dict(timeout=timeout, retries=retries, rate=rate, max_queries=max_queries)
    settings.update(max_batch=batch, decoys=decoys)
    suspect, name, chosen = _suspect(
        model, endpoint, protocol, arch, adapter, accept_partial, settings
    )
    book = Ledger(ledger)
    receipts = [load_receipt(path) for path in receipt or ()]
    calibrations = CalibrationStore(db)
    if not public:
        if mk is None:
            raise ArenaError("private verification opens the marking key: pass --mk (or --public)")
        claim = ownership.verify(
            name, mk, vk, chosen, book, arch, subset, calibrations, receipts, suspect
        )
    else:
        where = (book, calibrations, cache_dir, arch, receipts, subset, suspect)
        claim = _verify_public(name, vk, mk, proof, chosen, *where)
    record = claim.to_dict()
    if as_json:
        _print_json(record)
    else:
        _print_claim(claim, record)
    raise typer.Exit(0 if claim.verified else 1)


def _suspect(
    model: Path | None,
    endpoint: str | None,
    protocol: str | None,
    arch: str | None,
    adapter: str | None,
    accept_partial: bool,
    settings: dict[str, Any],
) -> tuple[Any, Any, Any]:
    """The suspect of ``arena verify``: (the loaded model or None, its name, protocol).
    A file is loaded by the verification itself; an endpoint is asked what it takes."""
    from arena.ownership import modelfile

    if (model is None) == (endpoint is None):
        raise ArenaError("name the suspect: --model FILE or --endpoint URL (one of them)")
    given = {key: value for key, value in settings.items() if value is not None}
    if endpoint is None:
        if given or adapter is not None or accept_partial:
            option = "adapter" if adapter is not None else next(iter(given), "accept_partial")
            option = {"max_batch": "batch"}.get(option, option).replace("_", "-")
            raise ArenaError(f"--{option} is an option of --endpoint, not of --model")
        return None, model, modelfile.suspect_protocol(model, protocol)
    if arch is not None:
        raise ArenaError("--arch names the architecture of a model file, not of an --endpoint")
    from arena.ownership.remote import EndpointLimits, RemoteModel, load_adapter

    limits = EndpointLimits(**given, accept_partial=accept_partial)
    chosen = get_protocol(protocol or "mnist5k")
    suspect = RemoteModel(endpoint, chosen, limits, load_adapter(adapter))
    return suspect, suspect.url, chosen


def _verify_public(
    model: Path,
    vk: Path,
    mk: Path | None,
    proof: Path | None,
    chosen: Any,
    book: Any,
    calibrations: Any,
    cache_dir: Path | None,
    arch: str | None,
    receipts: list[Any],
    subset: int | None,
    suspect: Any = None,
) -> Any:
    """``arena verify --public``: check the published proof, or make one from mk.

    A proof made here from mk spends a subset only after every check has passed (the
    null, the model, the reference models, the ledger): ownership.verify_public.
    """
    from arena.ownership import vendor as ownership
    from arena.util.jsonio import read_json

    published = None
    if proof is not None and mk is not None:
        raise ArenaError(
            "--proof and --mk both given: check the published proof (drop --mk), or make "
            "a new one from the marking key (drop --proof)"
        )
    if proof is not None:
        published = read_json(proof)
    else:
        mk = mk or vk.with_name("mk.json")
        if not mk.exists():
            raise ArenaError(
                "public verification needs the owner's proof (--proof, made by arena prove) "
                f"or the marking key to make one (--mk); {mk} does not exist"
            )
    claim = ownership.verify_public(
        model,
        vk,
        published,
        chosen,
        book,
        calibrations,
        ArtifactCache(cache_dir),
        arch,
        receipts,
        mk_path=mk if published is None else None,
        subset=subset,
        suspect=suspect,
    )
    if published is None:
        stderr.print(f"proof made from {mk}: {claim.triggers_opened.split(':')[0]} revealed")
    return claim


def _print_claim(claim: Any, record: dict[str, Any]) -> None:
    evidence = record["evidence"]
    verdict = "[green]VERIFIED[/]" if claim.verified else "[red]NOT VERIFIED[/]"
    if claim.label_check is not None:
        stdout.print(f"label check: {claim.label_check.summary()}", highlight=False)
    if claim.service is not None:
        stdout.print(service_line(claim.service), highlight=False)
    stdout.print(
        f"{verdict}: {evidence['successes']} of {evidence['trials']} triggers "
        f"answered with their committed labels (needs {evidence['required_successes']})"
    )
    stdout.print(
        f"null p {evidence['null_p']:.3g}"
        + (f", dispersion {d:.3g}" if (d := evidence.get("null_dispersion")) else "")
        + f" ({record['null_p_source']}); p-value "
        f"{evidence['p_value']:.2e}; alpha {evidence['alpha']:g}",
        highlight=False,
    )
    stdout.print(f"scheme {claim.scheme}; triggers opened: {claim.triggers_opened}")
    registered = record["key_registered_at"]
    registered = f"registered {registered}" if registered else "never registered"
    stdout.print(
        f"ledger: key {registered}; model first seen "
        f"{record['model_first_seen_at']}; key registered before the model was "
        f"first seen: {'yes' if claim.registered_before_seen else 'NO'}"
    )
    stdout.print(_receipt_note(claim.receipted_through, claim.order_receipted), highlight=False)


def service_line(service: Any) -> str:
    """What a prediction API was asked and answered, in one line."""
    if service.decoys:
        decoys = (
            f"decoys answered right {service.decoys_correct} of {service.decoys} "
            f"(chance {service.decoy_null_p:.2g}, p = {service.decoy_p_value:.2g})"
        )
        if not service.answers_are_evidence:
            decoys += ": no better than chance, so its answers are NOT evidence"
    else:
        decoys = "no decoys sent: whether its answers mean anything is unchecked"
    partial = (
        f"; decided on the {service.triggers_answered} of {service.triggers} triggers "
        "it answered (--accept-partial)"
        if service.partial
        else ""
    )
    return (
        f"service {service.endpoint}: {decoys}; {service.sent_this_run} images sent this "
        f"run, {service.from_journal} answered before (journal){partial}"
    )


def _receipt_note(receipted_through: int | None, order_receipted: bool) -> str:
    if receipted_through is None:
        return (
            "no receipt checked: whoever can write the ledger file could have rewritten "
            "this order (arena verify --receipt)"
        )
    fixed = "fix this order" if order_receipted else "do not reach this order's entries"
    return f"receipts fix ledger entries 0-{receipted_through}: they {fixed}"


CalibratedParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--defense-param",
        "-D",
        help="defense parameter name=value: calibrate the scheme so configured",
    ),
]


def _stored_calibration(
    store: Any, protocol: str, defense: str, assignments: list[str] | None
) -> dict[str, Any]:
    """``arena calibrate --stored``: the newest calibration of the scheme as configured."""
    chosen = get_protocol(protocol)
    params = _parse_assignments(assignments, "--defense-param")
    found = store.latest(chosen, registry_for("defense").get(defense).name, params)
    if found is None:
        given = "".join(f" -D {assignment}" for assignment in assignments or ())
        raise ArenaError(
            f"no calibration of {defense!r}{' with' + given if given else ''} on "
            f"{chosen.name!r} is stored; run arena calibrate --protocol {chosen.name} "
            f"--defense {defense}{given}"
        )
    return found


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="model file (.safetensors, state dict, .onnx)")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free one, printed)")] = 8000,
    protocol: Annotated[
        str | None,
        typer.Option(help="protocol [default: the one the model card names, else mnist5k]"),
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="timm model when no model card is beside it")
    ] = None,
    query_filter: Annotated[
        str | None,
        typer.Option(
            "--filter", help="an evasion attack's query filter in front (e.g. evade-detector)"
        ),
    ] = None,
    filter_param: Annotated[
        list[str] | None,
        typer.Option("--filter-param", "-F", help="query filter parameter name=value"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed the filter is fitted with")] = 0,
    max_batch: Annotated[int, typer.Option(help="images a request may hold")] = 64,
) -> None:
    """Serve a model as a prediction API (arena-predict/1: GET /info, POST /predict)."""
    from arena.core.context import check_seed
    from arena.ownership import modelfile
    from arena.ownership.serve import PredictionServer, served_model

    if not 0 <= port <= 65535:
        raise ArenaError(f"--port must be 0-65535, got {port}")
    check_seed(seed)
    chosen = modelfile.suspect_protocol(model, protocol)
    params = _parse_assignments(filter_param, "--filter-param")
    if params and query_filter is None:
        raise ArenaError("--filter-param given without --filter")
    served = served_model(model, chosen, arch, query_filter, params, seed)
    server = PredictionServer((host, port), served, chosen, max_batch)
    behind = f" behind {query_filter}" if query_filter else ""
    stdout.print(
        f"serving {escape(str(model))}{behind} (protocol {chosen.name}, "
        f"{chosen.num_classes} classes) on {server.url} ; Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    sys.stdout.flush()

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (kill, a container stopping) ends it like Ctrl-C

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    flagged = getattr(served, "flagged", None)
    tail = f"; the filter flagged {flagged} of {served.queries}" if flagged is not None else ""
    stderr.print(f"stopped after answering {server.answered} images{tail}", highlight=False)


@app.command("export")
def export_model(
    model: Annotated[Path, typer.Argument(help="model file (.safetensors or a state dict)")],
    out: Annotated[Path, typer.Option(help="ONNX file to write (.onnx; never replaced)")],
    protocol: Annotated[
        str | None,
        typer.Option(help="protocol [default: the one the model card names, else mnist5k]"),
    ] = None,
) -> None:
    """Write a model as an ONNX file (with its model card), as a suspect may be found."""
    from arena.ownership import modelfile

    chosen = modelfile.suspect_protocol(model, protocol)
    modelfile.export_onnx(model, out, chosen)
    stdout.print(f"wrote {escape(str(out))} and its model card", highlight=False)


@app.command()
def calibrate(
    protocol: Annotated[str, typer.Option(help="protocol to calibrate")] = "mnist5k",
    defense: Annotated[str, typer.Option(help="scheme whose keys are sampled")] = "backdoor-wm",
    models: Annotated[int, typer.Option(help="clean reference models the null is fitted to")] = 20,
    foreign: Annotated[
        int, typer.Option(help="clean models of other architectures, for false claims")
    ] = 12,
    keys: Annotated[int, typer.Option(help="fresh keys per reference model for the null")] = 50,
    claim_keys: Annotated[
        int | None,
        typer.Option(
            help="fresh keys per clean model for false claims [default: 3,000 foreign pairs "
            "for backdoor-wm, 1,000 for other schemes]"
        ),
    ] = None,
    reference: Annotated[
        list[str] | None,
        typer.Option(
            help="reference model, 'arch' or 'arch@recipe', repeatable [default: the protocol's]"
        ),
    ] = None,
    foreign_model: Annotated[
        list[str] | None,
        typer.Option(
            help="foreign model, 'arch' or 'arch@recipe', repeatable [default: the protocol's]"
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the JSON record on stdout")
    ] = False,
    stored: Annotated[
        bool,
        typer.Option(
            "--stored", help="print the newest stored calibration's report; calibrate nothing"
        ),
    ] = False,
    db: DbOption = None,
    cache_dir: CacheOption = None,
    defense_param: CalibratedParamOption = None,
) -> None:
    """Fit the scheme's null (if its labels are not uniform) and measure false claims on
    clean models of architectures the reference set does not contain."""
    from arena.eval.calibration import calibrate as run_calibration
    from arena.report.calibration import to_markdown
    from arena.storage.calibrations import CalibrationStore

    params = _parse_assignments(defense_param, "--defense-param")
    registry_for("defense").get(defense)(params)  # bad parameters: refused before anything
    if stored:
        record = _stored_calibration(CalibrationStore(db), protocol, defense, defense_param)
    else:
        record = run_calibration(
            get_protocol(protocol),
            defense,
            models=models,
            foreign=foreign,
            keys=keys,
            claim_keys=claim_keys,
            references=tuple(reference or ()),
            foreign_models=tuple(foreign_model or ()),
            db=db,
            cache=ArtifactCache(cache_dir),
            progress=RichReporter(stderr),
            params=params,
        )
    if as_json:
        _print_json(record)
        return
    sys.stdout.write(to_markdown(record) + "\n")


ledger_app = typer.Typer(
    help="The ownership ledger: anchor its head, check receipts.", no_args_is_help=True
)


app.add_typer(ledger_app, name="ledger")


@ledger_app.command("head")
def ledger_head(
    out: Annotated[Path, typer.Option(help="receipt of the newest entry, to keep or publish")],
    ledger: LedgerOption = None,
) -> None:
    """Write a receipt for the newest entry: it fixes every entry so far."""
    from arena.ownership.ledger import Ledger, save_receipt
    from arena.util.files import check_new_file

    check_new_file(out)  # an older receipt is evidence: never overwritten
    head = Ledger(ledger).head()
    save_receipt(head, out)
    stdout.print(f"wrote {out}: ledger entry {head.head_position}, head {head.head}")


@ledger_app.command("check")
def ledger_check(
    receipts: Annotated[list[Path], typer.Argument(help="receipts to check")],
    ledger: LedgerOption = None,
) -> None:
    """Check that the ledger still holds every entry the receipts fix: exit 0, else 2."""
    from arena.ownership.ledger import Ledger, load_receipt

    book = Ledger(ledger)
    through = book.check_receipts([load_receipt(path) for path in receipts])
    stdout.print(f"ledger {book.path} holds entries 0-{through} as the receipts record them")


results_app = typer.Typer(
    help="The stored results as a file: publish them beside a leaderboard, resume from them.",
    no_args_is_help=True,
)


app.add_typer(results_app, name="results")


@results_app.command("export")
def results_export(
    out: Annotated[Path, typer.Option(help="JSON Lines file to write (replaced if there)")],
    protocol: Annotated[str, typer.Option(help="evaluation protocol")] = "mnist5k",
    db: DbOption = None,
) -> None:
    """Write every match and calibration of the protocol's current version to a file."""
    from arena.storage.exchange import export_results

    done = export_results(protocol, out, db)
    stdout.print(
        f"wrote {out}: {done.matches:,} matches and {done.calibrations} calibrations of {protocol}",
        highlight=False,
    )


@results_app.command("import")
def results_import(
    source: Annotated[Path, typer.Argument(help="a file `arena results export` wrote")],
    db: DbOption = None,
) -> None:
    """Add a file's matches and calibrations to the database; stored ones are kept."""
    from arena.storage.exchange import import_results

    done = import_results(source, db)
    line = f"imported {done.matches:,} matches and {done.calibrations} calibrations from {source}"
    if done.present:
        line += f"; {done.present:,} matches were stored already and stay as they are"
        if done.differing:
            line += f" ({done.differing:,} of them differ from the file's)"
    stdout.print(line, highlight=False)


@app.command()
def reproduce(
    table: Annotated[str, typer.Argument(help="table1 or table2 of the seed paper")],
    protocol: Annotated[
        str, typer.Option(help="protocol to play it on (cifar10-fixture: the test fixture)")
    ] = "cifar10",
    seed: Annotated[
        list[int] | None, typer.Option(help="match seed, repeatable [default: 0, 1, 2]")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="also write the Markdown table to this file")
    ] = None,
    db: DbOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Play a table of the seed paper (Adi et al. 2018) again: its matches over the seeds,
    then a Markdown table of the paper's numbers and ours with 95% intervals."""
    from arena.eval.paper import get_table
    from arena.eval.paper import reproduce as play_table
    from arena.report.paper import paper_markdown

    get_table(table)
    get_protocol(protocol)
    if out is not None and out.is_dir():
        raise ArenaError(f"--out {out} is a folder; give the Markdown file's path")

    def done(record: MatchRecord) -> None:
        stderr.print(
            f"{record.defense} vs {record.attack}, seed {record.seed}: done "
            f"({record.seconds.get('total', 0.0):.1f}s)",
            highlight=False,
        )

    result = play_table(
        table,
        protocol,
        seed if seed else [0, 1, 2],
        store=ResultStore(db),
        cache=ArtifactCache(cache_dir),
        progress=RichReporter(stderr),
        on_match=done,
    )
    text = paper_markdown(result)
    if out is not None:
        make_folder(out.parent, "the folder of --out")
        staged = out.with_name(f".{out.name}.{os.getpid()}")
        staged.write_text(text)
        os.replace(staged, out)
        stderr.print(f"wrote {out}", highlight=False)
    sys.stdout.write(text)


data_app = typer.Typer(
    help="Data sets read from the data folder ($ARENA_DATA).", no_args_is_help=True
)


app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="cifar10 or stl10")],
    data_dir: Annotated[
        Path | None,
        typer.Option(help="the data folder [default: $ARENA_DATA, else $ARENA_HOME/data]"),
    ] = None,
) -> None:
    """Download a data set through torchvision (needs a network), or check the files already
    there against the official checksums. Nothing else in the arena downloads."""
    from arena.core.data import fetch

    folder = fetch(name, data_dir)
    stdout.print(f"{name}: {folder} holds the official files", highlight=False)


def _print_json(record: dict[str, Any]) -> None:
    """One strict JSON line on stdout: a NaN or infinity is refused, never printed as ``NaN``."""
    try:
        text = json.dumps(record, sort_keys=True, allow_nan=False)
    except ValueError as error:
        raise ArenaError(f"the record holds a number JSON cannot hold ({error})") from None
    sys.stdout.write(text + "\n")


def _warn_if_exposed(key: Path | None) -> None:
    """Warn, as ssh does for a private key, when others can read the marking key."""
    try:
        mode = key.stat().st_mode if key is not None else 0
    except (OSError, ValueError):
        return  # a missing or unreadable key is the command's own error to report
    if stat.S_ISREG(mode) and mode & 0o077:
        stderr.print(
            f"[yellow]warning[/]: the marking key {escape(str(key))} can be read by others "
            f"(mode {stat.S_IMODE(mode):04o}); it is a secret: chmod 600 {escape(str(key))}",
            highlight=False,
            soft_wrap=True,
        )


class _UntilClosed:
    """A standard stream that, once its reader is gone (``arena verify ... | true``),
    sends the rest to the null device instead of raising: the command runs to its end
    and exits with its own status (a verdict), not with a broken pipe's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_null_device()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_null_device()

    def _to_null_device(self) -> None:
        # Onto the descriptor itself, so the interpreter's last flush has nowhere to fail.
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())
        finally:
            os.close(null)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


INTERRUPTED = "interrupted; finished artifacts are kept in the cache, re-run to resume"


def main() -> None:
    """Console entry point: exit 0 done (or verified), 1 failed (or not verified), 2 with
    one line on stderr for any user error, 130 interrupted."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (_UntilClosed(stream) if stream else stream for stream in streams)
    try:
        status = _run()
        if sys.stdout:
            sys.stdout.flush()
    finally:
        sys.stdout, sys.stderr = streams
    sys.exit(status)


def console() -> None:
    """The ``arena`` executable: ``main`` in a process that ends with the command.

    What is still alive then lives until the process ends, so it is moved out of the
    garbage collector's sight (``gc.freeze``) before the interpreter exits: its final
    collections would otherwise walk every object torch, timm and sympy made, 0.7 s of
    each command's time (measured on ``import torch, timm``: 0.91 s from the last line
    to the exit, 0.18 s frozen). Exit handlers still run. Not in ``main``, which tests
    call in their own process.
    """
    try:
        main()
    finally:
        gc.freeze()


def _run() -> int:
    """Run the command line; the exit status, with what went wrong printed on stderr."""
    try:
        # A fixed thread count and deterministic algorithms (ARENA_THREADS overrides the
        # count): reruns on the same setup train the same weights to the bit.
        apply_deterministic_defaults()
        empty = _empty_value(sys.argv[1:])
        if empty:
            return _refuse(empty)
        status = app(prog_name="arena", standalone_mode=False)  # a typer.Exit's code
    except ArenaError as error:
        return _refuse(str(error))
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as error:  # a path the system refused: too long, not permitted, ...
        return _refuse(_os_error_line(error))
    except Exception as error:
        if _is_a(error, "Abort"):  # click's form of Ctrl-C
            return _interrupted()
        if not _is_a(error, "ClickException"):
            raise
        return _refuse(_usage_line(error))
    if status == 130:  # typer answers Ctrl-C with exit code 130 and nothing said
        return _interrupted()
    return status if isinstance(status, int) else 0


def _is_a(error: BaseException, class_name: str) -> bool:
    # typer 0.2x raises its own copies of click's exceptions, older typer click's:
    # recognised by name, whichever module defines them.
    return any(cls.__name__ == class_name for cls in type(error).__mro__)


def _empty_value(args: list[str]) -> str | None:
    """What is wrong when an option or argument is the empty string (``--out "$UNSET"``):
    no value of arena's means anything empty, and an empty path is the current folder."""
    for index, token in enumerate(args):
        option, equals, value = token.partition("=")
        if token.startswith("--") and equals and not value:
            return f"{option} was given an empty value; give one or leave the option out"
        if token == "":
            before = args[index - 1] if index else ""
            if before.startswith("-") and before != "--" and "=" not in before:
                return f"{before} was given an empty value; give one or leave the option out"
            return "an argument is empty; give a value or leave it out"
    return None


def _refuse(message: str) -> int:
    line = " ".join(_shorten(word) for word in message.split())
    stderr.print(f"[bold red]error[/]: {escape(line)}", highlight=False, soft_wrap=True)
    return 2


def _shorten(word: str) -> str:
    # A 5,000-character path would bury the message; both of its ends say which it is.
    return f"{word[:80]}...{word[-80:]}" if len(word) > 200 else word


def _interrupted() -> int:
    stderr.print(INTERRUPTED, highlight=False, soft_wrap=True)
    return 130


def _usage_line(error: Any) -> str:
    """``no such option: --sed; did you mean --seed? (arena run --help)``"""
    possibilities = getattr(error, "possibilities", None)
    if _is_a(error, "NoArgsIsHelpError"):  # a bare group; its message is the help
        message = "missing command"
    elif possibilities:
        message = f"{error.message}; did you mean {' or '.join(sorted(possibilities))}?"
    else:
        message = error.format_message()
    message = message.strip().rstrip(".")
    message = message[:1].lower() + message[1:]
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else _command_path(sys.argv[1:])
    return f"{message} ({command} --help)"


def _command_path(args: list[str]) -> str:
    """``arena ledger head`` from the words that name a command, for errors without one."""
    command, path = typer.main.get_command(app), ["arena"]
    for word in args:
        commands = getattr(command, "commands", None) or {}
        if word not in commands:
            break
        command = commands[word]
        path.append(word)
    return " ".join(path)


def _os_error_line(error: OSError) -> str:
    """``permission denied: /srv/arena``: the reason, then the path."""
    from arena.util.files import os_error_reason

    return os_error_reason(error)


if __name__ == "__main__":
    main()
