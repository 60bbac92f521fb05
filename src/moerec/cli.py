"""The ``moerec`` command line: the only module that wires the layers together."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from moerec import MoerecError
from moerec.config import (
    VARIANTS,
    ExperimentConfig,
    ServiceSettings,
    load_config,
    parse_overrides,
    resolve_variant,
    routing_changes,
)

app = typer.Typer(
    help="Train, evaluate and use a Mixture-of-Experts sequential recommender.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect or generate interaction data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
db_app = typer.Typer(help="Create or update the service's database; load data into it.",
                     no_args_is_help=True)  # fmt: skip
app.add_typer(db_app, name="db")
token_app = typer.Typer(help="Mint JWT bearer tokens for development and tests.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(token_app, name="token")
registry_app = typer.Typer(help="List a model's versions, promote one to serve, roll back.",
                           no_args_is_help=True)  # fmt: skip
app.add_typer(registry_app, name="registry")

out = Console()
err = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep and logs

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        help="Interactions: MovieLens u.data / ratings.dat / ratings.csv, an S3-Rec or SASRec "
        ".txt file, a CSV/Parquet file with user,item[,timestamp], or a folder holding one.",
    ),
]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="Reader: auto, movielens-100k, movielens-1m, movielens-latest, sequences, pairs, "
        "csv, parquet.",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Experiment config YAML (see configs/)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value, e.g. --set train.epochs=5 (repeatable)."),
]
ModelOpt = Annotated[
    Path,
    typer.Option(
        "--model",
        "-m",
        help="An artefact version folder, or a model folder (its promoted version, else the "
        "newest).",
    ),
]
SourceOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Interactions: MovieLens u.data / ratings.dat / ratings.csv, an S3-Rec or SASRec "
        ".txt file, a CSV/Parquet file with user,item[,timestamp], or a folder holding one. "
        "Or use --from-db.",
    ),
]
FromDbOpt = Annotated[
    bool,
    typer.Option(
        "--from-db",
        help="Read the interactions from the service's event table (see --database-url) "
        "instead of --data; dismissals are left out, as the service leaves them out of "
        "histories.",
    ),
]
ChunkRowsOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk-rows",
        min=0,
        help="Read a CSV/Parquet --data file this many rows at a time, in bounded memory (0: "
        "whole; default: stream files of 256 MiB or more). Sets data.chunk_rows.",
    ),
]
ItemFeaturesOpt = Annotated[
    Path | None,
    typer.Option(
        "--item-features",
        help="Item attributes to train with: an item2attributes .json file (S3-Rec), "
        "MovieLens u.item (genres) or a .csv of item_id,attribute rows, with the item ids of "
        "the interactions. Sets data.item_features and, when the config leaves it at 'none', "
        "model.item_feature_mode=sum.",
    ),
]
MIN_TRAINING_EVENTS = 100


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can fix become one clear line and exit code 2, never a traceback."""
    try:
        yield
    except MoerecError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as exc:  # missing files, permissions, a file where a folder should be, …
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"[bold red]error:[/] {exc.strerror or exc}{where}", highlight=False)
        raise typer.Exit(2) from None


def _chunk_rows_override(chunk_rows: int | None) -> dict[str, Any]:
    """``--chunk-rows`` as a config override (the reader takes it from ``data.chunk_rows``)."""
    return {} if chunk_rows is None else {"data.chunk_rows": chunk_rows}


def _with_item_features(cfg: ExperimentConfig, item_features: Path | None) -> ExperimentConfig:
    """``--item-features``: the file in ``data.item_features``, and the model set to use it
    unless the config already chose how."""
    if item_features is None:
        return cfg
    model = cfg.model
    if model.item_feature_mode == "none":
        model = model.model_copy(update={"item_feature_mode": "sum"})
    data = cfg.data.model_copy(update={"item_features": item_features})
    return cfg.model_copy(update={"data": data, "model": model})


def _load_data(data: Path, fmt: str, config: ExperimentConfig) -> Any:
    from moerec.data.dataset import load_dataset

    return load_dataset(data, config.data, format=None if fmt == "auto" else fmt)


def _load_source(
    data: Path | None,
    fmt: str,
    from_db: bool,
    database_url: str | None,
    config: ExperimentConfig,
    min_events: int = 0,
    progress: bool = False,
) -> Any:
    """The data set from ``--data FILE`` or, with ``--from-db``, from the event table; both
    go through the same filtering, encoding and split (``dataset_from_interactions``)."""
    if from_db and data is not None:
        raise MoerecError("give either --data FILE or --from-db (the service's events), not both")
    if data is not None:
        if database_url is not None:
            raise MoerecError("--database-url goes with --from-db; with --data the file is read")
        return _load_data(data, fmt, config)
    if not from_db:
        raise MoerecError(
            "no interactions given: add --data FILE, or --from-db to read the service's event "
            "table (--database-url, default $MOEREC_DATABASE_URL)"
        )
    if fmt != "auto":
        raise MoerecError("--format applies to --data files, not to --from-db")
    return _load_events(_database_url(database_url), config, min_events, progress)


