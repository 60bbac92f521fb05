import numpy as np

from moerec.data.batching import flat_rows, left_pad, trim_padding

OFFSETS = np.array([0, 3, 3, 8])  # rows: [1 2 3], [], [4 5 6 7 8]
ITEMS = np.array([1, 2, 3, 4, 5, 6, 7, 8])


def test_left_pad_right_aligns_and_keeps_the_most_recent_items():
    out = left_pad(OFFSETS, ITEMS, np.array([0, 1, 2]), width=4)
    assert out.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [5, 6, 7, 8]]


def test_left_pad_follows_the_requested_row_order():
    out = left_pad(OFFSETS, ITEMS, np.array([2, 0]), width=2)
    assert out.tolist() == [[7, 8], [2, 3]]


def test_flat_rows_lists_every_item_of_each_selected_row():
    batch_pos, flat = flat_rows(OFFSETS, np.array([2, 0]))
    assert batch_pos.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert ITEMS[flat].tolist() == [4, 5, 6, 7, 8, 1, 2, 3]


def test_trim_padding_drops_only_all_padding_columns():
    batch = np.array([[0, 0, 0, 1, 2], [0, 0, 3, 4, 5]])
    assert trim_padding(batch).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert trim_padding(np.zeros((2, 4), dtype=np.int64)).shape == (2, 1)
