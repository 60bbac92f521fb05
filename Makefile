# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
# Both create the virtual environment on first use; nothing but Python is required.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Pinned, tested versions. Regenerate with `make constraints`.
CONSTRAINTS := requirements/constraints.txt

.PHONY: demo serve test lint audit bench-tiny bench-quality bench-speed constraints clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# PyPI's Linux torch wheel bundles CUDA (several GB). For a CPU-only machine point pip at
# PyTorch's CPU wheel index: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX_ARG) -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/moerec demo

# After `make demo`: serve its model and data on http://127.0.0.1:8000 (docs at /docs).
serve: $(VENV)/.installed
	$(BIN)/moerec serve --model .moerec-demo/models/demo \
		--database-url sqlite+aiosqlite:///.moerec-demo/moerec.db

test: $(VENV)/.installed-dev lint
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks deploy docs
	$(BIN)/ruff format --check src tests benchmarks deploy docs
	$(BIN)/lint-imports
	$(BIN)/mypy

# Every benchmark script once on a tiny input, so none of them rots (run by CI).
bench-tiny: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/quality.py --tiny --output-dir $(VENV)/bench-tiny
	$(BIN)/python benchmarks/quality.py --tiny --top-p 0.5,0.9 --output-dir $(VENV)/bench-tiny
	$(BIN)/python benchmarks/quality.py --tiny --seeds 1,2 --variants moe --output-dir $(VENV)/bench-tiny
	$(BIN)/python benchmarks/quality.py --tiny --time-context --variants moe --output-dir $(VENV)/bench-tiny
	$(BIN)/python benchmarks/quality.py --tiny --variants dense-params --append --output-dir $(VENV)/bench-tiny
	$(BIN)/python benchmarks/quality.py --tiny --variants moe --try model.num_heads=1 --try model.position_encoding=rotary,model.filter_mix=0.5 --output-dir $(VENV)/bench-tiny
	$(BIN)/python benchmarks/speed.py --tiny --output $(VENV)/bench-tiny/speed.json
	$(BIN)/python benchmarks/routing.py --tiny --output-dir $(VENV)/bench-tiny
	$(BIN)/python benchmarks/distributed.py --tiny --output $(VENV)/bench-tiny/distributed.json
	$(BIN)/python benchmarks/serving.py --tiny --output $(VENV)/bench-tiny/serving.json
	$(BIN)/python benchmarks/soak.py --tiny --output $(VENV)/bench-tiny/soak.json
	$(BIN)/python benchmarks/scale.py --tiny --output $(VENV)/bench-tiny/scale.json
	$(BIN)/python benchmarks/plots.py --output-dir $(VENV)/bench-tiny/plots

# The full benchmarks (long: run on demand, with nothing else running).
# DATA_ROOT is the folder holding amazon-beauty/, ml-100k/, ...
bench-quality: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/quality.py --data-root $(DATA_ROOT) --docs docs/benchmarks.md

bench-speed: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/speed.py --data $(DATA_ROOT)/amazon-beauty/Beauty.txt

# One trained Beauty MoE served at top-1..4 and top-p: quality, FLOPs and latency per routing.
.PHONY: bench-routing
bench-routing: $(VENV)/.installed-dev
	$(BIN)/moerec train --data $(DATA_ROOT)/amazon-beauty/Beauty.txt \
		-c configs/quality-beauty.yaml --set train.num_threads=1 --name beauty
	$(BIN)/python benchmarks/routing.py --model models/beauty \
		--data $(DATA_ROOT)/amazon-beauty/Beauty.txt --docs docs/benchmarks.md

# HTTP load test of `moerec serve` with wrk (apt-get install wrk); rewrites its docs section.
.PHONY: bench-serving
bench-serving: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/serving.py --data $(DATA_ROOT)/amazon-beauty/Beauty.txt \
		--config configs/quality-beauty.yaml --docs docs/benchmarks.md

