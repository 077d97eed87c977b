"""The log tokenizers' line ends and blanks: '\\r' ends a line only right before '\\n' or the block's end."""

import numpy as np
import pytest

from streamfm.sample.logs import R_AFTER_QUOTE, R_FIELDS, R_JSON, Tokenizer


def tokenize(fmt, block, header=None):
    t = Tokenizer(fmt, ["a", "b"], header=header)
    c = t.tokenize(np.frombuffer(block, np.uint8), 0)
    records = [(int(c.line[r]), c.element_bytes(r, 0), c.element_bytes(r, 1)) for r in range(c.n)]
    return records, [(b[0], b[1]) for b in c.bad], c.n_lines


@pytest.mark.parametrize("fmt, sep", [("tsv", b"\t"), ("csv", b",")])
def test_delimited_line_ends(fmt, sep):
    block = (b"a" + sep + b"b\r\n"          # 0: CRLF
             b"\r\n"                        # 1: blank
             b"\n"                          # 2: blank
             b"c\rd" + sep + b"\r\r\n"      # 3: a '\r' inside a cell is text, the last one ends the line
             b"\r\r\n"                      # 4: one cell "\r": not blank, too few fields
             b"e" + sep + b"\r\n"           # 5: an empty cell is missing
             b"f" + sep + b"g\r")           # 6: '\r' at the block's end ends the line
    records, bad, lines = tokenize(fmt, block, header=["a", "b"])
    assert records == [(0, [b"a"], [b"b"]), (3, [b"c\rd"], [b"\r"]), (5, [b"e"], []), (6, [b"f"], [b"g"])]
    assert bad == [(4, R_FIELDS)]
    assert lines == 7


def test_csv_quoted_cell_before_line_end():
    block = (b'"a,1",b\r\n'                 # 0: a quoted cell, then CRLF
             b'x,"y"\r\n'                   # 1: a quoted cell right before CRLF
             b'"x"\r\r\n'                   # 2: a '\r' that does not end the line is text after the quote
             b'"p","q"\r')                  # 3: ... and at the block's end it does
    records, bad, lines = tokenize("csv", block, header=["a", "b"])
    assert records == [(0, [b"a,1"], [b"b"]), (1, [b"x"], [b"y"]), (3, [b"p"], [b"q"])]
    assert bad == [(2, R_AFTER_QUOTE)]
    assert lines == 4


def test_jsonl_blanks_and_line_ends():
    block = (b'{"a": "x",\r"b": [1, "y"]}\r\n'  # 0: a '\r' inside the line is a blank
             b' \t\r\n'                          # 1: only blanks
             b'\r\n'                             # 2: blank
             b'{"a" :\t"z"} \r\r\n'              # 3: blanks after the object, the last '\r' ends the line
             b'{"a":\r\n'                        # 4: the line ends where a value should be
             b'\t{"b": [ ]}\r')                  # 5: '\r' at the block's end
    records, bad, lines = tokenize("jsonl", block)
    assert records == [(0, [b"x"], [b"1", b"y"]), (3, [b"z"], []), (5, [], [])]
    assert bad == [(4, R_JSON)]
    assert lines == 6
