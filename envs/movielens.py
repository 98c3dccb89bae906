"""MovieLens loader: item catalog with texts and per-user interaction sequences.

Reads any folder in the format of GroupLens' MovieLens "latest" releases
(``ml-latest-small``, ``ml-latest``, ``ml-25m``, ``ml-32m``; F. M. Harper and
J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4),
2015): ``ratings.csv`` (``userId,movieId,rating,timestamp``), ``movies.csv``
(``movieId,title,genres`` with ``|``-separated genres) and, optionally,
``tags.csv`` (``userId,movieId,tag,timestamp``). The files are UTF-8 with CRLF
line endings and double-quoted fields where a title or tag holds a comma; the
standard library's ``csv`` module handles both.

Only numpy and the standard library are used (``envs`` never imports torch or
pandas). Items are indexed ``0..N-1`` in the order of ``movies.csv``; users
``0..U-1`` in increasing ``userId``. Each user's interactions are sorted by
timestamp with a *stable* sort, so ties keep the order of ``ratings.csv``.

``release_year_features`` and ``popularity_feature`` turn the catalog into
extra item feature columns (the LLM policy's item representation).

The data folder is an argument; without one, ``$LONGREC_MOVIELENS`` is used
when set, else the copy of ``ml-latest-small`` shipped in the project's
``data/`` folder. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_DATA_DIR",
    "ENV_VAR",
    "MovieLensData",
    "RELEASE_YEAR_EDGES",
    "item_text",
    "load_movielens",
    "popularity_feature",
    "release_year_features",
    "resolve_data_path",
    "split_title",
]

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "ml-latest-small"
"""The project's copy of ml-latest-small (shipped with its license notice)."""

ENV_VAR = "LONGREC_MOVIELENS"
"""Environment variable that overrides the default data folder."""

NO_GENRE = "(no genres listed)"

_REQUIRED_COLUMNS = {
    "ratings.csv": ("userId", "movieId", "rating", "timestamp"),
    "movies.csv": ("movieId", "title", "genres"),
    "tags.csv": ("userId", "movieId", "tag", "timestamp"),
}
_YEAR_RE = re.compile(r"\s*\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")
# MovieLens files trailing articles ("Usual Suspects, The"); texts read better with them in front.
_ARTICLES = ("The", "A", "An", "Les", "La", "Le", "Il", "El", "Das", "Der", "Die", "Los", "Las")


def resolve_data_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The data folder to read: ``path`` if given, else ``$LONGREC_MOVIELENS``, else the project copy."""
    if path is None or str(path) == "":
        path = os.environ.get(ENV_VAR) or DEFAULT_DATA_DIR
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"MovieLens folder {str(folder)!r} does not exist or is not a directory; pass a folder "
            f"holding ratings.csv and movies.csv (e.g. {str(DEFAULT_DATA_DIR)!r}) or set ${ENV_VAR}"
        )
    return folder


def split_title(raw_title: str) -> tuple[str, int]:
    """Split a MovieLens title into a readable title and its year (``-1`` when absent).

    ``"Usual Suspects, The (1995)"`` -> ``("The Usual Suspects", 1995)``;
    alternative titles in parentheses are kept: ``"Postman, The (Postino, Il) (1994)"``
    -> ``("The Postman (Postino, Il)", 1994)``.
    """
    title = raw_title.strip()
    year = -1
    match = _YEAR_RE.search(title)
    if match:
        year = int(match.group(1))
        title = title[: match.start()].rstrip()
    main, sep, alt = title.partition(" (")
    for article in _ARTICLES:
        suffix = ", " + article
        if main.endswith(suffix):
            main = f"{article} {main[: -len(suffix)]}"
            break
    return main + sep + alt, year


def item_text(title: str, year: int, genres: Sequence[str], tags: Sequence[str]) -> str:
    """The text of one movie: ``"Title (year). Genres: a, b. Tags: x, y."``."""
    parts = [f"{title} ({year})." if year >= 0 else f"{title}."]
    if genres:
        parts.append("Genres: " + ", ".join(genres) + ".")
    if tags:
        parts.append("Tags: " + ", ".join(tags) + ".")
    return " ".join(parts)


@dataclass(frozen=True)
class MovieLensData:
    """A MovieLens release in memory.

    Interactions are stored user-major: the interactions of user ``u`` are
    ``item[user_offsets[u]:user_offsets[u + 1]]`` (same slice for ``rating`` and
    ``timestamp``), oldest first.
    """

    path: Path
    """Folder the data was read from."""
    movie_ids: np.ndarray
    """(N,) int64: MovieLens ``movieId`` of item index i (order of movies.csv)."""
    titles: tuple[str, ...]
    """Readable title per item (year removed, trailing article moved to the front)."""
    years: np.ndarray
    """(N,) int64 release year, -1 when the title has none."""
    genres: tuple[tuple[str, ...], ...]
    """Genres per item (empty for "(no genres listed)")."""
    genre_names: tuple[str, ...]
    """Sorted names of all genres in the catalog."""
    genre_matrix: np.ndarray
    """(N, G) float32 0/1 indicator of item genres, columns in ``genre_names`` order."""
    tags: tuple[tuple[str, ...], ...]
    """Most frequent (lower-cased) tags per item, most frequent first."""
    texts: tuple[str, ...]
    """Text per item (title, year, genres, tags): what the text encoder reads."""
    user_ids: np.ndarray
    """(U,) int64: MovieLens ``userId`` of user index u (increasing)."""
    user_offsets: np.ndarray
    """(U + 1,) int64 CSR offsets into the interaction arrays."""
    item: np.ndarray
    """(R,) int64 item index of each interaction, user-major and time-sorted."""
    rating: np.ndarray
    """(R,) float32 star rating of each interaction."""
    timestamp: np.ndarray
    """(R,) int64 Unix time of each interaction."""

    @property
    def num_items(self) -> int:
        return int(self.movie_ids.shape[0])

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_interactions(self) -> int:
        return int(self.item.shape[0])

    def sequence(self, user: int) -> np.ndarray:
        """Item indices of user index ``user``, oldest first."""
        if not 0 <= user < self.num_users:
            raise ValueError(f"user index {user} is out of range [0, {self.num_users})")
        return self.item[self.user_offsets[user] : self.user_offsets[user + 1]]

    def sequences(self) -> list[np.ndarray]:
        """All users' item sequences (views into ``item``), oldest first."""
        return [self.sequence(u) for u in range(self.num_users)]

    def interaction_user(self) -> np.ndarray:
        """(R,) int64 user index of each interaction."""
        return np.repeat(np.arange(self.num_users, dtype=np.int64), np.diff(self.user_offsets))

    def item_counts(self) -> np.ndarray:
        """(N,) int64 number of ratings per item."""
        return np.bincount(self.item, minlength=self.num_items).astype(np.int64)


