"""nbqueue.names: readable task names from uuids."""

from __future__ import annotations

import uuid

import pytest

from nbqueue.disk.names import WORDS, humanize, new_task_id


def test_words_are_256_unique():
    assert len(WORDS) == 256
    assert len(set(WORDS)) == 256
    assert all(word and word.isalpha() and word.islower() for word in WORDS)


def test_humanize_is_deterministic_and_has_four_words():
    task_id = "9f6c2b1e-3d4a-4c5b-8e7f-0a1b2c3d4e5f"
    name = humanize(task_id)
    assert humanize(task_id) == name
    assert humanize(task_id.upper()) == name  # the same uuid, spelled differently
    assert humanize(str(uuid.UUID(task_id))) == name
    parts = name.split("-")
    assert len(parts) == 4
    assert all(part in WORDS for part in parts)


def test_humanize_folds_bytes_by_xor():
    # each 4-byte quarter of the uuid folds into one word index
    raw = bytes([1, 2, 4, 8, 0, 0, 0, 0, 255, 0, 0, 0, 16, 16, 3, 0])
    name = humanize(str(uuid.UUID(bytes=raw)))
    assert name.split("-") == [WORDS[15], WORDS[0], WORDS[255], WORDS[3]]


def test_humanize_word_count_is_a_parameter():
    task_id = str(uuid.uuid4())
    assert len(humanize(task_id, words=2).split("-")) == 2
    assert len(humanize(task_id, words=8).split("-")) == 8


def test_humanize_differs_between_uuids():
    names = {humanize(str(uuid.uuid4())) for _ in range(2000)}
    assert len(names) > 1990  # 2**32 names: collisions are possible but rare
    words_seen = {word for name in names for word in name.split("-")}
    assert len(words_seen) > 200  # the words are spread over the whole list


def test_humanize_refuses_a_non_uuid():
    with pytest.raises(ValueError):
        humanize("not-a-uuid")


def test_new_task_id_is_uuid4_with_its_name():
    seen = set()
    for _ in range(100):
        task_id, name = new_task_id()
        parsed = uuid.UUID(task_id)
        assert parsed.version == 4
        assert str(parsed) == task_id
        assert name == humanize(task_id)
        seen.add(task_id)
    assert len(seen) == 100


def test_a_batch_id_names_its_items_and_they_name_it():
    from nbqueue.disk.names import (batch_of, batch_of_name, item_id, item_name, new_batch_id,
                                    task_of)
    batch_id, name = new_batch_id()
    assert uuid.UUID(batch_id).version == 8 and batch_id.endswith("00000000")
    assert batch_of(batch_id) is None and task_of(batch_id) == batch_id
    first, last = item_id(batch_id, 0), item_id(batch_id, 9999)
    assert uuid.UUID(first).version == 8 and first.endswith("00000001")
    assert batch_of(first) == (batch_id, 0) and batch_of(last) == (batch_id, 9999)
    assert task_of(last) == batch_id
    assert batch_of_name(item_name(name, 12)) == (name, 12)
    task_id, task_name = new_task_id()
    assert batch_of(task_id) is None and task_of(task_id) == task_id
    assert batch_of_name(task_name) is None and batch_of("short") is None
