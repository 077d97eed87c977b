"""pytest's view of the checkout (doctests of streamfm/ and README.md, tests/)."""

import importlib.util

collect_ignore = []
_NO_SPARK = importlib.util.find_spec("pyspark") is None
if _NO_SPARK:
    # streamfm/spark.py imports pyspark (the [spark] extra, ~450 MB, with a JRE):
    # `make test-spark` installs both and runs its doctests with tests/test_spark.py
    collect_ignore.append("streamfm/spark.py")


def pytest_report_header(config):
    if _NO_SPARK:
        return "pyspark not installed: streamfm/spark.py's doctests and tests/test_spark.py run in `make test-spark`"
