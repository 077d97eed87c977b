# Quick start:  make demo   (set up .venv, train and evaluate on data/sample)
#               make test   (set up .venv if needed, run the tests)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    := out/demo

.PHONY: venv demo test test-spark bench clean

$(STAMP): pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@mkdir -p $(OUT)
	@echo "== logistic regression: fm_train -dim 1,1,0"
	cat data/sample/train.txt | $(BIN)/fm_train -m $(OUT)/lr.txt -dim 1,1,0 -core 2
	cat data/sample/test.txt | $(BIN)/fm_predict -m $(OUT)/lr.txt -out $(OUT)/lr.pred -core 2 --metrics
	@echo "== factorization machine: fm_train -dim 1,1,8"
	cat data/sample/train.txt | $(BIN)/fm_train -m $(OUT)/fm.txt -dim 1,1,8 -core 2
	cat data/sample/test.txt | $(BIN)/fm_predict -m $(OUT)/fm.txt -out $(OUT)/fm.pred -core 2 --metrics
	$(BIN)/fm_dump info $(OUT)/fm.txt

test: $(STAMP)
	$(BIN)/python -m pytest

# Spark tests (issue 14): pyspark, pinned, into the venv (~450 MB), and when there is no
# java 17+ a JRE from Debian's packages (needs root, as CI has); then tests/test_spark.py
# on local[2] (~1 min). Without a JRE the tests are skipped, with the reason printed (-rs).
PYSPARK     := pyspark==4.3.0
SPARK_STAMP := $(VENV)/.spark-stamp
$(SPARK_STAMP): $(STAMP)
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "make test-spark: java $${v:-missing}: installing openjdk-17-jre-headless"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null; } || \
	  echo "make test-spark: no JRE could be installed: the Spark tests will be skipped" >&2; fi
	$(BIN)/python -m pip install --quiet '$(PYSPARK)'
	touch $(SPARK_STAMP)

# exit 5 is pytest's "no test ran": the whole file skipped (no JRE), reason printed by -rs
test-spark: $(SPARK_STAMP)
	$(BIN)/python -m pytest -rs tests/test_spark.py streamfm/spark.py || [ $$? -eq 5 ]

bench: $(STAMP)
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(VENV) out .pytest_cache
