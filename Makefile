# `make test`, `make reproduce` and `make lab` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Exactly these builds; pyproject.toml only asks for torch>=2.11 so other machines may use theirs.
TORCH  := torch==2.14.1 torchvision==0.29.1
# Where this workplace keeps the full CIFAR-10; `make data` links it when data/ has none.
SHARED_DATA ?= ../shared/data/cifar10.npz

# The study's profile for `make reproduce`: smoke | cpu | study | gpu | imagenet (dtlib/study/settings.py PROFILES).
PROFILE ?= cpu
# CIFAR-10 in data/, which every profile but imagenet (an ImageFolder in data/imagenet) trains on
DATA := $(if $(filter imagenet,$(PROFILE)),,data)
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))

.PHONY: install test test-other-precision reproduce fill status pack bench figures data mini readme lab clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) -e '.[test]'
# the notebooks' kernel `dtlib`, inside the venv, where papermill, nbval and `make lab` look for it
	$(PY) -m ipykernel install --sys-prefix --name dtlib --display-name "Python (dtlib)"
	touch $@

test: install
	$(PY) -m pytest -q

# The precision-sensitive tests (marker `precision`) once more under the precision this machine's
# precision=auto does not pick, so one machine proves both kinds of CPU (with and without bf16
# instructions). Where that is bf16 without bf16 instructions (an AVX2 CPU: convolutions ~30x slower)
# the tests also marked `heavy` are left out, as its first line says (scripts/test_other_precision.py).
test-other-precision: install
	$(PY) scripts/test_other_precision.py

# Full CIFAR-10 into data/: keep one that is there, else link this workplace's copy, else
# `make data DOWNLOAD=1` lets torchvision download it.
data:
	@if [ -e data/cifar10.npz ] || [ -d data/cifar-10-batches-py ]; then :; \
	elif [ -f $(SHARED_DATA) ]; then ln -s "$$(cd "$$(dirname $(SHARED_DATA))" && pwd)/$$(basename $(SHARED_DATA))" data/cifar10.npz && echo "linked data/cifar10.npz -> $(SHARED_DATA)"; \
	elif [ -n "$(DOWNLOAD)" ]; then $(PY) -m dtlib download data; \
	else echo "No CIFAR-10 in data/: place cifar10.npz there (see data/README.md) or run 'make data DOWNLOAD=1'."; exit 1; fi

# The whole study as a papermill batch: executed notebooks in notebooks/executed/, results in
# results/<notebook>-$(PROFILE).{json,csv}, figures in figures/, claims in results/claims-$(PROFILE).md.
reproduce: install $(DATA)
	$(UNPACK)
	mkdir -p notebooks/executed
	for nb in $(NOTEBOOKS); do \
	  $(VENV)/bin/papermill --cwd notebooks -p profile $(PROFILE) $$nb \
	    notebooks/executed/$$(basename $$nb .ipynb)-$(PROFILE).ipynb || exit 1; \
	done
	$(PY) -m dtlib.figures

# The run cache of the notebooks (all, or NB="02_k_ablation 03_cross_norm") filled before the batch:
# training alone at full threads, evaluations in LANES processes (dtlib/study/fill.py); then `make reproduce`.
LANES ?= 2
fill: install $(DATA)
	$(UNPACK)
	$(PY) -m dtlib.study.fill --lanes $(LANES) $(PROFILE) $(NB)

# How much of the plan the run cache holds, runcache/$(PROFILE) unpacked into it first (as `make fill` does); runs nothing.
status: install
	$(UNPACK)
	$(PY) -m dtlib.study.fill --status $(PROFILE) $(NB)

# A fill outlives the machine it ran on: `make pack` copies what the run cache holds of the plan
# (finished weights, evaluations, the fits of evaluations under way) into $(CARRY), a folder to commit;
# `make fill` and `make reproduce` copy it back into runs/ first (dtlib/study/carry.py). CARRY= skips that.
CARRY ?= runcache/$(PROFILE)
UNPACK = $(if $(CARRY),@if [ -d $(CARRY) ]; then $(PY) -m dtlib.study.carry unpack $(CARRY); fi)
pack: install
	$(if $(CARRY),,$(error CARRY is empty: make pack needs the folder to pack into))
	$(PY) -m dtlib.study.carry pack $(CARRY) $(PROFILE) $(NB)

# What each method costs, as ratios to standard training (docs/protocol.md, C3-C5): results/bench-<device>.{json,md}.
# Settings as key=value, e.g. `make bench ARGS="steps=50 batch_size=256"`; about 2 minutes on 2 CPU cores.
bench: install
	$(PY) -m dtlib.bench $(ARGS)

# Redraw every figure and the claims tables from results/ (no training).
figures: install
	$(PY) -m dtlib.figures

# Regenerate data/cifar10-mini.npz (byte-identical) from the full set.
mini: install data
	$(PY) scripts/make_mini.py data/cifar10.npz data/cifar10-mini.npz

# Copy the committed results tables into README.md (never typed by hand).
readme: install
	$(PY) scripts/update_readme.py

# The interactive entry point; --user so a JupyterLab installed elsewhere offers the kernel too. Served from
# the project folder so the notebooks' links to ../docs resolve; it opens on notebooks/.
lab: install
	$(PY) -m ipykernel install --user --name dtlib --display-name "Python (dtlib)"
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)

clean:
	rm -rf runs .pytest_cache .hypothesis
