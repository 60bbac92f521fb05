"""A seeded synthetic interaction log with the structure real logs have.

It exists so the demo, the tests and the benchmarks run without downloading anything, and so
"the model learned something" is checkable: the log has a strong *sequential* signal that a
popularity baseline cannot use but a sequential model can.

How a log is made:

* items belong to taste clusters; inside a cluster, popularity has a Zipf-like long tail;
* every item has a few likely successors in its cluster (one much likelier than the others);
* each user likes one or two clusters (some clusters appeal to more users than others), and
  occasionally drifts to another;
* each next item follows a successor of the previous item with probability ``P_FOLLOW``,
  otherwise it is drawn by popularity from the user's clusters, and rarely it is a globally
  popular item; a user does not repeat an item while the catalogue allows it;
* sequence lengths are log-normal (at least ``MIN_LENGTH``); times increase with random gaps.

Everything is vectorised over users (one numpy step per position), so 100k users take a few
seconds. The catalogue (clusters, popularity, successors) depends only on ``num_items``,
``num_clusters`` and ``seed``, which is how :func:`synthetic_titles` names the same items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from moerec.data.errors import DataError
from moerec.data.interactions import Interactions

MIN_LENGTH = 5
P_FOLLOW = 0.6  # follow one of the previous item's successors
SUCCESSOR_WEIGHTS = np.array([0.7, 0.2, 0.1])  # how likely each of an item's successors is
P_GLOBAL = 0.03  # a globally popular item, whatever the user's taste
P_DRIFT = 0.01  # per step: one favourite cluster is replaced by a random one
ZIPF_EXPONENT = 1.2
SUCCESSOR_POPULARITY = 0.5  # successors favour popular items, with this power of popularity
CLUSTER_SKEW = 0.7  # some tastes are more common than others (cluster c liked ~ (c+1)^-skew)
LENGTH_SIGMA = 0.6
MAX_LENGTH_FACTOR = 6  # lengths are capped at this multiple of the mean
REDRAWS = 4  # attempts to avoid repeating an item the user already has
START_TIME = 1_577_836_800  # 2020-01-01, so timestamps look like real epoch seconds
MEAN_GAP_SECONDS = 6 * 3600
GENRES = (
    "jazz", "rock", "folk", "techno", "opera", "blues", "reggae", "punk",
    "soul", "ambient", "disco", "metal", "gospel", "salsa", "swing", "grunge",
)  # fmt: skip


@dataclass(frozen=True)
class _Catalogue:
    """Item structure shared by the generator and the titles (internal items are 0-based)."""

    cluster: np.ndarray  # (items,) cluster of each item
    rank: np.ndarray  # (items,) 1-based popularity rank inside its cluster
    by_cluster: np.ndarray  # items grouped by cluster, most popular first
    cumulative: np.ndarray  # cluster c + cumulative within-cluster popularity, per by_cluster
    cluster_end: np.ndarray  # (clusters,) end of each cluster in by_cluster
    successors: np.ndarray  # (items, len(SUCCESSOR_WEIGHTS)) likely next items
    global_cdf: np.ndarray  # cumulative popularity over by_cluster (all items)


def _check(num_users: int, num_items: int, num_clusters: int, mean_length: int) -> None:
    if num_users < 1 or num_items < 2 or num_clusters < 1 or mean_length < 1:
        raise DataError(
            "synthetic data needs num_users >= 1, num_items >= 2, num_clusters >= 1 and "
            f"mean_length >= 1 (got {num_users}, {num_items}, {num_clusters}, {mean_length})"
        )
    if num_clusters > num_items:
        raise DataError(f"num_clusters ({num_clusters}) cannot exceed num_items ({num_items})")


def _cumulative(weight: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cluster index + cumulative within-cluster probability, for items grouped by cluster.

    Drawing ``c + uniform()`` and searching this array samples cluster ``c`` by ``weight``
    for every row at once (see :func:`_sample`).
    """
    cluster_of = np.repeat(np.arange(len(sizes)), sizes)
    total = np.bincount(cluster_of, weights=weight, minlength=len(sizes))
    # Each cluster's probabilities sum to 1, so cluster c's running total lies in (c, c + 1].
    return np.cumsum(weight / total[cluster_of])


