"""Keys only from variables that are keys: `api_key_env` may not name the project's settings, database or
broker URLs or cloud credentials, unless the operator lists the name in LSL_KEY_VARS."""

import pytest
import yaml

from lsl_dagster import graph
from lsl_dagster.cli import main
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment_files import ExperimentError, load_experiment, scan_campaigns
from lsl_dagster_tests.conftest import Lab, shipped_keys


def _with_key(lab: Lab, name: str, variable: str, api_base: str = "http://127.0.0.1:9/v1") -> None:
    lab.write(name, large_model={"model": "openai/sim-large", "api_base": api_base, "api_key_env": variable})


@pytest.mark.parametrize(
    ("variable", "rule"),
    [
        ("LSL_CACHE_URL", "a setting of this project or of Dagster"),
        ("DAGSTER_CLOUD_API_TOKEN", "a setting of this project or of Dagster"),
        ("BROKER_URL", "a database or broker setting"),
        ("DATABASE_PASSWORD_KEY", "a database or broker setting"),
        ("PGPASSWORD_TOKEN", "a database or broker setting"),
        ("REDIS_AUTH_TOKEN", "a database or broker setting"),
        ("AWS_SECRET_ACCESS_KEY", "a cloud credential"),
        ("AZURE_CLIENT_SECRET_KEY", "a cloud credential"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "a cloud credential"),
        ("HOME", "not named like a provider key"),
        ("MY_SECRET", "not named like a provider key"),
    ],
)
def test_a_variable_that_is_not_a_key_is_refused_naming_the_rule(lab: Lab, variable: str, rule: str):
    _with_key(lab, "refused", variable)
    with pytest.raises(ExperimentError) as error:
        load_experiment(lab.data_dir, "refused")
    message = str(error.value)
    assert f"large_model.api_key_env: Value error, api_key_env {variable} is refused: {rule}" in message
    assert "LSL_KEY_VARS" in message  # says how an operator allows it


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "VLLM_KEY", "HF_TOKEN", "my_proxy_key"])
def test_names_that_look_like_provider_keys_are_accepted(lab: Lab, variable: str):
    _with_key(lab, "accepted", variable)
    assert load_experiment(lab.data_dir, "accepted").large_model.api_key_env == variable


def test_an_operator_may_allow_a_name_in_lsl_key_vars(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    _with_key(lab, "listed", "PROXY_SECRET")
    monkeypatch.setenv("LSL_KEY_VARS", "OTHER_ONE, PROXY_SECRET")
    assert load_experiment(lab.data_dir, "listed").large_model.api_key_env == "PROXY_SECRET"
    # Only the names listed: another refused name stays refused.
    _with_key(lab, "unlisted", "AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ExperimentError, match="a cloud credential"):
        load_experiment(lab.data_dir, "unlisted")


def test_a_campaign_cell_with_a_refused_variable_is_invalid(lab: Lab):
    path = lab.data_dir / "campaigns" / "grid.yaml"
    path.parent.mkdir()
    pair = {
        "name": "l-s",
        "large_model": {
            "model": "openai/sim-large",
            "api_base": "http://127.0.0.1:9/v1",
            "api_key_env": "PGPASSWORD",
        },
        "small_model": {"model": "sim/small"},
    }
    path.write_text(
        yaml.safe_dump({"campaign": "grid", "tasks": ["arithmetic"], "model_pairs": [pair], "seeds": [0]})
    )
    _, errors = scan_campaigns(lab.data_dir)
    assert "api_key_env PGPASSWORD is refused: a database or broker setting" in errors["grid"]


def test_aws_secret_is_refused_by_validate_and_the_run_before_any_call(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-do-not-send")
    with SimServer(answer_keys=shipped_keys()).start() as server:
        _with_key(lab, "steal", "AWS_SECRET_ACCESS_KEY", api_base=server.url)
        monkeypatch.setenv("DAGSTER_HOME", lab.instance.root_directory)
        monkeypatch.setenv("LSL_DATA_DIR", str(lab.data_dir))
        monkeypatch.setenv("LSL_RUNS_DIR", str(lab.runs_dir))
        capsys.readouterr()
        assert main(["validate"]) == 1
        assert "api_key_env AWS_SECRET_ACCESS_KEY is refused: a cloud credential" in capsys.readouterr().out

        result = lab.run("steal", raise_on_error=False)
        assert not result.success
        failure = result.failure_data_for_node(graph.STAGE1.asset).error.message
        assert "api_key_env AWS_SECRET_ACCESS_KEY is refused: a cloud credential" in failure
        assert server.stats()["requests"] == 0
        assert server.headers_seen == []  # the secret went nowhere
    assert not (lab.runs_dir / "steal" / "calls.jsonl").exists()
