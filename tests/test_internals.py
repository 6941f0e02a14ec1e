"""One fast test per MLflow, Optuna or optuna-dashboard internal, or non-obvious behaviour, that the study
relies on.

Each test names the module that relies on it. An upgrade that renames a private attribute, moves a
module or changes what a call does fails here first, with the name of what broke, rather than
somewhere deep in a study run. CI runs this file again on the newest allowed MLflow and Optuna
(.ci/run).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
import types
import warnings
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from study import storage as study_storage


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One MLflow store for the module (creating one takes seconds), made as the study makes a new one."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    study_storage._create_mlflow_schema(f"sqlite:///{path}")
    return path


@pytest.fixture
def client(store, monkeypatch) -> MlflowClient:
    uri = f"sqlite:///{store}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


@pytest.fixture
def experiment(client, request) -> str:
    return client.create_experiment(request.node.name)


# ---------------------------------------------------------------- MLflow


def test_mlflow_eprint_looks_up_the_logging_stream_when_it_prints():
    """study.commands.quiet_logging silences MLflow's notes by replacing `logging_utils.MLFLOW_LOGGING_STREAM`."""
    from mlflow.utils import logging_utils

    saved, stream = logging_utils.MLFLOW_LOGGING_STREAM, io.StringIO()
    logging_utils.MLFLOW_LOGGING_STREAM = stream
    try:
        logging_utils.eprint("Successfully registered model 'x'.")
    finally:
        logging_utils.MLFLOW_LOGGING_STREAM = saved
    assert stream.getvalue() == "Successfully registered model 'x'.\n"


def test_sqlalchemy_store_creates_the_schema_and_disposes_its_engine(store):
    """study.storage._create_mlflow_schema: `SqlAlchemyStore(url, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)`
    creates every table and the Default experiment; `_dispose_engine()` lets the file be moved into place."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH

    with sqlite3.connect(store) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        default = db.execute("SELECT name, artifact_location FROM experiments WHERE experiment_id = 0").fetchone()
    assert {"experiments", "runs", "metrics", "params", "tags", "logged_models", "alembic_version"} <= tables
    assert default[0] == "Default"
    # The artifact root MLflow gives a local store, resolved from the working folder.
    assert Path(default[1]) == Path(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).resolve() / "0"


def test_run_context_registry_adds_the_source_tags_a_fluent_run_gets():
    """study.tracking.Tracker.trial creates trial runs with MlflowClient.create_run, which adds no context tags;
    `mlflow.tracking.context.registry.resolve_tags` adds them (user, source) and keeps the given ones."""
    from mlflow.tracking.context import registry

    tags = registry.resolve_tags({"optuna_trial_number": "3", "mlflow.runName": "trial-003"})
    assert tags["optuna_trial_number"] == "3" and tags["mlflow.runName"] == "trial-003"
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(tags)


def test_mlflow_tags_the_ui_reads_keep_their_names(client, experiment):
    """study.tracking and study.tracking.summary write these tags by name: the UI nests runs by the parent tag and shows
    the note as the run's description."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

    assert (MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE) == (
        "mlflow.parentRunId", "mlflow.runName", "mlflow.note.content")
    parent = client.create_run(experiment, run_name="study").info.run_id
    child = client.create_run(experiment, tags={MLFLOW_PARENT_RUN_ID: parent, MLFLOW_RUN_NAME: "trial-000"})
    assert child.info.run_name == "trial-000"
    found = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert [run.info.run_id for run in found] == [child.info.run_id]


def test_search_runs_filters_on_the_status_attribute(client, experiment):
    """study.tracking.recovery.end_unwritten_trial_runs finds the runs left open with
    "attributes.status = 'RUNNING'"."""
    running = client.create_run(experiment).info.run_id
    ended = client.create_run(experiment).info.run_id
    client.set_terminated(ended, "KILLED")
    found = client.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=5000)
    assert [run.info.run_id for run in found] == [running]
    assert client.get_run(ended).info.status == "KILLED"


