"""sqlutil.arrow_column builds the same arrays as pyarrow.array (without importing pandas)."""

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from rtsql.sqlutil import arrow_column

INTS = st.lists(st.integers(-2**31, 2**31 - 1), max_size=70)


# no deadline: the first pa.array call imports pandas, when it is installed
@settings(deadline=None)
@given(INTS)
def test_integer_columns_equal_pyarrow(values):
    for numpy_type, arrow_type in ((np.int64, pa.int32()), (np.int32, pa.int64())):
        arr = np.array(values, numpy_type)
        assert arrow_column(arr, arrow_type).equals(pa.array(arr, arrow_type))


@settings(deadline=None)
@given(st.lists(st.floats(allow_nan=False), max_size=70))
def test_float_columns_equal_pyarrow(values):
    arr = np.array(values, np.float64)
    assert arrow_column(arr, pa.float64()).equals(pa.array(arr, pa.float64()))


@settings(deadline=None)
@given(st.lists(st.booleans(), max_size=70), st.integers(0, 7))
def test_boolean_columns_equal_pyarrow_at_any_offset(values, skip):
    # a slice starts inside a byte of the packed bits
    arr = np.array(values, bool)[skip:]
    assert arrow_column(arr, pa.bool_()).equals(pa.array(arr, pa.bool_()))
    assert arrow_column(arr, pa.bool_()).to_pylist() == arr.tolist()


def test_lists_built_on_columns_read_back_in_duckdb():
    import duckdb

    offsets = arrow_column(np.array([0, 2, 2, 5]), pa.int32())
    values = arrow_column(np.arange(5), pa.int32())
    table = pa.table({"k": arrow_column(np.array([7, 8, 9]), pa.int32()),
                      "l": pa.ListArray.from_arrays(offsets, values)})
    con = duckdb.connect()
    con.register("t", table)
    assert con.execute("select k, l from t order by k").fetchall() == [
        (7, [0, 1]), (8, []), (9, [2, 3, 4])]
