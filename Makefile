# The two commands of the README: `make run` (the whole pipeline, locally) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv test run images lock clean

$(VENV)/.installed: setup.cfg requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[tf,pipeline,test]'
	touch $@

venv: $(VENV)/.installed

# The real-data tests read MNIST from $$MNIST_DATA_DIR. Unset, that is ../shared/data/mnist when it is there (as
# in CI), else .cache/mnist, which mnist-download fills from the CVDF mirror once and verifies on every run.
CACHED_MNIST := $(CURDIR)/.cache/mnist
MNIST_DATA_DIR ?= $(if $(wildcard ../shared/data/mnist/*.gz),$(abspath ../shared/data/mnist),$(CACHED_MNIST))
export MNIST_DATA_DIR

test: venv
	$(if $(filter $(CACHED_MNIST),$(MNIST_DATA_DIR)),$(BIN)/mnist-download --data_dir $(CACHED_MNIST))
	$(BIN)/python -m pytest -v -rs --durations=15

# e.g. make run RUN_ARGS='--source /path/to/mnist --param train_epochs=1'
RUN_ARGS ?=
run: venv
	$(BIN)/python pipelines/compile.py
	$(BIN)/python pipelines/run_local.py $(RUN_ARGS)

# The images, tagged as pipelines/compile.py names them (images/README.md); e.g. make images KINDS='cpu gpu tpu'.
KINDS ?= cpu
images: venv
	$(BIN)/python images/build.py $(addprefix --kind ,$(KINDS))

# Re-pin requirements.lock from a fresh resolve of setup.cfg.
lock:
	rm -rf /tmp/mnistkit-lock && $(PYTHON) -m venv /tmp/mnistkit-lock
	/tmp/mnistkit-lock/bin/pip install -q '.[tf,pipeline,test]'
	(head -2 requirements.lock; /tmp/mnistkit-lock/bin/pip freeze | grep -v '^mnistkit') > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) local_runs