def test_a_prepared_logged_model_is_logged_by_run_id_off_the_active_run(client, experiment):
    """study.tracking.writer: `mlflow.initialize_logged_model` prepares a PENDING model on the training thread, and
    `mlflow.models.Model.log(None, flavor, run_id=..., model_id=..., ...)` writes it on the writer's thread
    to that run, without starting an active run there, READY afterwards; metadata and extra keywords reach
    the flavor."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model

    run_id = client.create_run(experiment, run_name="trial-000").info.run_id
    logged = mlflow.initialize_logged_model(name="trial-000", source_run_id=run_id, params={"depth": "2"},
                                            experiment_id=experiment)
    assert logged.status == LoggedModelStatus.PENDING
    received = {}

    def save_model(path, mlflow_model, model, pip_requirements=None):
        received.update(model=model, pip_requirements=pip_requirements)
        os.makedirs(path)
        Path(path, "weights.txt").write_text(model)
        mlflow_model.add_flavor("fake", data="weights.txt")
        mlflow_model.save(os.path.join(path, "MLmodel"))

    flavor = types.ModuleType("fake_flavor")
    flavor.save_model = save_model
    info = Model.log(None, flavor, name="trial-000", run_id=run_id, model_id=logged.model_id, model="weights",
                     metadata={"input": "images"}, step=2, pip_requirements=["keras==3.0"])
    assert mlflow.active_run() is None
    assert received == {"model": "weights", "pip_requirements": ["keras==3.0"]}
    assert info.model_uri == f"models:/{logged.model_id}" and info.metadata == {"input": "images"}
    assert client.get_logged_model(logged.model_id).status == LoggedModelStatus.READY
    assert client.get_logged_model(logged.model_id).source_run_id == run_id


def test_a_pending_logged_model_can_be_finalized_failed(client, experiment):
    """study.tracking.runs.fail_pending_model: a model whose write failed is finalized FAILED, not left PENDING."""
    from mlflow.entities import LoggedModelStatus

    run_id = client.create_run(experiment).info.run_id
    logged = mlflow.initialize_logged_model(name="trial-000", source_run_id=run_id, experiment_id=experiment)
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
    assert client.get_logged_model(logged.model_id).status == LoggedModelStatus.FAILED


def test_allow_file_store_is_off_unless_set(monkeypatch):
    """study.storage.check_tracking_store refuses a folder store unless MLFLOW_ALLOW_FILE_STORE is true."""
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert not MLFLOW_ALLOW_FILE_STORE.get()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert MLFLOW_ALLOW_FILE_STORE.get()


def test_a_client_knows_its_tracking_uri(store):
    """study.report.links reads the store a report's client serves from `MlflowClient.tracking_uri`."""
    uri = f"sqlite:///{store}"
    assert MlflowClient(uri).tracking_uri == uri


def test_the_ui_serves_the_hash_routes_the_report_links_to():
    """study.report.links builds `#/experiments/<id>`, `#/experiments/<id>/runs/<run id>` and
    `#/models/<name>/versions/<version>`: the routes of the UI bundled with MLflow, under a hash router."""
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "".join(path.read_text(errors="replace") for path in bundle.glob("main.*.js"))
    assert "createHashRouter" in text
    for route in ('"/experiments/:experimentId"', '"/experiments/:experimentId/runs/:runUuid"',
                  '"/models/:modelName/versions/:version"'):
        assert route in text, route


def test_a_numpy_dataset_keeps_the_name_and_digest_given(client, experiment):
    """study.tracking.runs.log_dataset logs an empty array under the dataset's own name and digest."""
    import numpy as np

    dataset = mlflow.data.from_numpy(np.zeros((0, 16, 16, 3), dtype=np.uint8), name="shapes", digest="abc123")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_input(dataset, context="training")
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest, i.tags[0].value) for i in inputs] == [("shapes", "abc123", "training")]


# ---------------------------------------------------------------- Optuna


def test_pruners_keep_their_settings_where_pruning_reads_them():
    """study.pruning.read_epochs reads the pruners' private settings to know which epochs a pruner reads."""
    median = optuna.pruners.MedianPruner(n_startup_trials=6, n_warmup_steps=3)
    assert isinstance(median, optuna.pruners.PercentilePruner) and median._n_warmup_steps == 3
    halving = optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=4, min_early_stopping_rate=1)
    assert (halving._min_resource, halving._reduction_factor, halving._min_early_stopping_rate) == (2, 4, 1)
    hyperband = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
    assert (hyperband._min_resource, hyperband._reduction_factor) == (1, 3)
    assert not hasattr(hyperband, "_min_early_stopping_rate")  # its brackets start at rate 0, as pruning assumes
    assert optuna.pruners.HyperbandPruner(min_resource="auto")._min_resource == "auto"