def _database_url(option: str | None) -> str:
    """--database-url, else $MOEREC_DATABASE_URL, else the embedded default.

    Reading events needs no signing key: the JWT settings are not checked here.
    """
    from moerec.config import load_service_settings

    return load_service_settings(database_url=option, mode="development").database_url


def _load_events(url: str, config: ExperimentConfig, min_events: int, progress: bool) -> Any:
    import asyncio

    from moerec.data.dataset import dataset_from_interactions
    from moerec.storage import Storage
    from moerec.storage.export import event_interactions

    async def read() -> Any:
        async with Storage(url) as storage:
            _require_database_file(storage)
            await storage.ensure_migrated()
            return await event_interactions(storage, progress=progress)

    interactions = asyncio.run(read())
    if len(interactions) < min_events:
        raise MoerecError(
            f"{interactions.source} holds {len(interactions):,} usable events (dismissals left "
            f"out); training needs at least {min_events:,} (--min-events). Let the service "
            "collect more, or load a data set with `moerec db import`"
        )
    return dataset_from_interactions(interactions, config.data)


def _dismissed(url: str) -> dict[str, frozenset[str]]:
    """Each user's dismissed items in the service's event table."""
    import asyncio

    from moerec.storage import Storage
    from moerec.storage.export import dismissed_items

    async def read() -> dict[str, frozenset[str]]:
        async with Storage(url) as storage:
            return await dismissed_items(storage)

    return asyncio.run(read())


def _require_database_file(storage: Any) -> None:
    """An SQLite path that does not exist is a typo, not an empty database to create."""
    database = storage.url.database or ""
    plain_file = database not in ("", ":memory:") and not database.startswith("file:")
    if storage.is_sqlite and plain_file and not Path(database).is_file():
        raise MoerecError(
            f"{database}: no such database file; pass the service's database with "
            "--database-url (or set MOEREC_DATABASE_URL)"
        )


# --------------------------------------------------------------------------- data


@data_app.command("stats")
def data_stats(
    data: DataOpt,
    fmt: FormatOpt = "auto",
    config: ConfigOpt = None,
    chunk_rows: ChunkRowsOpt = None,
) -> None:
    """Users, items, interactions, density and sequence lengths of a data set."""
    with user_errors():
        dataset = _load_data(data, fmt, load_config(config, _chunk_rows_override(chunk_rows)))
        table = Table(title=str(data), show_header=False)
        for key, value in dataset.stats().items():
            table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else f"{value:,}")
        out.print(table)


