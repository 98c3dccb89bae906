"""Tests of the MovieLens loader on a tiny fixture in the GroupLens format (CRLF, quoted commas)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from envs.movielens import DEFAULT_DATA_DIR, ENV_VAR, load_movielens, resolve_data_path, split_title

FIXTURE = Path(__file__).parent / "fixtures" / "ml_tiny"


def test_fixture_really_uses_crlf_and_quoted_commas() -> None:
    raw = (FIXTURE / "movies.csv").read_bytes()
    assert b"\r\n" in raw and b'"American President, The (1995)"' in raw


def test_catalog_parsed_from_fixture() -> None:
    data = load_movielens(FIXTURE)
    assert data.num_items == 6
    np.testing.assert_array_equal(data.movie_ids, [1, 2, 3, 5, 7, 9])
    assert data.titles[1] == "The American President"  # quoted title with a comma
    assert data.titles[3] == "Seven (a.k.a. Se7en)"
    assert data.titles[5] == "Les Misérables"  # UTF-8
    np.testing.assert_array_equal(data.years, [1995, 1995, 1995, 1995, -1, 1995])
    assert data.genres[5] == ()  # "(no genres listed)"
    assert data.genres[2] == ("Action", "Crime", "Thriller")
    assert "(no genres listed)" not in data.genre_names
    assert data.genre_names == tuple(sorted(data.genre_names))
    assert data.genre_matrix.shape == (6, len(data.genre_names))
    np.testing.assert_array_equal(data.genre_matrix.sum(axis=1), [5, 3, 3, 2, 1, 0])
    # Tags: case-folded counts (pixar x2 before fun x1), quoted comma and quoted quotes.
    assert data.tags[0] == ("pixar", "fun")
    assert data.tags[1] == ("politics, romance",)
    assert data.tags[2] == ("heist",)
    assert data.texts[0] == (
        "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. Tags: pixar, fun."
    )
    assert data.texts[4] == "Babylon 5. Genres: Sci-Fi."
    assert all("\r" not in t for t in data.texts)


def test_sequences_sorted_by_time_with_stable_ties() -> None:
    data = load_movielens(FIXTURE)
    np.testing.assert_array_equal(data.user_ids, [10, 20, 30])
    np.testing.assert_array_equal(data.user_offsets, [0, 5, 11, 15])
    index = {int(m): i for i, m in enumerate(data.movie_ids)}
    as_movies = [[int(data.movie_ids[i]) for i in s] for s in data.sequences()]
    assert as_movies[0] == [1, 2, 3, 5, 7]
    # user 20 rated 3 then 1 at the same timestamp: file order is kept.
    assert as_movies[1] == [2, 3, 1, 9, 5, 7]
    assert as_movies[2] == [1, 2, 3, 9]
    assert index[3] == 2
    np.testing.assert_array_equal(data.timestamp[:5], [100, 200, 300, 400, 500])
    np.testing.assert_array_equal(data.rating[:5], [5.0, 3.5, 4.0, 2.0, 4.5])
    np.testing.assert_array_equal(data.interaction_user(), [0] * 5 + [1] * 6 + [2] * 4)
    np.testing.assert_array_equal(data.item_counts(), [3, 3, 3, 2, 2, 2])


def test_tags_are_optional_and_max_tags_limits(tmp_path: Path) -> None:
    for name in ("movies.csv", "ratings.csv"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    data = load_movielens(tmp_path)
    assert data.tags == ((),) * 6
    assert "Tags" not in data.texts[0]
    assert load_movielens(FIXTURE, max_tags=1).tags[0] == ("pixar",)
    assert "Tags" not in load_movielens(FIXTURE, max_tags=0).texts[0]


def test_missing_file_is_named(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "movies.csv", tmp_path / "movies.csv")
    with pytest.raises(FileNotFoundError, match="ratings.csv"):
        load_movielens(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_movielens(tmp_path / "nope")


def test_missing_column_is_named(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "movies.csv", tmp_path / "movies.csv")
    (tmp_path / "ratings.csv").write_bytes(b"userId,movieId,rating\r\n1,1,4.0\r\n")
    with pytest.raises(ValueError, match="timestamp"):
        load_movielens(tmp_path)


def test_unknown_movie_and_bad_value_are_errors(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "movies.csv", tmp_path / "movies.csv")
    (tmp_path / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\r\n1,4,4.0,1\r\n")
    with pytest.raises(ValueError, match="movieId 4"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\r\n1,1,good,1\r\n")
    with pytest.raises(ValueError, match="'rating'"):
        load_movielens(tmp_path)


def test_path_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_data_path() == DEFAULT_DATA_DIR
    monkeypatch.setenv(ENV_VAR, str(FIXTURE))
    assert resolve_data_path() == FIXTURE
    assert load_movielens().num_items == 6
    assert resolve_data_path(DEFAULT_DATA_DIR) == DEFAULT_DATA_DIR


def test_split_title_cases() -> None:
    assert split_title("Usual Suspects, The (1995)") == ("The Usual Suspects", 1995)
    assert split_title("Postman, The (Postino, Il) (1994)") == ("The Postman (Postino, Il)", 1994)
    assert split_title("Babylon 5") == ("Babylon 5", -1)
    assert split_title("Fawlty Towers (1975-1979)") == ("Fawlty Towers", 1975)


@pytest.mark.skipif(not (DEFAULT_DATA_DIR / "ratings.csv").is_file(), reason="project data copy absent")
def test_project_copy_matches_the_release_summary() -> None:
    data = load_movielens()
    assert (data.num_items, data.num_users, data.num_interactions) == (9742, 610, 100836)
    assert len(data.genre_names) == 19
    assert np.diff(data.user_offsets).min() == 20
    seqs = data.sequences()
    assert all(np.all(np.diff(data.timestamp[data.user_offsets[u] : data.user_offsets[u + 1]]) >= 0) for u in range(3))
    assert len(seqs) == 610