def test_rdb_storage_takes_the_heartbeat_settings_and_has_an_engine(tmp_path):
    """study.storage.open_optuna_storage passes heartbeat_interval, grace_period, the stale-trial callback,
    engine_kwargs and skip_table_creation; _create_optuna_schema disposes `RDBStorage.engine`."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 5}},
                                             heartbeat_interval=2, grace_period=6,
                                             heartbeat_stale_trial_callback=lambda study, trial: None)
    assert (storage.heartbeat_interval, storage.grace_period) == (2, 6)
    storage.engine.dispose()
    reader = optuna.storages.RDBStorage(url, skip_table_creation=True)
    assert reader.get_all_studies() == []


def test_a_stale_trial_is_failed_and_handed_to_the_callback(tmp_path):
    """study.storage.fail_stale_trials and study.tracking.recovery.end_stale_trial_run: a RUNNING trial whose heartbeat
    is older than the grace period is failed, and the callback gets (study, the trial) with its user attrs."""
    called = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1,
                                             grace_period=1,
                                             heartbeat_stale_trial_callback=lambda s, t: called.append((s, t)))
    study = optuna.create_study(storage=storage)
    with warnings.catch_warnings():
        # The study's trials beat from Study.optimize; here one beat is recorded by hand.
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        trial = study.ask()
    trial.set_user_attr("mlflow_run_id", "abc")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.2)
    study_storage.fail_stale_trials(study)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert [(s.study_name, t.number, t.user_attrs["mlflow_run_id"]) for s, t in called] == [
        (study.study_name, 0, "abc")]


def test_metric_names_are_stored_in_the_study(tmp_path):
    """study.describe names the objective with the experimental `Study.set_metric_names`, which
    optuna-dashboard shows instead of "Objective 0"."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_accuracy"])
    assert optuna.load_study(study_name="s", storage=url).metric_names == ["val_accuracy"]


def test_an_enqueued_trial_carries_its_user_attrs_while_waiting(tmp_path):
    """study.space.presets_to_train finds queued presets by the user attribute given to `enqueue_trial`."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study.enqueue_trial({"x": 2}, user_attrs={"preset": "seed-initial"})
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs for t in waiting] == [{"preset": "seed-initial"}]
    trial = study.ask()
    assert trial.suggest_int("x", 0, 5) == 2 and trial.user_attrs == {"preset": "seed-initial"}


def test_fanova_on_added_trials_is_deterministic_for_a_seed():
    """study.importance evaluates fANOVA on a scratch study of trials made with `create_trial`/`add_trial`;
    the same seed gives the same importances, so the report and the parent run agree."""
    dists = {"a": optuna.distributions.FloatDistribution(0, 1),
             "b": optuna.distributions.CategoricalDistribution([8, 16, 32])}

    def importances():
        scratch = optuna.create_study(direction="maximize")
        for i in range(12):
            a, b = i / 11, (8, 16, 32)[i % 3]
            scratch.add_trial(optuna.trial.create_trial(params={"a": a, "b": b}, distributions=dists,
                                                        value=3 * a + (b == 16)))
        return optuna.importance.get_param_importances(
            scratch, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))

    first = importances()
    assert first == importances()
    assert set(first) == {"a", "b"} and first["a"] > first["b"] and sum(first.values()) == pytest.approx(1)


# ---------------------------------------------------------------- optuna-dashboard


def _dashboard_get(storage, path: str) -> dict:
    """GET `path` from optuna-dashboard's JSON API over `storage`, as its page asks it, in this process."""
    from wsgiref.util import setup_testing_defaults

    dashboard = pytest.importorskip("optuna_dashboard")
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD="GET")
    status = []
    body = b"".join(dashboard.wsgi(storage)(environ, lambda code, headers, exc_info=None: status.append(code)))
    assert status == ["200 OK"], (status, body[:300])
    return json.loads(body)


def test_the_dashboard_shows_the_note_objective_name_and_attributes_the_study_writes(tmp_path):
    """study.describe writes optuna-dashboard's note in its storage format (optuna_dashboard._note) without
    importing it; the dashboard's study page shows it, the objective's name and the explaining user attributes."""
    from study import describe

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, direction="maximize")
    describe.describe_study(study, "best_momentum")
    page = _dashboard_get(storage, f"/api/studies/{study._study_id}")
    assert page["note"] == {"version": 1, "body": describe.note("best_momentum")}
    assert page["objective_names"] == ["val_accuracy"]
    shown = {attr["key"]: attr["value"] for attr in page["user_attrs"]}
    assert shown[describe.MOMENTUM_ATTR] == describe.momentum_mapping()
    from optuna_dashboard import get_note, save_note

    assert get_note(study) == describe.note("best_momentum")
    save_note(study, "a user's edit")  # the dashboard's own writer: describe_study rewrites it, one version on
    describe.describe_study(study, "own_momentum")
    assert _dashboard_get(storage, f"/api/studies/{study._study_id}")["note"] == {
        "version": 3, "body": describe.note("own_momentum")}