@data_app.command("synth")
def data_synth(
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV file to write.")],
    users: Annotated[int, typer.Option(min=1, help="Number of users.")] = 2000,
    items: Annotated[int, typer.Option(min=10, help="Number of items.")] = 1000,
    clusters: Annotated[int, typer.Option(min=1, help="Taste clusters.")] = 10,
    mean_length: Annotated[int, typer.Option(min=5, help="Mean sequence length.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate a seeded synthetic data set with taste clusters, a long tail and sequences."""
    from moerec.data.synthetic import generate_interactions, write_csv

    with user_errors():
        interactions = generate_interactions(users, items, clusters, mean_length, seed)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_csv(interactions, output)
        out.print(f"wrote {len(interactions):,} interactions to {output}")


# --------------------------------------------------------------------------- train / evaluate


@app.command()
def train(
    data: SourceOpt = None,
    fmt: FormatOpt = "auto",
    from_db: FromDbOpt = False,
    database_url: DatabaseOpt = None,
    min_events: Annotated[
        int, typer.Option("--min-events", min=1, help="With --from-db: fewest events to train on.")
    ] = MIN_TRAINING_EVENTS,
    config: ConfigOpt = None,
    variant: Annotated[
        str | None,
        typer.Option(help=f"Model variant: {', '.join(VARIANTS)} (default: the config's, moe)."),
    ] = None,
    overrides: SetOpt = None,
    chunk_rows: ChunkRowsOpt = None,
    item_features: ItemFeaturesOpt = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Where to write the log, plots, checkpoint.")
    ] = None,
    registry: Annotated[Path, typer.Option("--registry", help="Model registry folder.")] = Path(
        "models"
    ),
    name: Annotated[str | None, typer.Option(help="Model name in the registry.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train a model, evaluate it (full ranking) and save it as a new registry version.

    The interactions come from a file (--data) or from the service's own event table
    (--from-db), which closes the feedback loop: promote the new version with
    `moerec registry promote`.

    Data-parallel on several processes or machines: `torchrun --nproc_per_node N -m moerec
    train …` (train.batch_size is then the global batch; rank 0 logs and saves the model).
    """
    from moerec.registry import save_artefact
    from moerec.training import train as run_training
    from moerec.training.distributed import distributed_session

    with user_errors(), distributed_session() as ctx:
        cfg = _experiment(config, overrides, variant, _chunk_rows_override(chunk_rows))
        cfg = _with_item_features(cfg, item_features)
        dataset = _load_source(
            data, fmt, from_db, database_url, cfg, min_events=min_events,
            progress=not quiet and ctx.is_main,
        )  # fmt: skip
        model_name = name or cfg.name
        run_dir = run_dir or Path("runs") / f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if ctx.is_main:
            err.print(f"training {cfg.variant} on {dataset.source}: {_brief(dataset.stats())}")
        try:
            result = run_training(
                dataset,
                cfg,
                run_dir=run_dir,
                progress=not quiet,
                resume=resume,
                on_epoch=None if quiet else _print_epoch,
                distributed=ctx,
            )
        except KeyboardInterrupt:
            err.print(f"interrupted; continue with: moerec train … --run-dir {run_dir} --resume")
            raise typer.Exit(130) from None
        if not ctx.is_main:  # rank 0 saves the model and reports
            return
        path = save_artefact(
            registry,
            model_name,
            result.model,
            result.config,
            dataset.vocab,
            result.metrics(),
            dataset.fingerprint,
        )
        _print_metrics(result.valid.metrics, result.test.metrics)
        out.print(
            f"best epoch {result.best_epoch} of {result.epochs_run}; "
            f"{result.train_seconds:.1f}s training; run log in {run_dir}"
        )
        out.print(f"saved model {path}")


def _experiment(
    config: Path | None,
    overrides: list[str] | None,
    variant: str | None,
    options: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """The config file with ``--set`` overrides, then overrides from dedicated options."""
    if variant is not None and variant not in VARIANTS:
        raise MoerecError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    cfg = load_config(config, {**parse_overrides(overrides), **(options or {})})
    return resolve_variant(cfg, variant or cfg.variant)


def _brief(stats: dict[str, Any]) -> str:
    return (
        f"{stats['users']:,} users, {stats['items']:,} items, "
        f"{stats['interactions']:,} interactions"
    )


def _print_epoch(record: dict[str, Any]) -> None:
    valid = record.get("valid")
    line = f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}"
    if valid:
        line += f"  valid ndcg@10 {valid['ndcg@10']:.4f}  hr@10 {valid['hr@10']:.4f}"
    err.print(line, highlight=False)


@app.command()
def evaluate(
    model: ModelOpt,
    data: DataOpt,
    fmt: FormatOpt = "auto",
    split: Annotated[str, typer.Option(help="valid or test.")] = "test",
    routing: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Route the trained MoE differently, without retraining (repeatable): "
            "model.moe_top_k, model.moe_router (topk/topp), model.moe_top_p, model.moe_min_k, "
            "model.moe_max_k or model.moe_capacity_factor_eval, e.g. --set model.moe_top_k=3.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Full-ranking HR/NDCG/MRR@5/10/20, coverage, expert load and cost of a saved model.

    With --set, the same weights route each token to a different number of experts: the
    quality/cost trade-off of top-k or top-p at inference, measured without training again
    (judge it on --split valid).
    """
    from moerec.evaluation import evaluate as run_evaluation
    from moerec.evaluation.cost import measure_cost
    from moerec.registry import load_artefact

    with user_errors():
        if split not in ("valid", "test"):
            raise MoerecError(f"--split must be valid or test, got {split!r}")
        changes = routing_changes(parse_overrides(routing))
        artefact = load_artefact(model)
        model_config = artefact.config.model
        if changes:
            try:
                model_config = artefact.model.reroute(changes)
            except ValueError as exc:
                raise MoerecError(f"--set: {exc}") from None
        dataset = _matching_data(data, fmt, artefact)
        eval_set = dataset.split.valid if split == "valid" else dataset.split.test
        result = run_evaluation(artefact.model, eval_set, artefact.config.eval)
        cost = measure_cost(artefact.model).to_dict()
        report = {
            "model": str(artefact.path),
            "version": artefact.version,
            "variant": artefact.config.variant,
            "feed_forward": model_config.feed_forward,
            "routing_changes": {f"model.{key}": value for key, value in changes.items()},
            "split": split,
            **result.to_dict(),
            "cost": cost,
        }
        if as_json:
            out.print_json(json.dumps(report))
            return
        title = f"{artefact.path} on {split} ({result.num_users:,} users)"
        if changes:
            title += f", routed {model_config.feed_forward}"
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in result.metrics.items():
            table.add_row(key, f"{value:.4f}")
        for key, value in cost.items():
            table.add_row(key, f"{value:,.3g}" if isinstance(value, float) else f"{value:,}")
        out.print(table)


def _matching_data(data: Path, fmt: str, artefact: Any) -> Any:
    dataset = artefact.load_data(data, None if fmt == "auto" else fmt)
    if dataset.fingerprint != artefact.manifest.get("data_fingerprint"):
        err.print(
            f"note: {data} is not the data {artefact.path} was trained on (same catalogue, "
            "other interactions); these metrics are not comparable with its manifest's",
            highlight=False,
        )
    return dataset


# --------------------------------------------------------------------------- recommend


@app.command()
def recommend(
    model: ModelOpt,
    data: SourceOpt = None,
    fmt: FormatOpt = "auto",
    from_db: FromDbOpt = False,
    database_url: DatabaseOpt = None,
    user: Annotated[
        list[str] | None, typer.Option("--user", "-u", help="User id (repeatable).")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many items.")] = 10,
    all_users: Annotated[
        bool, typer.Option("--all-users", help="Every user, written to --output.")
    ] = False,
    split: Annotated[
        str, typer.Option(help="History to use: full (all items), valid or test (leave-one-out).")
    ] = "full",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File for --all-users: .csv or .parquet (user,rank,item,score rows) or .jsonl "
            "(one user per line).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Top-K items for some users (printed) or for every user (written to a file as it goes).

    Histories come from a file (--data) or from the service's event table (--from-db).
    """
    from moerec.data.titles import read_item_titles
    from moerec.inference import Predictor
    from moerec.inference.export import export_format
    from moerec.inference.predictor import Query

    with user_errors():
        if split not in ("full", "valid", "test"):
            raise MoerecError(f"--split must be full, valid or test, got {split!r}")
        if all_users == bool(user):
            raise MoerecError("give either --user ID (one or more) or --all-users --output FILE")
        if all_users:
            if output is None:
                raise MoerecError(
                    "--all-users writes a file: add --output FILE (.csv, .parquet or .jsonl)"
                )
            export_format(output)  # a wrong suffix fails before any work
        predictor = Predictor.from_path(model)
        dataset = _load_source(
            data, fmt, from_db, database_url, predictor.artefact.config, progress=not quiet
        )
        histories = _histories(dataset, split)
        timing = _timing(dataset, split) if predictor.time_context else {}
        # The service never shows a user an item they dismissed; neither do its exports.
        dismissed = _dismissed(_database_url(database_url)) if from_db else {}
        banned = {
            raw_user: predictor.encode(sorted(items))[0] for raw_user, items in dismissed.items()
        }
        if all_users and output is not None:
            report = _export_all(
                predictor, dataset, histories, timing, k, output, banned, progress=not quiet
            )
            skipped = (
                f" ({report.skipped:,} skipped: no item the model knows)" if report.skipped else ""
            )
            out.print(
                f"wrote {report.rows:,} rows for {report.users:,} users to {output}{skipped}",
                highlight=False,
                soft_wrap=True,
            )
            return
        titles = read_item_titles(Path(data)) if data is not None else {}
        source = data if data is not None else dataset.source
        results = []
        for raw_user in user or []:
            index = dataset.vocab.user_index(raw_user)
            if index is None or index not in histories:
                raise MoerecError(f"user {raw_user!r} has no {split} history in {source}")
            raw_items = dataset.vocab.decode_items(histories[index].tolist())
            encoded, _unknown = predictor.encode(raw_items)
            times, now = _known_times(predictor, raw_items, timing.get(index))
            query = Query(encoded, k=k, exclude=banned.get(raw_user), times=times, now=now)
            rec = predictor.run([query])[0]
            results.append((raw_user, raw_items, rec))
        if as_json:
            out.print_json(
                json.dumps(
                    [
                        {
                            "user": u,
                            "items": r.items,
                            "scores": r.scores,
                            "experts": [e.__dict__ for e in r.experts],
                        }
                        for u, _, r in results
                    ]
                )
            )
            return
        for raw_user, raw_items, rec in results:
            print_recommendation(raw_user, raw_items, rec, titles)


def _histories(dataset: Any, split: str) -> dict[int, Any]:
    """User index → encoded history for the chosen split."""
    if split == "full":
        seqs = dataset.sequences
        return {u: seqs[u] for u in range(len(seqs)) if len(seqs[u])}
    eval_set = dataset.split.valid if split == "valid" else dataset.split.test
    return {int(u): eval_set.histories[i] for i, u in enumerate(eval_set.users)}


def _timing(dataset: Any, split: str) -> dict[int, tuple[Any, float]]:
    """User index → (history times, request time) for a model with time context.

    The request time is the target's for valid and test, as evaluation uses it, and now for
    full histories (recommendations for a visit today). Empty when the data has no times.
    """
    if split == "full":
        seqs = dataset.sequences
        if seqs.times is None:
            return {}
        now, offsets = time.time(), seqs.offsets
        return {u: (seqs.times[offsets[u] : offsets[u + 1]], now) for u in range(len(seqs))}
    eval_set = dataset.split.valid if split == "valid" else dataset.split.test
    times, offsets = eval_set.histories.times, eval_set.histories.offsets
    if times is None or eval_set.target_times is None:
        return {}
    return {
        int(u): (times[offsets[i] : offsets[i + 1]], float(eval_set.target_times[i]))
        for i, u in enumerate(eval_set.users)
    }


def _known_times(
    predictor: Any, raw_items: list[str], timing: tuple[Any, float] | None
) -> tuple[Any, float | None]:
    """The times of the history items the model knows (those ``encode`` keeps), and the
    request time; (None, None) without timing."""
    if timing is None:
        return None, None
    times, now = timing
    return times[predictor.known_positions(raw_items)], now


def _export_all(
    predictor: Any,
    dataset: Any,
    histories: dict[int, Any],
    timing: dict[int, tuple[Any, float]],
    k: int,
    output: Path,
    banned: dict[str, Any],
    progress: bool = False,
) -> Any:
    """Batch recommendations for offline use; histories are re-encoded with the model's vocab
    when the data's catalogue differs (new items are dropped, a user with none left skipped).
    ``banned``: raw user id → encoded items never to recommend them."""
    from moerec.inference.export import export_recommendations

    same_vocab = dataset.vocab.item_ids == predictor.vocab.item_ids
    user_ids = dataset.vocab.user_ids

    def pairs() -> Iterator[tuple[str, Any, Any, float | None]]:
        for u, history in histories.items():
            times, now = timing.get(u, (None, None))
            if not same_vocab:
                raw_items = dataset.vocab.decode_items(history.tolist())
                history = predictor.encode(raw_items)[0]
                times, now = _known_times(predictor, raw_items, timing.get(u))
            yield user_ids[u], history, times, now

    return export_recommendations(
        predictor,
        pairs(),
        output,
        k=k,
        total=len(histories),
        progress=progress,
        exclusions=banned,
    )


def print_recommendation(user: str, history: list[str], rec: Any, titles: dict[str, str]) -> None:
    def label(item: str) -> str:
        return f"{item} {titles[item]}" if item in titles else item

    recent = ", ".join(label(i) for i in history[-3:])
    out.print(f"[bold]user {user}[/] — recently: {recent}", highlight=False)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    for rank, (item, score) in enumerate(zip(rec.items, rec.scores, strict=True), 1):
        table.add_row(str(rank), label(item), f"{score:.3f}")
    out.print(table)
    if rec.experts:
        routes = "; ".join(
            f"layer {e.layer}: "
            + ", ".join(f"E{x} ({w:.2f})" for x, w in zip(e.experts, e.weights, strict=True))
            for e in rec.experts
        )
        out.print(f"  experts used: {routes}\n", highlight=False)


def _print_metrics(
    valid: dict[str, float], test: dict[str, float], baseline: dict[str, float] | None = None
) -> None:
    table = Table(title="full ranking, history excluded")
    table.add_column("split")
    keys = [k for k in valid if k.split("@")[0] in ("hr", "ndcg", "mrr") and k.endswith("@10")]
    keys += [k for k in valid if k.startswith("coverage")]
    for key in keys:
        table.add_column(key, justify="right")
    rows = [("valid", valid), ("test", test)]
    if baseline is not None:
        rows.append(("test, most popular", baseline))
    for split_name, metrics in rows:
        table.add_row(split_name, *(f"{metrics[key]:.4f}" for key in keys))
    out.print(table)


# --------------------------------------------------------------------------- report


@app.command()
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A training run folder: the --run-dir of `moerec train` (it holds log.jsonl "
            "and plots/), e.g. .moerec-demo/run after `moerec demo`.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="File to write (default: RUN_DIR/report.html or report.md)."
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="html: one self-contained file, plots embedded as base64 PNG; "
            "markdown: links to the run's PNG files.",
        ),
    ] = "html",
) -> None:
    """Render a training run's metrics, expert routing and plots into one HTML or markdown file.

    Reads RUN_DIR/log.jsonl and RUN_DIR/plots/*.png as `moerec train` wrote them; a run that
    stopped early (no plots yet) gets them drawn from its log first. Exit code 2 when RUN_DIR is
    not a run folder.
    """
    from moerec.training.report import FORMATS, write_report

    with user_errors():
        if fmt not in FORMATS:
            raise MoerecError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        written = write_report(run_dir, output, fmt)
        out.print(f"wrote {written}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where to put data, run logs and the model.")
    ] = Path(".moerec-demo"),
    users: Annotated[int, typer.Option(min=50, help="Synthetic users.")] = 3000,
    items: Annotated[int, typer.Option(min=50, help="Synthetic items.")] = 1000,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 20,
    show: Annotated[int, typer.Option(min=1, help="Users to print recommendations for.")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Generate data, train a small MoE model, print top-10 lists with the experts used."""
    from moerec.data.dataset import dataset_from_interactions
    from moerec.data.synthetic import generate_interactions, synthetic_titles, write_csv
    from moerec.evaluation import evaluate_popularity
    from moerec.inference import Predictor
    from moerec.registry import save_artefact
    from moerec.training import train as run_training

    with user_errors():
        started = time.perf_counter()
        interactions = generate_interactions(num_users=users, num_items=items, seed=seed)
        workdir.mkdir(parents=True, exist_ok=True)
        write_csv(interactions, workdir / "interactions.csv")
        cfg = load_config(
            None,
            {
                "name": "demo",
                "model": {
                    "max_len": 50,
                    "hidden_size": 64,
                    "ffn_hidden_size": 64,
                    "dropout": 0.1,
                    "attention_dropout": 0.1,
                },
                "train": {
                    "epochs": epochs,
                    "batch_size": 128,
                    "patience": 5,
                    "seed": seed,
                    "warmup_steps": 20,
                },
            },
        )
        dataset = dataset_from_interactions(interactions, cfg.data)
        out.print(
            f"[bold]1. data[/]  synthetic: {_brief(dataset.stats())}",
            f"→ {workdir / 'interactions.csv'}",
        )
        out.print(
            f"[bold]2. train[/] MoE Transformer, {cfg.model.moe_num_experts} experts, "
            f"top-{cfg.model.moe_top_k}, {epochs} epochs max"
        )
        result = run_training(
            dataset, cfg, run_dir=workdir / "run", progress=True, on_epoch=_print_epoch
        )
        path = save_artefact(
            workdir / "models",
            "demo",
            result.model,
            result.config,
            dataset.vocab,
            result.metrics(),
            dataset.fingerprint,
        )
        out.print("[bold]3. evaluate[/]")
        popularity = evaluate_popularity(
            dataset.split.train, dataset.split.test, dataset.num_items, cfg.eval
        )
        _print_metrics(result.valid.metrics, result.test.metrics, popularity.metrics)
        out.print(f"   plots: {workdir / 'run' / 'plots'}   model: {path}")
        out.print("[bold]4. recommend[/] (full history, seen items excluded)")
        predictor = Predictor.from_path(path)
        titles = synthetic_titles(items, seed=seed)
        for u in range(show):
            history = dataset.sequences[u]
            raw_items = dataset.vocab.decode_items(history.tolist())
            rec = predictor.recommend([history], k=10)[0]
            print_recommendation(dataset.vocab.user_ids[u], raw_items, rec, titles)
        database = _demo_database(workdir, dataset, titles)
        user = dataset.vocab.user_ids[0]
        out.print(f"[bold]5. serve[/] histories and titles loaded into {database}; next:")
        out.print(
            f"   moerec serve --model {path.parent} --database-url {database}\n"
            f"   TOKEN=$(moerec token create --sub {user} --scope recommend)\n"
            f'   curl -H "Authorization: Bearer $TOKEN" '
            f"localhost:8000/v1/users/{user}/recommendations",
            highlight=False,
            soft_wrap=True,
        )
        out.print(f"done in {time.perf_counter() - started:.0f}s")


def _demo_database(workdir: Path, dataset: Any, titles: dict[str, str]) -> str:
    """The demo's users and catalogue in an embedded SQLite database, ready to serve."""
    import asyncio

    from moerec.storage import Storage
    from moerec.storage.importer import import_dataset

    url = f"sqlite+aiosqlite:///{workdir / 'moerec.db'}"

    async def run() -> None:
        async with Storage(url) as storage:
            await storage.upgrade()
            await import_dataset(storage, dataset, titles)

    asyncio.run(run())
    return url


# --------------------------------------------------------------------------- service

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy async URL (default $MOEREC_DATABASE_URL, else sqlite+aiosqlite:///"
        "moerec.db); e.g. postgresql+asyncpg://user@host/db.",
    ),
]


@app.command()
def serve(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Model folder (its promoted version, else the newest; promotions are followed) "
            "or version folder to serve.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    database_url: DatabaseOpt = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="redis://host:6379/0 for a shared cache and rate limits."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn). Settings: MOEREC_* variables."""
    import uvicorn

    from moerec.config import load_service_settings
    from moerec.serving.app import create_app
    from moerec.serving.logs import configure_logging

    with user_errors():
        settings = load_service_settings(
            model_path=model, database_url=database_url, redis_url=redis_url, log_level=log_level
        )
        configure_logging(settings.log_level)
        if settings.mode == "development":
            err.print(
                "[yellow]development mode[/]: tokens are signed with a built-in secret; "
                "set MOEREC_MODE=production and MOEREC_JWT_SECRET for real use",
                highlight=False,
            )
            _announce_playground(settings, host, port)
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=10,
        )


PLAYGROUND_TOKEN_HOURS = 12


def _announce_playground(settings: ServiceSettings, host: str, port: int) -> None:
    """Development mode: where the /ui/ playground is, and a token to sign in with."""
    from moerec.serving.auth import mint_token
    from moerec.serving.routes.ui import UI_PATH, enabled

    if not enabled(settings):
        return
    token = mint_token(
        settings,
        subject="playground",
        scopes=["recommend:any", "events:write"],
        ttl_seconds=PLAYGROUND_TOKEN_HOURS * 3600,
    )
    shown_host = f"[{host}]" if ":" in host else host
    err.print(
        f"playground: http://{shown_host}:{port}{UI_PATH} — sign in with this development "
        f"token (recommend:any events:write, {PLAYGROUND_TOKEN_HOURS} h):\n{token}",
        highlight=False,
        soft_wrap=True,
    )


@token_app.command("create")
def token_create(
    sub: Annotated[str, typer.Option(help="Subject: the user id (or a service name).")],
    scope: Annotated[
        list[str] | None,
        typer.Option(help="recommend, recommend:any, events:write or admin (repeatable)."),
    ] = None,
    ttl: Annotated[int, typer.Option(min=1, help="Lifetime in seconds.")] = 3600,
    client_id: Annotated[
        str | None, typer.Option(help="Client id for per-client rate limits (default: sub).")
    ] = None,
) -> None:
    """Print a signed token (MOEREC_JWT_* settings; development secret by default)."""
    from moerec.config import load_service_settings
    from moerec.serving.auth import mint_token

    with user_errors():
        settings = load_service_settings()
        print(
            mint_token(
                settings,
                subject=sub,
                scopes=scope or ["recommend", "events:write"],
                ttl_seconds=ttl,
                client_id=client_id,
            )
        )


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOpt = None) -> None:
    """Apply the database migrations (creates the tables on a new database)."""
    from moerec.config import load_service_settings
    from moerec.storage.migrate import current_revision, upgrade

    with user_errors():
        url = load_service_settings(database_url=database_url).database_url
        upgrade(url)
        out.print(f"database at revision {current_revision(url)}")


@db_app.command("import")
def db_import(
    data: DataOpt,
    fmt: FormatOpt = "auto",
    titles: Annotated[
        Path | None, typer.Option(help="Item titles (MovieLens u.item/movies.dat/csv).")
    ] = None,
    database_url: DatabaseOpt = None,
    config: ConfigOpt = None,
    chunk_rows: ChunkRowsOpt = None,
) -> None:
    """Load a data set's catalogue and every user's history into the database (idempotent)."""
    import asyncio

    from moerec.config import load_service_settings
    from moerec.data.titles import read_item_titles
    from moerec.storage import Storage
    from moerec.storage.importer import import_dataset
    from moerec.storage.migrate import upgrade

    with user_errors():
        url = load_service_settings(database_url=database_url).database_url
        dataset = _load_data(data, fmt, load_config(config, _chunk_rows_override(chunk_rows)))
        names = read_item_titles(titles) if titles else None
        upgrade(url)

        async def run() -> Any:
            storage = Storage(url)
            try:
                return await import_dataset(storage, dataset, names, progress=True)
            finally:
                await storage.close()

        report = asyncio.run(run())
        out.print(
            f"imported {report.items:,} items, {report.users:,} users, "
            f"{report.events:,} events ({report.skipped:,} already present)"
        )


# --------------------------------------------------------------------------- registry

ModelDirArg = Annotated[
    Path,
    typer.Argument(
        help="A model folder: the one holding v0001, v0002, … (e.g. models/NAME).",
        show_default=False,
    ),
]


@registry_app.command("list")
def registry_list(
    model_dir: ModelDirArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """A model's versions: when each was created, its metrics, and which one is served."""
    from moerec.registry import list_promotions

    with user_errors():
        infos = list_promotions(model_dir)
        if not infos:
            raise MoerecError(f"{model_dir}: no model versions here (expected folders v0001, …)")
        if as_json:
            out.print_json(
                json.dumps(
                    [
                        {
                            "version": i.name,
                            "path": str(i.path),
                            "created_at": i.created_at,
                            "promoted": i.promoted,
                            "served": i.served,
                            "model": i.model,
                            "metrics": i.metrics,
                            "problem": i.problem,
                        }
                        for i in infos
                    ]
                )
            )
            return
        table = Table(title=str(model_dir))
        for column in ("version", "created (UTC)", "model (FFN)"):
            table.add_column(column)
        for column in ("valid ndcg@10", "test ndcg@10", "test hr@10"):
            table.add_column(column, justify="right")
        table.add_column("status")
        for i in infos:
            status = "promoted, served" if i.promoted else "served (newest)" if i.served else ""
            if i.problem:
                status = ", ".join(filter(None, ["[red]unreadable[/]", status]))
            table.add_row(
                i.name,
                (i.created_at or "")[:16].replace("T", " "),
                i.model or "–",
                _metric(i.metrics, "valid", "ndcg@10"),
                _metric(i.metrics, "test", "ndcg@10"),
                _metric(i.metrics, "test", "hr@10"),
                status,
            )
        out.print(table)
        for i in infos:
            if i.problem:
                err.print(f"{i.name}: {i.problem}", highlight=False)
        if not any(i.promoted for i in infos):
            out.print(
                "nothing promoted: a service serves the newest version; choose one with "
                f"`moerec registry promote {model_dir} VERSION`",
                highlight=False,
                soft_wrap=True,
            )


def _metric(metrics: dict[str, Any], split: str, key: str) -> str:
    value = metrics.get(split, {}).get(key) if isinstance(metrics.get(split), dict) else None
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


@registry_app.command("promote")
def registry_promote(
    model_dir: ModelDirArg,
    version: Annotated[
        str,
        typer.Argument(help="The version to serve: v0003, 3, or newest.", show_default=False),
    ],
    min_metric: Annotated[
        list[str] | None,
        typer.Option(
            "--min-metric",
            help="Quality gate: METRIC=VALUE, e.g. valid.ndcg@10=0.02; refuse the version if "
            "its manifest's metric is lower. Repeatable.",
            show_default=False,
        ),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            min=0.0,
            max=1.0,
            help="Quality gate: refuse the version if its --gate-metric is more than this "
            "fraction below the promoted version's (0.1 = 10%).",
            show_default=False,
        ),
    ] = None,
    gate_metric: Annotated[
        str, typer.Option("--gate-metric", help="The metric --max-drop compares.")
    ] = "valid.ndcg@10",
) -> None:
    """Verify a version and make it the one served (the model folder's PROMOTED pointer).

    A service serving the folder loads it within MOEREC_MODEL_POLL_SECONDS, without a restart;
    a broken artefact, or one that fails the quality gate, is refused here, before anything
    changes.
    """
    from moerec.registry import promote

    with user_errors():
        floors = _metric_floors(min_metric or [])
        record = promote(model_dir, version, floors, max_drop, gate_metric)
        if record.previous == record.version:
            out.print(
                f"{record.version} is already promoted in {model_dir} (pointer rewritten: a "
                "service that refused it tries again)",
                highlight=False,
                soft_wrap=True,
            )
            return
        was = record.previous or "nothing promoted: the newest version"
        out.print(
            f"promoted {record.version} in {model_dir} (was {was})", highlight=False, soft_wrap=True
        )


@registry_app.command("reroute")
def registry_reroute(
    model: ModelOpt,
    data: DataOpt,
    routing: Annotated[
        list[str],
        typer.Option(
            "--set",
            help="The new routing (repeatable): model.moe_top_k, model.moe_router (topk/topp), "
            "model.moe_top_p, model.moe_min_k, model.moe_max_k or "
            "model.moe_capacity_factor_eval, e.g. --set model.moe_top_k=1.",
            show_default=False,
        ),
    ],
    fmt: FormatOpt = "auto",
) -> None:
    """Save a trained MoE with another routing as the model's next version: same weights,
    new config, evaluated on the data (validation and test) so that `registry list` and the
    quality gates of `registry promote` judge it like any other version.

    Nothing is served until it is promoted (or A/B tested with MOEREC_AB_MODEL_PATH).
    """
    from moerec.evaluation import evaluate as run_evaluation
    from moerec.registry import NEWEST, load_artefact, promote, promoted_version, save_artefact

    with user_errors():
        changes = routing_changes(parse_overrides(routing))  # --set is required: never empty
        source = load_artefact(model)
        try:
            model_config = source.model.reroute(changes)
        except ValueError as exc:
            raise MoerecError(f"--set: {exc}") from None
        dataset = _matching_data(data, fmt, source)
        settings = source.config.eval
        valid = run_evaluation(source.model, dataset.split.valid, settings)
        test = run_evaluation(source.model, dataset.split.test, settings)
        trained = source.manifest.get("metrics", {})  # how the weights came about stays true
        metrics = {
            "valid": valid.metrics,
            "test": test.metrics,
            **{
                k: trained[k] for k in ("best_epoch", "epochs_run", "train_seconds") if k in trained
            },
            "routing": test.routing.to_dict(),
        }
        config = source.config.model_copy(update={"model": model_config})
        model_dir = source.path.parent
        if promoted_version(model_dir) is None:
            # Unpromoted, a folder serves its newest version: the new one would go live as
            # soon as it is written. Pinning what is served now keeps serving unchanged.
            pinned = promote(model_dir, NEWEST, {}, None, "valid.ndcg@10")
            out.print(
                f"promoted {pinned.version} in {model_dir}, the version served now, so that "
                "the new version is not served until you promote it",
                highlight=False,
                soft_wrap=True,
            )
        path = save_artefact(
            model_dir.parent,
            model_dir.name,
            source.model,
            config,
            source.vocab,
            metrics,
            source.manifest.get("data_fingerprint", ""),
            extra={
                "derived_from": {
                    "version": source.version,
                    "routing_changes": {f"model.{k}": v for k, v in changes.items()},
                }
            },
        )
        before = _metric(trained, "valid", "ndcg@10")
        out.print(
            f"saved {path} ({model_config.feed_forward}; valid ndcg@10 "
            f"{valid.metrics['ndcg@10']:.4f}, {source.version} {before}); serve it with "
            f"`moerec registry promote {model_dir} {path.name}`",
            highlight=False,
            soft_wrap=True,
        )


def _metric_floors(specs: list[str]) -> dict[str, float]:
    floors = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            floors[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise MoerecError(
                f"--min-metric {spec!r}: expected METRIC=VALUE, e.g. valid.ndcg@10=0.02"
            )
    return floors


@registry_app.command("rollback")
def registry_rollback(model_dir: ModelDirArg) -> None:
    """Promote again the version promoted before the current one (repeat to go further back)."""
    from moerec.registry import rollback

    with user_errors():
        record = rollback(model_dir)
        out.print(
            f"rolled back {model_dir} from {record.previous} to {record.version}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def info() -> None:
    """Versions, threads and memory allocator: what to include in a performance report."""
    import torch

    from moerec import __version__
    from moerec.runtime import active_allocator

    table = Table(show_header=False)
    for key, value in (
        ("moerec", __version__),
        ("python", sys.version.split()[0]),
        ("torch", torch.__version__),
        ("torch threads", str(torch.get_num_threads())),
        ("allocator", active_allocator()),
    ):
        table.add_row(key, value)
    out.print(table)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: switch to jemalloc first (see moerec.runtime), then run."""
    from moerec.runtime import reexec_with_jemalloc

    if argv is None:
        reexec_with_jemalloc()
    app(argv if argv is not None else sys.argv[1:])
