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

# Spark tests: pyspark (pinned, ~450 MB) into the venv and a JRE 17 when there is no
# java (Debian's package; needs root), then tests/test_spark.py on local[2].
SPARK_STAMP := $(VENV)/.spark-stamp
$(SPARK_STAMP): $(STAMP)
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null; fi
	$(BIN)/python -m pip install --quiet 'pyspark==4.3.0'
	touch $(SPARK_STAMP)

test-spark: $(SPARK_STAMP)
	$(BIN)/python -m pytest tests/test_spark.py

bench: $(STAMP)
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(VENV) out .pytest_cache
