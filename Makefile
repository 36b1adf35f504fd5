# imagegen: `make run` serves on http://127.0.0.1:8080; `make test` runs the whole suite (what CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp

.PHONY: install run test lint format chromium bench-deps clean firebase-tools functions-venv emulators

# Firebase (docs/firebase.md): the Firebase CLI in a project-local folder, and the Debian Firestore
# emulator jar behind a launcher jar the CLI can run (it runs `java -jar`; Debian's jar has no
# Main-Class). 13.x is the last CLI line whose emulators start on Java 17; 14+ want Java 21.
FIREBASE_DIR := .firebase
FIREBASE_TOOLS_VERSION := 13.35.1
FIREBASE := $(FIREBASE_DIR)/tools/node_modules/.bin/firebase
FIRESTORE_EMULATOR_JAR ?= /usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar
FIRESTORE_LAUNCHER := $(FIREBASE_DIR)/cloud-firestore-emulator.jar
FIRESTORE_MAIN := com.google.cloud.datastore.emulator.firestore.CloudFirestore
FUNCTIONS_VENV := functions/venv

install: $(DEV_STAMP) chromium

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "imagegen needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `make run` needs only imagegen itself; the tests add the dev tools, moto, the Firebase SDKs.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip uninstall --quiet --yes imagegen 2>/dev/null || true  # the distribution's old name
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(RUN_STAMP) $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/imagegen serve

# Two workers, each taking whole files (module fixtures such as one server per file stay together).
TEST_WORKERS ?= 2
test: $(DEV_STAMP) chromium
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench functions
	$(BIN)/ruff format --check src tests bench functions
	$(BIN)/mypy
	$(BIN)/mypy functions/main.py

format: $(DEV_STAMP)
	$(BIN)/ruff format src tests bench functions
	$(BIN)/ruff check --fix src tests bench functions

# The console's browser tests (tests/browser) drive Debian's Chromium through Playwright; Playwright's
# own browser download cannot work here. Installed when missing and root; otherwise those tests skip.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update && apt-get install -y chromium; } \
		|| echo "chromium is missing (not root?): the browser tests will skip"

# The HTTP benchmarks drive load with wrk (Debian's package): see bench/README.md.
bench-deps: $(DEV_STAMP)
	apt-get update && apt-get install -y wrk
	$(BIN)/pip install --quiet -e '.[dev,bench]'

firebase-tools: $(FIREBASE) $(FIRESTORE_LAUNCHER)

$(FIREBASE):
	npm install --prefix $(FIREBASE_DIR)/tools --no-save --no-audit --no-fund --loglevel=error \
		firebase-tools@$(FIREBASE_TOOLS_VERSION)

$(FIRESTORE_LAUNCHER): | $(BIN)/python
	mkdir -p $(FIREBASE_DIR)
	$(BIN)/python -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], "w"); \
		z.writestr("META-INF/MANIFEST.MF", f"Manifest-Version: 1.0\nMain-Class: {sys.argv[3]}\nClass-Path: file:{sys.argv[2]}\n\n"); \
		z.close()' $@ $(FIRESTORE_EMULATOR_JAR) $(FIRESTORE_MAIN)

# The functions' own virtual environment, as Cloud Build makes it: imagegen's wheel (what firebase.json's
# predeploy step builds) and functions/requirements.txt. The Firebase CLI loads main.py from it.
functions-venv: $(FUNCTIONS_VENV)/.stamp

$(FUNCTIONS_VENV)/.stamp: pyproject.toml functions/requirements.txt $(shell find src -name '*.py' -o -name '*.html')
	$(PYTHON) -m venv $(FUNCTIONS_VENV)
	rm -rf functions/vendor
	$(FUNCTIONS_VENV)/bin/python -m pip wheel --quiet --no-deps --wheel-dir functions/vendor .
	cd functions && venv/bin/python -m pip install --quiet -r requirements.txt
	touch $@

# The Firestore and Functions emulators with the repository's firebase.json (ports 8081 and 5001).
# The functions declare the image store's secrets; locally images go to a folder, so the emulator
# gets placeholders from functions/.secret.local rather than asking Secret Manager for them.
LOCAL_SECRETS := AWS_ACCESS_KEY_ID=unused-locally\nAWS_SECRET_ACCESS_KEY=unused-locally\n
emulators: firebase-tools functions-venv
	test -f functions/.secret.local || printf '$(LOCAL_SECRETS)' > functions/.secret.local
	FIRESTORE_EMULATOR_BINARY_PATH=$(abspath $(FIRESTORE_LAUNCHER)) \
		$(FIREBASE) emulators:start --only firestore,functions --project demo-imagegen

clean:
	rm -rf $(VENV) var .pytest_cache $(FIREBASE_DIR) $(FUNCTIONS_VENV) functions/vendor build
