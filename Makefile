# Every target creates or refreshes .venv as needed; running one twice does no extra work.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint test test-fast repro exp exp-show tables clean bench sweep dvc-deps plots

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[pipeline,dev]'
	touch $(STAMP)

# Style and types, as CI runs them before the tests (.ci/run): lint, format check, mypy on the library.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy simsc

# Test processes (pytest-xdist). Most slow tests wait on servers, clusters and subprocesses, so
# two processes finish the suite well ahead of one even on 2 cores; the Ray cluster tests stay on
# one process (xdist_group "ray"). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The whole suite, as CI runs it (.ci/run); the slowest tests are listed at the end.
test: install
	$(PYTEST) --durations=20

# The quick tier for your own loop: everything not marked slow (real servers, clusters,
# dvc repro, large backbones stay in `make test`).
test-fast: install
	$(PYTEST) -m "not slow" -x

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# dvc runs the stage commands through the shell: put the venv first on PATH.
repro: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

# One DVC experiment that does not leak into the next: make exp ARGS="-n lr2x -S ++train.lr_backbone=2e-4"
# (dvc exp run ARGS, then params.yaml restored byte for byte: pipeline/exp.py).
exp: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pipeline.exp $(ARGS)

# Rewrite each stage's code deps in dvc.yaml from the imports (a test fails when it is stale).
dvc-deps: install
	$(PY) -m pipeline.dvc_deps

# The experiments side by side in a 120-column terminal: only the params that differ, and the
# headline metrics (PCK@0.1 of one evaluation set, final beta_eff); everything: dvc exp show.
# --drop keeps only the engine params (model, data, train) and the headline, less the bookkeeping
# params; --only-changed then leaves the params that differ; --keep protects the headline from it.
# DVC names a metric by its file when several files share the key (the four pck.json).
EXP_SHOW_SET ?= test_160
EXP_SHOW_KEEP := ^Experiment$$|^reports/eval/$(EXP_SHOW_SET)/pck\.json:pck@0\.1$$|^final\.beta_eff$$
EXP_SHOW_DROP := ^(?!Experiment$$|final\.beta_eff$$|reports/eval/$(EXP_SHOW_SET)/pck\.json:pck@0\.1$$|(model|data|train)\.).*|^train\.(num_threads|out_dir|checkpoint_every_steps|val_max_pairs|progress|progress_every_s|log_every_steps|device)$$|^data\.(root|cache_dir|workers)$$
exp-show: install
	$(VENV)/bin/dvc exp show --no-pager --only-changed --keep '$(EXP_SHOW_KEEP)' --drop '$(EXP_SHOW_DROP)' $(ARGS)

# The paper's tables (Tab. 1-3, supp. Tab. 2-3) from the finished runs of the MLflow experiment:
# reports/tables/tables.{md,html,json}. make tables ARGS="--experiment simsc-sweeps"
tables: install
	$(PY) -m pipeline.tables $(ARGS)

# dvc plots diff as a page that draws offline (Vega inline, pipeline/plots.py); opens nothing:
# make plots [ARGS="HEAD~1 exp-name"] -> dvc_plots/index.html
plots: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pipeline.plots diff $(ARGS)

# A Ray Tune sweep: make sweep SPEC=configs/sweeps/single_vs_mlp.yaml [ARGS="--profile full --resume"]
SPEC ?= configs/sweeps/single_vs_mlp.yaml
sweep: install
	$(PY) -m pipeline.sweep $(SPEC) $(ARGS)

# Performance benchmarks (bench/RESULTS.md): each prints a table and writes bench/results/*.json.
# `make bench QUICK=1` runs smaller versions (no dino_vitb8, fewer repetitions) in a few minutes.
COMMA := ,
bench: install
	$(PY) -m bench.bench_overhead $(if $(QUICK),--backbones resnet50$(COMMA)resnet101 --reps 2,--reps 3)
	$(PY) -m bench.bench_loss_memory
	$(PY) -m bench.bench_eval $(if $(QUICK),--pairs 16 --reps 2,--reps 3)
	$(PY) -m bench.bench_data_vs_step $(if $(QUICK),--backbones resnet18 --reps 1,)
	$(PY) -m bench.bench_scaling $(if $(QUICK),--backbone resnet18 --reps 2,)
	$(PY) -m bench.bench_options $(if $(QUICK),--backbone resnet18 --reps 2,)
	$(PY) -m bench.bench_ray_overhead
