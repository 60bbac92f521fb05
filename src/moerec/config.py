"""Typed experiment configuration.

One ``ExperimentConfig`` describes a whole run: which data, which model, how to train and how to
evaluate. It is read from YAML (the frozen files in ``configs/``) and stored in every model
artefact's manifest, so a model can always be rebuilt from what was saved with it.

This module imports no moerec layer (only the package's base error): every layer may use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from moerec import MoerecError

Variant = Literal["moe", "dense-active", "dense-params"]
VARIANTS: tuple[Variant, ...] = ("moe", "dense-active", "dense-params")


class ConfigError(MoerecError, ValueError):
    """A configuration file or value the user must fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """How interactions are read and turned into sequences."""

    format: str = Field("auto", description="Reader name, or 'auto' to detect it from the file.")
    min_user_interactions: int = Field(
        0, ge=0, description="k-core: drop users with fewer interactions (0 = keep all)."
    )
    min_item_interactions: int = Field(
        0, ge=0, description="k-core: drop items with fewer interactions (0 = keep all)."
    )
    min_rating: float | None = Field(
        None, description="Keep only interactions rated at least this (explicit-feedback files)."
    )
    chunk_rows: int | None = Field(
        None,
        ge=0,
        description="Read CSV/Parquet files this many rows at a time, in bounded memory; 0 reads "
        "them whole; unset streams files of 256 MiB or more in 100,000-row chunks.",
    )
    item_features: Path | None = Field(
        None,
        description="Item attributes: an item2attributes .json file, MovieLens u.item (genres) "
        "or a .csv of item_id,attribute rows; used by model.item_feature_mode.",
    )


# The ids a model with time_context reads per event (see moerec.data.time_context).
GAP_BUCKETS = 32  # 0 unknown, 1 same second, 2 + floor(log2(seconds)) up to ~17 years
HOUR_BUCKETS = 25  # 0 unknown, 1 + hour of day (UTC)


