# `make demo` and `make test` create/refresh .venv by themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medseg-installed
GUI_STAMP := $(VENV)/.medseg-gui-installed
# The napari GUI tests run on a virtual X display (napari's OpenGL canvas needs one).
XVFB   := xvfb-run -a --server-args="-screen 0 1280x1024x24"
OUT    ?= demo_output

.PHONY: demo test test-fast venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml .ci/install_torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	bash .ci/install_torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# napari + Qt (the `napari` extra) and Xvfb with Qt's X11 libraries (.ci/install_gui.sh: apt, only what is missing)
$(GUI_STAMP): $(STAMP) .ci/install_gui.sh
	bash .ci/install_gui.sh
	$(BIN)/python -m pip install -q -e ".[dev,napari]"
	touch $(GUI_STAMP)

demo: $(STAMP)
	$(BIN)/medseg demo --out $(OUT)

test: $(GUI_STAMP)
	$(XVFB) $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not dist and not gui"

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build *.egg-info