def _rows(folder: Path, name: str) -> Iterator[dict[str, str]]:
    file = folder / name
    if not file.is_file():
        raise FileNotFoundError(f"MovieLens folder {str(folder)!r} has no {name} (expected {file})")
    # newline="" lets csv handle CRLF and newlines inside quoted fields.
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = tuple(reader.fieldnames or ())
        missing = [c for c in _REQUIRED_COLUMNS[name] if c not in header]
        if missing:
            raise ValueError(
                f"{file} lacks column(s) {missing}; found {list(header)}, "
                f"required {list(_REQUIRED_COLUMNS[name])}"
            )
        yield from reader


def _parse(value: str, kind: type, file: str, line: int, column: str) -> int | float:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{file} line {line}: column {column!r} holds {value!r}, not a {kind.__name__}") from None


def load_movielens(path: str | os.PathLike[str] | None = None, *, max_tags: int = 3) -> MovieLensData:
    """Read a MovieLens folder (see the module docstring for the format and the default path).

    Args:
        path: folder with ``ratings.csv``, ``movies.csv`` and optionally ``tags.csv``.
        max_tags: at most this many most-frequent tags go into an item's text
            (ties broken alphabetically); 0 leaves tags out.

    Raises:
        FileNotFoundError: the folder or a required file is missing (named in the message).
        ValueError: a column is missing, a value does not parse, a ``movieId`` repeats in
            movies.csv, or ratings.csv refers to a movie absent from movies.csv.
    """
    if max_tags < 0:
        raise ValueError(f"max_tags must be >= 0, got {max_tags}")
    folder = resolve_data_path(path)
    movies = _read_movies(folder)
    ratings = _read_ratings(folder, movies.index_of)
    # lexsort is stable: equal (user, timestamp) keep the order of ratings.csv.
    order = np.lexsort((ratings.time, ratings.user))
    user_ids, user_index = np.unique(ratings.user[order], return_inverse=True)
    user_offsets = np.zeros(user_ids.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_index, minlength=user_ids.shape[0]), out=user_offsets[1:])
    num_items = len(movies.movie_ids)
    tags = _read_tags(folder, movies.index_of, num_items, max_tags)

    genre_names = tuple(sorted({g for gs in movies.genres for g in gs}))
    column = {g: j for j, g in enumerate(genre_names)}
    genre_matrix = np.zeros((num_items, len(genre_names)), dtype=np.float32)
    for i, gs in enumerate(movies.genres):
        genre_matrix[i, [column[g] for g in gs]] = 1.0

    texts = tuple(item_text(movies.titles[i], movies.years[i], movies.genres[i], tags[i]) for i in range(num_items))
    return MovieLensData(
        path=folder,
        movie_ids=np.asarray(movies.movie_ids, dtype=np.int64),
        titles=tuple(movies.titles),
        years=np.asarray(movies.years, dtype=np.int64),
        genres=tuple(movies.genres),
        genre_names=genre_names,
        genre_matrix=genre_matrix,
        tags=tags,
        texts=texts,
        user_ids=user_ids.astype(np.int64),
        user_offsets=user_offsets,
        item=ratings.item[order],
        rating=ratings.rating[order],
        timestamp=ratings.time[order],
    )