# 10 minutes of mixed traffic against `moerec serve`: error rate, p99, memory growth of the
# service (target < 5% after warm-up); rewrites its docs section. Waits for a quiet machine.
.PHONY: bench-soak
bench-soak: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/soak.py --data $(DATA_ROOT)/amazon-beauty/Beauty.txt \
		--config configs/quality-beauty.yaml --docs docs/benchmarks.md

# Known vulnerabilities in the pinned dependencies. pip-audit asks PyPI's JSON API (or OSV):
# run it where that is reachable; a registry mirror alone cannot answer it.
audit: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet pip-audit
	$(BIN)/pip-audit --strict -r $(CONSTRAINTS)

# The documentation site in site/ (offline: no theme or script from the internet). The
# configuration reference is generated: python docs/gen_config_reference.py rewrites it.
.PHONY: docs
docs: $(VENV)/.installed-dev
	$(BIN)/python docs/gen_config_reference.py --check
	$(BIN)/mkdocs build --strict

constraints: $(VENV)/.installed-dev
	{ head -2 $(CONSTRAINTS); $(BIN)/python -m pip freeze --exclude-editable | grep -v "^moerec" | sed "s/+cpu$$//"; } > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

# Offline checks of deploy/ (Dockerfile, Kubernetes, Prometheus, Alertmanager, Grafana).
# Python tools in their own virtualenv (requirements/deploy.txt); promtool and amtool from
# Debian's prometheus and prometheus-alertmanager packages. See docs/operations.md.
DEPLOY_VENV ?= .venv-deploy
DEPLOY_BIN  := $(DEPLOY_VENV)/bin
K8S_VERSION ?= 1.32.0
DEPLOY_BUILD := $(DEPLOY_VENV)/k8s-build

$(DEPLOY_VENV)/.installed: requirements/deploy.txt requirements/deploy-constraints.txt
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_BIN)/python -m pip install --quiet --upgrade pip
	$(DEPLOY_BIN)/python -m pip install --quiet -r requirements/deploy.txt \
		-c requirements/deploy-constraints.txt
	touch $@

.PHONY: lint-deploy deploy-constraints
lint-deploy: $(DEPLOY_VENV)/.installed
	$(DEPLOY_BIN)/yamllint --strict .yamllint deploy
	$(DEPLOY_BIN)/hadolint deploy/Dockerfile
	$(DEPLOY_BIN)/checkov --quiet --compact --skip-download --framework dockerfile -f deploy/Dockerfile
	rm -rf $(DEPLOY_BUILD) && mkdir -p $(DEPLOY_BUILD)
	for overlay in dev prod; do \
		$(DEPLOY_BIN)/kubectl kustomize deploy/k8s/overlays/$$overlay > $(DEPLOY_BUILD)/$$overlay.yaml || exit 1; \
		$(DEPLOY_BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) \
			$(DEPLOY_BUILD)/$$overlay.yaml > $(DEPLOY_BUILD)/$$overlay.log; status=$$?; \
		cat $(DEPLOY_BUILD)/$$overlay.log; \
		if [ $$status -ne 0 ] || grep -q . $(DEPLOY_BUILD)/$$overlay.log; then exit 1; fi; \
		echo "$$overlay: every resource valid for Kubernetes $(K8S_VERSION)"; \
	done
	$(DEPLOY_BIN)/checkov --quiet --compact --skip-download --framework kubernetes -d $(DEPLOY_BUILD)
	$(DEPLOY_BIN)/python deploy/check_monitoring.py config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
	amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml \
		--verify.receivers=oncall-critical severity=critical
	amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml \
		--verify.receivers=slack-warnings severity=warning
	$(DEPLOY_BIN)/python deploy/check_monitoring.py promql

deploy-constraints: $(DEPLOY_VENV)/.installed
	{ head -1 requirements/deploy-constraints.txt; $(DEPLOY_BIN)/python -m pip freeze; } \
		> requirements/deploy-constraints.txt.new
	mv requirements/deploy-constraints.txt.new requirements/deploy-constraints.txt

clean:
	rm -rf $(VENV) .moerec-demo runs models