def _sample(
    cumulative: np.ndarray, cluster_end: np.ndarray, clusters: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A position (in cluster-grouped order) inside each of ``clusters``."""
    position = np.searchsorted(cumulative, clusters + rng.random(clusters.shape), side="right")
    return np.minimum(position, cluster_end[clusters] - 1)


def _catalogue(num_items: int, num_clusters: int, seed: int) -> _Catalogue:
    rng = np.random.default_rng([seed, 0])
    cluster = rng.permutation(np.arange(num_items) % num_clusters)
    by_cluster = np.lexsort((rng.random(num_items), cluster))  # random order inside clusters
    sizes = np.bincount(cluster, minlength=num_clusters)
    cluster_end = np.cumsum(sizes)
    position = np.arange(num_items) - np.repeat(cluster_end - sizes, sizes)  # rank - 1
    weight = (position + 1.0) ** -ZIPF_EXPONENT
    rank = np.empty(num_items, dtype=np.int64)
    rank[by_cluster] = position + 1
    # Successors: drawn inside the item's cluster, favouring (but less than popularity does)
    # popular items; an item that drew itself takes its cluster neighbour instead.
    grouped_cluster = cluster[by_cluster]
    draws = np.repeat(grouped_cluster[:, None], len(SUCCESSOR_WEIGHTS), axis=1)
    successor_cdf = _cumulative(weight**SUCCESSOR_POPULARITY, sizes)
    picked = _sample(successor_cdf, cluster_end, draws, rng)
    own = np.arange(num_items)[:, None]
    neighbour = np.where(
        own + 1 < cluster_end[grouped_cluster][:, None],
        own + 1,
        (cluster_end - sizes)[grouped_cluster][:, None],
    )
    picked = np.where(picked == own, neighbour, picked)
    successors = np.empty((num_items, len(SUCCESSOR_WEIGHTS)), dtype=np.int64)
    successors[by_cluster] = by_cluster[picked]
    global_cdf = np.cumsum(weight) / weight.sum()
    return _Catalogue(
        cluster, rank, by_cluster, _cumulative(weight, sizes), cluster_end, successors, global_cdf
    )


def _from_clusters(
    catalogue: _Catalogue, clusters: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One item per entry of ``clusters``, by popularity inside that cluster."""
    return catalogue.by_cluster[_sample(catalogue.cumulative, catalogue.cluster_end, clusters, rng)]


def _popular(catalogue: _Catalogue, count: int, rng: np.random.Generator) -> np.ndarray:
    position = np.searchsorted(catalogue.global_cdf, rng.random(count), side="right")
    return catalogue.by_cluster[np.minimum(position, len(catalogue.by_cluster) - 1)]


def _lengths(num_users: int, mean_length: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal lengths with roughly the requested mean, at least MIN_LENGTH."""
    mu = np.log(max(mean_length, 1)) - LENGTH_SIGMA**2 / 2
    raw = np.rint(rng.lognormal(mu, LENGTH_SIGMA, size=num_users)).astype(np.int64)
    return np.clip(raw, MIN_LENGTH, max(MIN_LENGTH, MAX_LENGTH_FACTOR * mean_length))


@dataclass
class _Tastes:
    """Each user's favourite clusters (two slots; a one-cluster user has it twice)."""

    favourite: np.ndarray  # (users, 2)
    first_share: np.ndarray  # (users,) probability of drawing from the first favourite

    @classmethod
    def sample(cls, num_users: int, num_clusters: int, rng: np.random.Generator) -> _Tastes:
        appeal = (np.arange(num_clusters) + 1.0) ** -CLUSTER_SKEW
        favourite = rng.choice(num_clusters, size=(num_users, 2), p=appeal / appeal.sum())
        single = rng.random(num_users) < 0.5
        favourite[single, 1] = favourite[single, 0]
        return cls(favourite, rng.uniform(0.5, 0.8, size=num_users))

    def drift(self, active: int, num_clusters: int, rng: np.random.Generator) -> None:
        moved = np.flatnonzero(rng.random(active) < P_DRIFT)
        self.favourite[moved, rng.integers(0, 2, size=len(moved))] = rng.integers(
            0, num_clusters, size=len(moved)
        )

    def pick(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A favourite cluster for each user in ``rows``."""
        second = rng.random(len(rows)) >= self.first_share[rows]
        return self.favourite[rows, second.astype(np.int64)]


def _step(
    catalogue: _Catalogue,
    tastes: _Tastes,
    history: np.ndarray,
    t: int,
    active: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The item at position ``t`` for the first ``active`` users (rows of ``history``)."""
    choice = _from_clusters(catalogue, tastes.pick(np.arange(active), rng), rng)
    if t > 0:
        follow = rng.random(active) < P_FOLLOW
        which = rng.choice(len(SUCCESSOR_WEIGHTS), size=active, p=SUCCESSOR_WEIGHTS)
        choice = np.where(follow, catalogue.successors[history[:active, t - 1], which], choice)
    wander = np.flatnonzero(rng.random(active) < P_GLOBAL)
    choice[wander] = _popular(catalogue, len(wander), rng)
    for attempt in range(REDRAWS):
        repeated = np.flatnonzero((history[:active, :t] == choice[:, None]).any(axis=1))
        if len(repeated) == 0:
            break
        if attempt < REDRAWS - 1:
            clusters = tastes.pick(repeated, rng)
            choice[repeated] = _from_clusters(catalogue, clusters, rng)
        else:
            choice[repeated] = rng.integers(0, len(catalogue.cluster), size=len(repeated))
    return choice


def generate_interactions(
    num_users: int = 2000,
    num_items: int = 1000,
    num_clusters: int = 10,
    mean_length: int = 30,
    seed: int = 0,
) -> Interactions:
    """A deterministic synthetic log (same arguments, same log); ids are "1", "2", ..."""
    _check(num_users, num_items, num_clusters, mean_length)
    catalogue = _catalogue(num_items, num_clusters, seed)
    rng = np.random.default_rng([seed, 1])
    lengths = _lengths(num_users, mean_length, rng)
    order = np.argsort(-lengths, kind="stable")  # longest first: active users are a prefix
    sorted_lengths = lengths[order]
    tastes = _Tastes.sample(num_users, num_clusters, rng)
    history = np.zeros((num_users, int(sorted_lengths[0])), dtype=np.int32)
    for t in range(history.shape[1]):
        active = int(np.count_nonzero(sorted_lengths > t))
        tastes.drift(active, num_clusters, rng)
        history[:active, t] = _step(catalogue, tastes, history, t, active, rng)
    filled = np.arange(history.shape[1]) < sorted_lengths[:, None]
    user = np.repeat(order, sorted_lengths)
    by_user = np.argsort(user, kind="stable")
    user, items = user[by_user], history[filled][by_user]
    return Interactions(
        users=_id_strings(num_users)[user],
        items=_id_strings(num_items)[items],
        timestamps=_times(lengths, rng),
        ratings=None,
        source=(
            f"synthetic(seed={seed}, users={num_users}, items={num_items}, "
            f"clusters={num_clusters}, mean_length={mean_length})"
        ),
    )


def _id_strings(count: int) -> np.ndarray:
    """Ids "1".."count" (converting each id once and indexing is much faster than per row)."""
    return np.arange(1, count + 1).astype(str)


def _times(lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Increasing epoch seconds per user (rows grouped by user): a random start in 2020 plus
    exponential gaps of at least one second."""
    gaps = 1 + rng.exponential(MEAN_GAP_SECONDS, size=int(lengths.sum())).astype(np.int64)
    running = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    before_user = np.repeat(running[first] - gaps[first], lengths)
    start = np.repeat(START_TIME + rng.integers(0, 365 * 86_400, size=len(lengths)), lengths)
    return (start + running - before_user).astype(np.int64)


def _genre(cluster: int) -> str:
    name = GENRES[cluster % len(GENRES)]
    return name if cluster < len(GENRES) else f"{name}-{cluster // len(GENRES) + 1}"


def synthetic_titles(num_items: int, num_clusters: int = 10, seed: int = 0) -> dict[str, str]:
    """Names like ``"jazz #12"`` (12th most popular item of the jazz cluster) for the items
    of :func:`generate_interactions` with the same ``num_items``, ``num_clusters``, ``seed``."""
    _check(1, num_items, num_clusters, 1)
    catalogue = _catalogue(num_items, num_clusters, seed)
    return {
        str(item + 1): f"{_genre(int(catalogue.cluster[item]))} #{int(catalogue.rank[item])}"
        for item in range(num_items)
    }


def write_csv(interactions: Interactions, path: Path) -> None:
    """Write ``user,item,timestamp[,rating]`` with a header (gzip if the name ends in .gz),
    in a form :func:`~moerec.data.readers.read_interactions` reads back unchanged."""
    columns = {
        "user": pa.array(interactions.users.astype(str), type=pa.string()),
        "item": pa.array(interactions.items.astype(str), type=pa.string()),
        "timestamp": pa.array(interactions.timestamps, type=pa.int64()),
    }
    if interactions.ratings is not None:
        columns["rating"] = pa.array(interactions.ratings, type=pa.float32())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = pa_csv.WriteOptions(quoting_style="needed")
    if path.name.endswith(".gz"):
        with pa.CompressedOutputStream(str(path), "gzip") as stream:
            pa_csv.write_csv(pa.table(columns), stream, write_options=options)
    else:
        pa_csv.write_csv(pa.table(columns), str(path), write_options=options)