class ModelConfig(_Strict):
    """The sequential recommender: embeddings, N causal blocks with MoE feed-forward, tied head.

    ``num_items`` is the catalogue size without the padding id; it is filled in from the data.
    MoE settings carry the ``moe_`` prefix. A model with ``moe_num_experts == 1`` is dense.
    """

    num_items: int = Field(0, ge=0, description="Catalogue size (set from the data).")
    max_len: int = Field(50, ge=1, description="Longest history the model reads.")
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    ffn_hidden_size: int = Field(128, ge=1, description="Hidden width of ONE expert.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Embedding and residual dropout.")
    attention_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    item_feature_mode: Literal["none", "sum"] = Field(
        "none",
        description="'sum': an item's vector (input and tied head) is its embedding plus the "
        "mean of its attribute embeddings (needs data.item_features).",
    )
    num_attributes: int = Field(
        0, ge=0, description="Attribute vocabulary size (set from the data)."
    )
    max_item_attributes: int = Field(
        0, ge=0, description="Most attributes of one item (set from the data)."
    )
    time_context: bool = Field(
        False,
        description="Embed each event's gap since the previous one (log2 buckets) and its hour "
        "of day (UTC), and the request's own gap and hour (needs data with timestamps).",
    )
    position_encoding: Literal["absolute", "rotary", "none"] = Field(
        "absolute",
        description="'absolute': a learned embedding per slot, counted from the most recent "
        "item; 'rotary': RoPE on attention queries and keys, so attention sees only how far "
        "apart two items are; 'none': order only through the causal mask.",
    )
    embedding_norm: bool = Field(
        False,
        description="LayerNorm over each position's summed embeddings before the first block "
        "(as BERT4Rec, FMLP-Rec and BSARec do), so that item identity enters the residual "
        "stream at unit scale instead of the embeddings' small initial scale.",
    )
    block_norm: Literal["pre", "post"] = Field(
        "pre",
        description="'pre': x + f(LN(x)) in every block and one LayerNorm after the last (GPT-2, "
        "SASRec); 'post': LN(x + f(x)) and no final norm (BERT, FMLP-Rec, DuoRec, BSARec).",
    )
    filter_mix: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Weight of a causal filter branch beside attention in every block "
        "(BSARec's low/high-frequency mixing made causal): (1 - w) * attention + w * filter; "
        "0 = attention only.",
    )
    filter_kind: Literal["causal", "fourier"] = Field(
        "causal",
        description="'causal': a moving average of the items so far; 'fourier': BSARec's own "
        "filter, the filter_cutoff lowest frequencies of an FFT over the max_len window, which "
        "sees the whole history at once and so needs train.examples 'prefixes'.",
    )
    filter_cutoff: int = Field(
        5, ge=1, description="Frequencies the 'fourier' filter keeps as the low part (BSARec's c)."
    )
    moe_num_experts: int = Field(8, ge=1, description="Experts per MoE layer (1 = dense FFN).")
    moe_top_k: int = Field(2, ge=1, description="Experts per token in top-k routing.")
    moe_router: Literal["topk", "topp"] = Field(
        "topk", description="'topp' picks the smallest expert set reaching moe_top_p mass."
    )
    moe_top_p: float = Field(0.6, gt=0.0, le=1.0)
    moe_min_k: int = Field(2, ge=1, description="Fewest experts per token in top-p routing.")
    moe_max_k: int = Field(4, ge=1, description="Most experts per token in top-p routing.")
    moe_capacity_factor_train: float = Field(
        0.0, ge=0.0, description="Expert capacity = cf * k * tokens / experts; 0 = no dropping."
    )
    moe_capacity_factor_eval: float = Field(0.0, ge=0.0)
    moe_balance_coef: float = Field(0.01, ge=0.0, description="Switch load-balance loss weight.")
    moe_z_coef: float = Field(0.001, ge=0.0, description="Router z-loss weight.")
    moe_num_shared_experts: int = Field(
        0,
        ge=0,
        description="Always-on experts per MoE layer (DeepSeekMoE), each ffn_hidden_size wide: "
        "every token passes through them besides its routed experts.",
    )
    moe_balance: Literal["aux_loss", "bias"] = Field(
        "aux_loss",
        description="'aux_loss': the Switch loss (moe_balance_coef); 'bias': auxiliary-loss-free "
        "balancing (DeepSeek-V3), a per-expert routing bias nudged towards equal load after "
        "every training step.",
    )
    moe_bias_update_rate: float = Field(
        0.001, gt=0.0, description="Bias change per training batch with moe_balance 'bias'."
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if self.position_encoding == "rotary" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                "position_encoding 'rotary' needs an even head size (hidden_size / num_heads); "
                f"it is {self.hidden_size // self.num_heads}"
            )
        if self.is_moe and self.moe_top_k > self.moe_num_experts:
            raise ValueError(
                f"moe_top_k ({self.moe_top_k}) cannot exceed moe_num_experts "
                f"({self.moe_num_experts})"
            )
        if (
            self.is_moe
            and self.moe_router == "topp"
            and not (self.moe_min_k <= self.moe_max_k <= self.moe_num_experts)
        ):
            raise ValueError("top-p routing needs moe_min_k <= moe_max_k <= moe_num_experts")
        if self.moe_num_shared_experts and not self.is_moe:
            raise ValueError(
                "moe_num_shared_experts needs moe_num_experts > 1 (a dense model has no "
                "experts); widen ffn_hidden_size instead"
            )
        return self

    @property
    def is_moe(self) -> bool:
        return self.moe_num_experts > 1

    @property
    def active_experts(self) -> int:
        """Experts a token may use at most: routed (k for top-k, max_k for top-p) + shared."""
        if not self.is_moe:
            return 1
        routed = self.moe_max_k if self.moe_router == "topp" else self.moe_top_k
        return routed + self.moe_num_shared_experts

    @property
    def feed_forward(self) -> str:
        """The FFN in a few characters for tables: '8x128 top-2' (experts x width, routing) or
        '256' (a dense FFN's width)."""
        if not self.is_moe:
            return str(self.ffn_hidden_size)
        if self.moe_router == "topp":
            routing = f"top-p {self.moe_top_p:g} ({self.moe_min_k}-{self.moe_max_k})"
        else:
            routing = f"top-{self.moe_top_k}"
        shared = f" +{self.moe_num_shared_experts} shared" if self.moe_num_shared_experts else ""
        return f"{self.moe_num_experts}x{self.ffn_hidden_size} {routing}{shared}"


# Model settings a trained MoE can change without retraining: how many and which experts a
# token uses at inference, and the inference capacity. Everything else shapes the weights.
INFERENCE_ROUTING_FIELDS = (
    "moe_router",
    "moe_top_k",
    "moe_top_p",
    "moe_min_k",
    "moe_max_k",
    "moe_capacity_factor_eval",
)


def routing_changes(overrides: dict[str, Any], option: str = "--set") -> dict[str, Any]:
    """Dotted overrides (``model.moe_top_k``) as ModelConfig routing fields; anything else a
    trained model cannot follow is refused, naming ``option``."""
    changes = {}
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if section != "model" or field not in INFERENCE_ROUTING_FIELDS:
            allowed = ", ".join(f"model.{name}" for name in INFERENCE_ROUTING_FIELDS)
            raise ConfigError(
                f"{option} {key}: a trained model can only change how it routes ({allowed}); "
                "to change anything else, train with `moerec train --set`"
            )
        changes[field] = value
    return changes