def test_the_report_s_dashboard_importances_are_the_dashboard_s(tmp_path):
    """study.importance.dashboard_importances computes what optuna-dashboard's importance chart shows: over the
    complete trials only (pruned ones left out, presets without batchnorm in), PED-ANOVA, higher is better."""
    import numpy as np

    from study import space
    from study.importance import dashboard_importances

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, direction="maximize")
    rng = np.random.default_rng(0)
    bn = {space.MOMENTUM_PARAM: optuna.distributions.IntDistribution(1, 500, log=True),
          "batch_size": optuna.distributions.CategoricalDistribution([8, 16, 32]),
          space.DROPOUT_PARAM: optuna.distributions.IntDistribution(0, 50)}
    no_bn = {name: dist for name, dist in bn.items() if name != space.MOMENTUM_PARAM}
    for i in range(26):
        distributions = no_bn if i < 2 else bn
        params = {space.MOMENTUM_PARAM: int(rng.integers(1, 500)), "batch_size": int(rng.choice([8, 16, 32])),
                  space.DROPOUT_PARAM: int(rng.integers(0, 51))}
        state = optuna.trial.TrialState.PRUNED if i % 5 == 4 else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params={k: v for k, v in params.items() if k in distributions}, distributions=distributions,
            value=float(params[space.DROPOUT_PARAM] / 50 + 0.1 * rng.random()) if state.name == "COMPLETE" else None,
            intermediate_values={1: 0.5}, state=state))
    shown = _dashboard_get(storage, f"/api/studies/{study._study_id}/param_importances")["param_importances"][0]
    ours = dashboard_importances(study)
    assert ours["trials"] == 21
    assert ours["val_accuracy"] == pytest.approx({space.public_name(p["name"]): p["importance"] for p in shown})
    assert max(ours["val_accuracy"], key=ours["val_accuracy"].get) == "dropout"


def test_a_running_trial_without_a_heartbeat_is_found_in_optunas_tables_by_name(tmp_path):
    """study.storage.fail_orphaned_trials reads Optuna's tables `trials`, `studies` and `trial_heartbeats` (their
    columns trial_id, study_id, study_name, state) by name: a RUNNING trial with no heartbeat row is failed, one
    with a heartbeat is left to Optuna's own check."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=60)
    study = optuna.create_study(study_name="s", storage=storage)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        beating, orphaned = study.ask(), study.ask()
    storage.record_heartbeat(beating._trial_id)
    failed = []
    assert study_storage.fail_orphaned_trials(study, storage, lambda s, t: failed.append(t.number)) == [
        orphaned.number]
    assert failed == [orphaned.number]
    assert [t.state.name for t in study.trials] == ["RUNNING", "FAIL"]


def test_optunas_calls_join_the_study_locks_sqlite_transaction(tmp_path):
    """study.storage.StudyLock sets `RDBStorage.scoped_session.registry` to a session on its own connection, so
    Optuna's calls inside the lock are savepoints of its BEGIN EXCLUSIVE: other connections wait, and what was
    done is there after the release."""
    path = tmp_path / "optuna.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    with study_storage.StudyLock(storage, "s"):
        optuna.create_study(study_name="s", storage=storage).enqueue_trial({"x": 1})
        other = sqlite3.connect(path, timeout=0.1)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("select count(*) from studies").fetchone()
        other.close()
    assert [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials] == ["WAITING"]


def test_the_default_experiment_has_the_id_mlflow_names_it_by(client):
    """study.session tells a launcher's run in "Default" (mlflow run without --experiment-name) by
    DEFAULT_EXPERIMENT_ID."""
    from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID

    assert client.get_experiment_by_name("Default").experiment_id == DEFAULT_EXPERIMENT_ID


def test_a_loaded_study_keeps_its_storage_for_loading_another_study_on_it(tmp_path):
    """study.report.confirmation reads a study's companion (its --confirm trainings) through `Study._storage`, and
    learns it is absent from load_study's KeyError, which creates nothing."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    loaded = optuna.load_study(study_name="s", storage=url)
    with pytest.raises(KeyError):
        optuna.load_study(study_name="s/confirmation", storage=loaded._storage)
    optuna.create_study(study_name="s/confirmation", storage=url).set_user_attr("k", 3)
    companion = optuna.load_study(study_name="s/confirmation", storage=loaded._storage)
    assert companion.user_attrs == {"k": 3} and study.study_name == "s"
    assert sorted(optuna.get_all_study_names(url)) == ["s", "s/confirmation"]
