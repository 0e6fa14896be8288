"""What the freeze copies of a master's own files, decided from two listings of its changes."""

from __future__ import annotations

from services.rootfs import Entry, changed_directories, changed_paths

BEFORE = {
    "/etc": Entry("d", "t1"),
    "/etc/a": Entry("f", "t1"),
    "/var": Entry("d", "t1"),
    "/bin/gone": Entry("w", "w1"),  # removed before the commit: the commit has it removed
}


def test_the_top_most_changes_are_copied_and_changed_directories_get_their_attributes() -> None:
    now = {
        **BEFORE,
        "/etc": Entry("d", "t2"),  # an existing directory that changed: not copied whole
        "/etc/a": Entry("f", "t2"),  # a changed file
        "/var/new": Entry("d", "t2"),  # a new directory, copied whole...
        "/var/new/x": Entry("f", "t2"),  # ...so not file by file
    }
    assert changed_paths(BEFORE, now) == ["/etc/a", "/var/new"]
    assert changed_directories(BEFORE, now) == ["/etc"]
    assert changed_paths(BEFORE, dict(BEFORE)) == []


def test_anything_removed_or_hidden_since_asks_for_a_new_commit() -> None:
    made_then_removed = {k: v for k, v in BEFORE.items() if k != "/etc/a"}
    whiteout = {**BEFORE, "/etc/passwd": Entry("w", "w2")}
    removed_again = {**BEFORE, "/bin/gone": Entry("w", "w3")}  # made again, removed again
    replaced = {**BEFORE, "/var": Entry("o", "t2")}  # removed and made again: hides the image's
    for now in (made_then_removed, whiteout, removed_again, replaced):
        assert changed_paths(BEFORE, now) is None
