"""glimpse.service.roots: paths from requests resolve inside the data roots or are refused.

Real folders and symlinks under tmp_path; every escape the issue names is tried.
"""

from __future__ import annotations

import os

import pytest

from glimpse.service.errors import Forbidden, InputError, NotFound
from glimpse.service.roots import DataRoots

# Files and folders only: a hang would be a bug, and 30 s is far above the ~0.1 s it takes.
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def tree(tmp_path):
    """Two roots (a, b) and a folder outside both with a secret file."""
    a, b, outside = tmp_path / "a", tmp_path / "b", tmp_path / "outside"
    for folder in (a / "sub", b, outside):
        folder.mkdir(parents=True)
    (a / "sub" / "x.txt").write_text("x")
    (b / "y.txt").write_text("y")
    (b / "sub").mkdir()
    (b / "sub" / "x.txt").write_text("x in b")
    (outside / "secret.txt").write_text("secret")
    return DataRoots([a, b]), a, b, outside


def test_relative_and_absolute_paths_inside_resolve(tree):
    roots, a, b, _ = tree
    assert roots.resolve("sub/x.txt") == a / "sub" / "x.txt"  # the first root where it exists
    assert roots.resolve("y.txt") == b / "y.txt"
    assert roots.resolve(str(b / "sub" / "x.txt")) == b / "sub" / "x.txt"
    assert roots.resolve("./sub//x.txt") == a / "sub" / "x.txt"
    assert roots.contains(b / "y.txt") and not roots.contains(a.parent / "outside")


@pytest.mark.parametrize("user_path", [
    "../outside/secret.txt", "sub/../../outside/secret.txt", "..", "sub/..",
    "..%2Foutside%2Fsecret.txt", "%2e%2e/outside/secret.txt", "sub%2F..%2F..%2Foutside",
    "%252e%252e%252foutside",  # encoded twice
    "..\\outside\\secret.txt", "sub\\..\\..\\outside",
])
def test_dot_dot_in_any_spelling_is_forbidden(tree, user_path):
    roots, *_ = tree
    with pytest.raises(Forbidden, match="without '..' segments"):
        roots.resolve(user_path)


def test_absolute_paths_elsewhere_are_forbidden_even_encoded(tree):
    roots, _, _, outside = tree
    for user_path in (str(outside / "secret.txt"), "/etc/passwd", "/",
                      "%2Fetc%2Fpasswd", "%2fetc/passwd", "C:\\Windows\\win.ini", "C:/x"):
        with pytest.raises(Forbidden):
            roots.resolve(user_path)
    # Absolute paths elsewhere are refused before existence is looked at: nothing leaks.
    with pytest.raises(Forbidden):
        roots.resolve(str(outside / "no-such-file"))


def test_symlinks_are_judged_by_where_they_point(tree):
    roots, a, b, outside = tree
    (a / "out").symlink_to(outside / "secret.txt")
    (a / "outdir").symlink_to(outside, target_is_directory=True)
    (a / "dangling").symlink_to(outside / "gone.txt")
    (a / "in").symlink_to(b / "y.txt")
    for user_path in ("out", "outdir/secret.txt", "dangling", str(a / "out")):
        with pytest.raises(Forbidden, match="inside the data roots"):
            roots.resolve(user_path)
    assert roots.resolve("in") == b / "y.txt"  # a link between roots stays inside
    assert not roots.contains(a / "out") and roots.contains(a / "in")


def test_nul_bytes_are_forbidden(tree):
    roots, *_ = tree
    for user_path in ("sub/x.txt\x00.png", "sub%00x"):
        with pytest.raises(Forbidden, match="NUL"):
            roots.resolve(user_path)


def test_missing_paths_are_not_found_unless_allowed(tree):
    roots, a, *_ = tree
    with pytest.raises(NotFound, match="does not exist") as err:
        roots.resolve("sub/nothing.txt")
    assert str(a) in err.value.expected  # names the roots it looked in
    assert roots.resolve("new/file.txt", must_exist=False) == a / "new" / "file.txt"
    with pytest.raises(Forbidden):
        roots.resolve("../new.txt", must_exist=False)


def test_missing_roots_are_skipped_and_none_is_an_error(tmp_path, caplog):
    (tmp_path / "there").mkdir()
    with caplog.at_level("INFO", logger="glimpse.service.roots"):
        roots = DataRoots([tmp_path / "gone", tmp_path / "there", tmp_path / "there"])
    assert roots.paths == ((tmp_path / "there").resolve(),)
    assert "gone" in caplog.text
    with pytest.raises(InputError, match="--data"):
        DataRoots([tmp_path / "gone"])
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError):
        DataRoots([tmp_path / "file"])


def test_roots_are_resolved_and_relative_paths_are_shown_from_their_root(tree, tmp_path):
    roots, a, b, _ = tree
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    assert DataRoots([tmp_path / "link"]).paths == (a,)
    assert roots.relative(a / "sub" / "x.txt") == "sub/x.txt"
    assert roots.relative(b / "y.txt") == "y.txt"
    # b/sub/x.txt as "sub/x.txt" would name a's file: shown absolute instead.
    assert roots.relative(b / "sub" / "x.txt") == str(b / "sub" / "x.txt")
    assert roots.resolve(roots.relative(b / "sub" / "x.txt")) == b / "sub" / "x.txt"


def test_sessions_dir_defaults_to_the_first_root_and_stays_inside(tree):
    roots, a, b, outside = tree
    assert roots.sessions_dir(None) == a / "sessions"
    assert roots.sessions_dir(str(b / "runs")) == b / "runs"
    with pytest.raises(Forbidden):
        roots.sessions_dir(str(outside))
    assert os.fspath(roots.sessions_dir("runs")) == os.fspath(a / "runs")