class TrainConfig(_Strict):
    """Optimisation: full-catalogue cross-entropy (or sampled softmax), AdamW, warm-up, clipping,
    early stopping."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0, description="Applied to >=2-D parameters only.")
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = Field(1.0, ge=0.0, description="Max global grad norm (0 = off).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    patience: int = Field(10, ge=1, description="Epochs without a better valid NDCG@10.")
    time_budget_minutes: float | None = Field(
        None,
        gt=0.0,
        description="Stop after the first epoch that ends past this many minutes of wall time "
        "(training and validation); the best validation epoch so far is kept. None: no limit.",
    )
    eval_every: int = Field(1, ge=1, description="Validate every N epochs.")
    examples: Literal["sequences", "prefixes"] = Field(
        "sequences",
        description="'sequences': one example per user, every position predicting its next "
        "item; 'prefixes': one example per prefix of each history, only its last position "
        "predicting (as CL4SRec, DuoRec, FMLP-Rec and BSARec train), about mean-length times "
        "more examples per epoch.",
    )
    batch_by_length: bool = Field(
        False,
        description="Batch examples of similar length together (sorted within chunks of 50 "
        "batches, the batches then shuffled), so that short examples are not padded to the "
        "longest: much less work per epoch with 'prefixes'.",
    )
    seed: int = 42
    num_threads: int = Field(0, ge=0, description="torch threads (0 = leave torch's default).")
    loss: Literal["ce", "sampled"] = Field(
        "ce",
        description="'ce': softmax over the whole catalogue; 'sampled': sampled softmax over "
        "num_negatives shared negatives, for catalogues too large to score at every step.",
    )
    num_negatives: int = Field(
        256, ge=1, description="Negatives per step, shared by every position (sampled loss)."
    )
    negative_sampler: Literal["uniform", "popularity", "in-batch", "mixed"] = Field(
        "uniform",
        description="Where negatives come from: all items alike, items by training frequency, "
        "the batch's own next items, or half in-batch and half uniform (sampled loss).",
    )
    logq_correction: bool = Field(
        True,
        description="Subtract log(expected count under the sampler) from every candidate's "
        "logit, so that popular negatives are not over-penalised (sampled loss).",
    )

    @model_validator(mode="after")
    def _check_loss(self) -> TrainConfig:
        if self.loss == "sampled" and self.label_smoothing > 0:
            raise ValueError(
                "label_smoothing applies to the full cross-entropy only; set it to 0 with "
                "loss 'sampled' (a sampled candidate set has no fixed classes to smooth over)"
            )
        return self


class EvalConfig(_Strict):
    ks: tuple[int, ...] = (5, 10, 20)
    batch_size: int = Field(512, ge=1)
    exclude_history: bool = True
    score_chunk_items: int = Field(
        65_536,
        ge=1,
        description="Items scored at once when ranking: bounds memory at batch_size x this "
        "many scores; a catalogue this small is ranked in one pass.",
    )


class ExperimentConfig(_Strict):
    """Everything one run needs; stored in the artefact manifest."""

    name: str = "moerec"
    variant: Variant = "moe"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check_filter(self) -> ExperimentConfig:
        model = self.model
        if model.filter_mix > 0 and model.filter_kind == "fourier":
            if self.train.examples != "prefixes":
                raise ValueError(
                    "model.filter_kind 'fourier' lets every position see the items after it, "
                    "so training every position would train on the future: set "
                    "train.examples to 'prefixes' (only the last position is trained), or use "
                    "filter_kind 'causal'"
                )
            if model.filter_cutoff > model.max_len // 2 + 1:
                raise ValueError(
                    f"model.filter_cutoff ({model.filter_cutoff}) exceeds the "
                    f"{model.max_len // 2 + 1} frequencies of a max_len {model.max_len} window"
                )
        return self

    def with_num_items(self, num_items: int) -> ExperimentConfig:
        return self.model_copy(
            update={"model": self.model.model_copy(update={"num_items": num_items})}
        )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def dense_variant(model: ModelConfig, variant: Variant) -> ModelConfig:
    """The dense model to compare a MoE config against.

    ``dense-active`` matches the MoE's active feed-forward FLOPs (k routed + S shared experts'
    width); ``dense-params`` matches its total feed-forward parameters (E routed + S shared).
    Attention, embeddings and head are identical, so every difference is the FFN.
    """
    if variant == "moe":
        return model
    if variant == "dense-active":
        width = model.active_experts
    else:
        width = model.moe_num_experts + model.moe_num_shared_experts
    return model.model_copy(
        update={
            "ffn_hidden_size": model.ffn_hidden_size * width,
            "moe_num_experts": 1,
            "moe_num_shared_experts": 0,
            "moe_top_k": 1,
            "moe_router": "topk",
            "moe_min_k": 1,
            "moe_max_k": 1,
        }
    )


def resolve_variant(config: ExperimentConfig, variant: Variant) -> ExperimentConfig:
    """The same experiment with the model swapped for one of its dense baselines."""
    return config.model_copy(
        update={"variant": variant, "model": dense_variant(config.model, variant)}
    )


def load_config(
    path: Path | None = None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read a YAML experiment config (or the defaults) and apply dotted overrides.

    ``overrides`` maps ``"train.epochs"``-style keys to values.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, eval)")
        raw = loaded or {}
    return _validated(raw, overrides, f"{path}: " if path else "")


def parse_overrides(pairs: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``key=value`` pairs (``train.epochs=5``) as dotted overrides, values read as YAML;
    ``option`` names the flag they came from in the error messages."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} expects key=value (e.g. train.epochs=5), got {pair!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{option} {pair!r}: the value is not valid YAML") from None
    return overrides


def with_overrides(config: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """``config`` with dotted overrides applied, validated as :func:`load_config` does."""
    return _validated(config.to_dict(), overrides, "")


def _validated(
    raw: dict[str, Any], overrides: dict[str, Any] | None, where: str
) -> ExperimentConfig:
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {dotted!r}: {key!r} is a value, not a section")
        node[leaf] = value
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}invalid config: {validation_problems(exc)}") from None


def validation_problems(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``model.moe_top_k: Input should be ...; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )


# --------------------------------------------------------------------------- service settings

DEVELOPMENT_SECRET = "moerec-development-secret-do-not-use-in-production"  # noqa: S105 - public placeholder, refused in production
JwtAlgorithm = Literal["HS256", "RS256", "ES256"]


class ServiceSettings(BaseSettings):
    """How ``moerec serve`` runs, read from ``MOEREC_*`` environment variables.

    The defaults are the embedded setup: SQLite in the working folder, an in-process cache and
    rate limiter, a development signing secret. ``MOEREC_MODE=production`` refuses to start
    with a placeholder secret, so a forgotten variable cannot ship a guessable key.
    """

    model_config = SettingsConfigDict(env_prefix="MOEREC_", extra="ignore", frozen=True)

    mode: Literal["development", "production"] = Field(
        "development", description="'production' refuses placeholder or missing signing secrets."
    )
    model_path: Path = Field(
        Path("models/demo"),
        description="A model folder (its promoted version is served, else its newest) or one "
        "version folder.",
    )
    database_url: str = Field(
        "sqlite+aiosqlite:///moerec.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///file.db or "
        "postgresql+asyncpg://user:password@host/db.",
    )
    redis_url: str | None = Field(
        None,
        description="redis://host:6379/0 for a shared cache and rate limits; unset = in-process.",
    )

    jwt_algorithm: JwtAlgorithm = Field(
        "HS256", description="HS256 (shared secret) or RS256/ES256."
    )
    jwt_secret: SecretStr | None = Field(None, description="HS256 shared secret (≥ 32 bytes).")
    jwt_public_key_file: Path | None = Field(None, description="PEM public key for RS256/ES256.")
    jwt_private_key_file: Path | None = Field(
        None, description="PEM private key, only for minting tokens with `moerec token create`."
    )
    jwt_issuer: str = Field("moerec", description="Required `iss` claim.")
    jwt_audience: str = Field("moerec-api", description="Required `aud` claim.")
    jwt_leeway_seconds: float = Field(10.0, ge=0, description="Clock skew allowed on exp/nbf.")

    rate_limit_user_per_second: float = Field(20.0, gt=0, description="Token refill per user.")
    rate_limit_user_burst: int = Field(40, ge=1, description="Bucket size per user.")
    rate_limit_client_per_second: float = Field(
        2000.0, gt=0, description="Token refill per client (the token's `cid`, else its subject)."
    )
    rate_limit_client_burst: int = Field(4000, ge=1, description="Bucket size per client.")

    cache_ttl_seconds: int = Field(300, ge=1, description="Lifetime of a cached recommendation.")
    local_cache_entries: int = Field(100_000, ge=1, description="Size of the in-process cache.")

    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    max_history: int = Field(500, ge=1, description="Longest anonymous history accepted.")
    max_candidates: int = Field(1000, ge=1, description="Longest candidate list accepted.")

    batch_max_size: int = Field(32, ge=1, description="Most requests in one forward pass.")
    batch_max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="Longest wait for batch companions, spent only while requests arrive "
        "faster than that (0: requests that queue during a forward pass form the next batch; "
        "measured best on a 2-core machine).",
    )
    torch_threads: int = Field(1, ge=1, description="torch threads for the forward pass.")
    model_process: bool = Field(
        True,
        description="Run forward passes in a child process, so they do not hold the GIL the "
        "request handling needs (false: in a thread of the serving process).",
    )
    model_poll_seconds: float = Field(
        10.0,
        ge=0,
        description="How often to check the model folder's PROMOTED pointer and load a newly "
        "promoted version without a restart (0 = never; nothing to watch when model_path is "
        "a version folder).",
    )

    log_level: str = Field("info", description="debug, info, warning or error.")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (JSON list); empty = none.",
    )
    ui_enabled: bool | None = Field(
        None,
        description="Serve the playground page at /ui (unset: on in development mode, off in "
        "production mode).",
    )

    # Resilience: every outbound call has a timeout and a circuit breaker.
    database_timeout_seconds: float = Field(1.0, gt=0, description="Per database call.")
    cache_timeout_seconds: float = Field(0.25, gt=0, description="Per Redis call.")
    model_timeout_seconds: float = Field(2.0, gt=0, description="Per forward pass wait.")
    breaker_window: int = Field(20, ge=1, description="Calls a breaker judges failure rate on.")
    breaker_minimum_calls: int = Field(10, ge=1, description="Calls before a breaker may open.")
    breaker_open_seconds: float = Field(30.0, gt=0, description="Open time before probing.")
    breaker_half_open_probes: int = Field(10, ge=1, description="Trial calls when half-open.")
    spool_path: Path | None = Field(
        None,
        description="Durable local file for events accepted while the database is down "
        "(default: beside the SQLite database, else ./moerec-spool.db; put it on a volume).",
    )
    history_cache_users: int = Field(
        100_000, ge=0, description="Recent users' histories kept in memory for database outages."
    )

    # A/B experiment: a second model (the challenger) for a stable share of the users.
    ab_model_path: Path | None = Field(
        None,
        description="The challenger model of an A/B experiment (a model folder or one version "
        "folder); unset = no experiment, every request is served by model_path.",
    )
    ab_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of users served by the challenger (0..1); only with ab_model_path. "
        "Raising it keeps every user already in the challenger arm there.",
    )
    ab_salt: str = Field(
        "moerec-ab",
        min_length=1,
        max_length=128,
        description="Key of the hash that assigns users to arms; a new salt draws a new, "
        "independent split.",
    )

    @model_validator(mode="after")
    def _check_secrets(self) -> ServiceSettings:
        if self.jwt_algorithm == "HS256":
            if self.jwt_secret is None and self.mode == "production":
                raise ValueError("MOEREC_JWT_SECRET must be set in production mode")
            if self.jwt_secret is not None and self.mode == "production":
                secret = self.jwt_secret.get_secret_value()
                if secret == DEVELOPMENT_SECRET or len(secret.encode()) < 32:
                    raise ValueError(
                        "MOEREC_JWT_SECRET is a placeholder or shorter than 32 bytes; "
                        "generate one with: "
                        "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                    )
        elif self.jwt_public_key_file is None:
            raise ValueError(f"{self.jwt_algorithm} needs MOEREC_JWT_PUBLIC_KEY_FILE (a PEM file)")
        return self

    def event_spool_path(self) -> Path:
        if self.spool_path is not None:
            return self.spool_path
        prefix = "sqlite+aiosqlite:///"
        if self.database_url.startswith(prefix) and ":memory:" not in self.database_url:
            database = Path(self.database_url.removeprefix(prefix).split("?")[0])
            return database.with_name(database.name + ".spool")
        return Path("moerec-spool.db")

    def signing_secret(self) -> str:
        """The HS256 secret: the configured one, or the development placeholder."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        if self.mode == "production":  # unreachable after validation; kept as a guard
            raise ConfigError("MOEREC_JWT_SECRET must be set in production mode")
        return DEVELOPMENT_SECRET


def load_service_settings(**overrides: Any) -> ServiceSettings:
    """Settings from the environment, with keyword overrides (CLI flags) on top."""
    try:
        return ServiceSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'MOEREC_' + '.'.join(str(p) for p in err['loc']).upper() if err['loc'] else ''}"
            f"{': ' if err['loc'] else ''}{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid service settings: {problems}") from None
