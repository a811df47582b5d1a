"""The committable offset of a partition when messages finish out of order."""

from __future__ import annotations

from notifier.offsets import PartitionProgress


def test_nothing_taken_nothing_to_commit() -> None:
    assert PartitionProgress().committable() is None


def test_all_finished_commits_past_the_newest() -> None:
    progress = PartitionProgress()
    for offset in (10, 11, 12):
        progress.take(offset)
        progress.finish(offset)
    assert progress.committable() == 13


def test_a_parked_message_holds_the_commit_back_while_later_ones_finish() -> None:
    progress = PartitionProgress()
    for offset in (10, 11, 12, 13):
        progress.take(offset)
    for offset in (10, 12, 13):
        progress.finish(offset)
    assert progress.committable() == 11
    progress.finish(11)
    assert progress.committable() == 14


def test_the_oldest_unfinished_offset_wins() -> None:
    progress = PartitionProgress()
    for offset in (3, 4, 5):
        progress.take(offset)
    progress.finish(3)
    assert progress.committable() == 4