@dataclass(frozen=True)
class _Movies:
    """movies.csv in file order (item i = row i)."""

    movie_ids: list[int]
    titles: list[str]
    years: list[int]
    genres: list[tuple[str, ...]]
    index_of: dict[int, int]
    """movieId -> item index"""


def _read_movies(folder: Path) -> _Movies:
    movies = _Movies(movie_ids=[], titles=[], years=[], genres=[], index_of={})
    for line, row in enumerate(_rows(folder, "movies.csv"), start=2):
        movie_id = int(_parse(row["movieId"], int, "movies.csv", line, "movieId"))
        if movie_id in movies.index_of:
            raise ValueError(f"movies.csv line {line}: movieId {movie_id} appears twice")
        movies.index_of[movie_id] = len(movies.movie_ids)
        movies.movie_ids.append(movie_id)
        title, year = split_title(row["title"] or "")
        movies.titles.append(title)
        movies.years.append(year)
        genre_field = (row["genres"] or "").strip()
        movies.genres.append(
            tuple(g for g in genre_field.split("|") if g) if genre_field and genre_field != NO_GENRE else ()
        )
    if not movies.movie_ids:
        raise ValueError(f"{folder / 'movies.csv'} holds no movies")
    return movies


@dataclass(frozen=True)
class _Ratings:
    """ratings.csv in file order: item index, user id, rating and timestamp per row."""

    item: np.ndarray
    user: np.ndarray
    rating: np.ndarray
    time: np.ndarray


def _read_ratings(folder: Path, index_of: dict[int, int]) -> _Ratings:
    raw_user: list[int] = []
    raw_item: list[int] = []
    raw_rating: list[float] = []
    raw_time: list[int] = []
    for line, row in enumerate(_rows(folder, "ratings.csv"), start=2):
        movie_id = int(_parse(row["movieId"], int, "ratings.csv", line, "movieId"))
        item = index_of.get(movie_id)
        if item is None:
            raise ValueError(f"ratings.csv line {line}: movieId {movie_id} is not in movies.csv")
        raw_user.append(int(_parse(row["userId"], int, "ratings.csv", line, "userId")))
        raw_item.append(item)
        raw_rating.append(float(_parse(row["rating"], float, "ratings.csv", line, "rating")))
        raw_time.append(int(_parse(row["timestamp"], int, "ratings.csv", line, "timestamp")))
    if not raw_user:
        raise ValueError(f"{folder / 'ratings.csv'} holds no ratings")
    return _Ratings(
        item=np.asarray(raw_item, dtype=np.int64),
        user=np.asarray(raw_user, dtype=np.int64),
        rating=np.asarray(raw_rating, dtype=np.float32),
        time=np.asarray(raw_time, dtype=np.int64),
    )


def _read_tags(folder: Path, index_of: dict[int, int], num_items: int, max_tags: int) -> tuple[tuple[str, ...], ...]:
    """The ``max_tags`` most frequent tags of each item (ties alphabetically); none without tags.csv."""
    tag_counts: list[Counter[str]] = [Counter() for _ in range(num_items)]
    if (folder / "tags.csv").is_file():
        for line, row in enumerate(_rows(folder, "tags.csv"), start=2):
            movie_id = int(_parse(row["movieId"], int, "tags.csv", line, "movieId"))
            tag = " ".join((row["tag"] or "").split()).lower().strip('"')
            if tag and movie_id in index_of:
                tag_counts[index_of[movie_id]][tag] += 1
    return tuple(
        tuple(t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_tags]) for counts in tag_counts
    )


# --------------------------------------------------------------------------- item features


RELEASE_YEAR_EDGES: tuple[int, ...] = (1950, 1970, 1980, 1990, 1995, 2000, 2005, 2010, 2014, 2016)
"""Bin edges of ``release_year_features`` (finer where the catalog is dense)."""


def release_year_features(years: np.ndarray, edges: Sequence[int] = RELEASE_YEAR_EDGES) -> np.ndarray:
    """(N, len(edges) + 2) float32: one-hot release-year bin, then ``(year - 1995) / 20``.

    The year is part of every MovieLens item text (the title's "(1995)"), but a sentence embedding
    keeps it only faintly; as explicit features a pointer score can prefer the decades a user is
    watching. Unknown years (``-1``) get all zeros.
    """
    years = np.asarray(years, dtype=np.int64)
    known = years > 0
    bins = np.digitize(np.where(known, years, edges[0]), np.asarray(edges))
    out = np.zeros((years.size, len(edges) + 2), dtype=np.float32)
    out[np.flatnonzero(known), bins[known]] = 1.0
    out[:, -1] = np.where(known, (years - 1995) / 20.0, 0.0)
    return out


def popularity_feature(counts: np.ndarray) -> np.ndarray:
    """(N, 1) float32 visible popularity ``log(1 + count) / log(1 + max count)`` (0 for a catalog never seen)."""
    counts = np.asarray(counts, dtype=np.float64)
    top = np.log1p(counts.max()) if counts.size else 0.0
    return (np.log1p(counts) / top if top > 0 else np.zeros_like(counts))[:, None].astype(np.float32)
