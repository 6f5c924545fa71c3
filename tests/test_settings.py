import pytest

from pool_manager.errors import ConfigError
from pool_manager.settings import load_settings


@pytest.mark.parametrize(
    "pool, field",
    [
        ({"image": "x", "target_idle": 5, "max_total": 2}, "target_idle (5) exceeds max_total (2)"),
        ({"image": "x", "targt_idle": 1}, "pools.p.targt_idle"),
        ({"image": "x", "mem_limit": "lots"}, "pools.p.mem_limit"),
        ({"image": "x", "boot_timeout_s": 0}, "pools.p.boot_timeout_s"),
        ({"image": "x", "health_path": "healthz"}, "pools.p.health_path"),
        ({"runtime": "docker", "command": ["x"]}, "runtime 'docker' needs an image"),
        ({"runtime": "process", "image": "x"}, "runtime 'process' needs a command"),
        ({"runtime": "podman", "image": "x"}, "pools.p.runtime"),
        ({"runtime": "kubernetes", "command": ["x"]}, "runtime 'kubernetes' needs an image"),
        ({"runtime": "kubernetes", "image": "x", "user": "app"}, "needs a numeric user"),
    ],
)
def test_bad_pool_spec_is_rejected_naming_the_field(pool, field):
    with pytest.raises(ConfigError) as caught:
        load_settings(pools={"p": pool})
    assert field in str(caught.value)


def test_bad_pool_name_is_rejected():
    with pytest.raises(ConfigError, match="pool name 'Bad Name'"):
        load_settings(pools={"Bad Name": {"image": "x"}})


def test_toml_file_and_environment(tmp_path, monkeypatch):
    config = tmp_path / "greenroom.toml"
    config.write_text('deployment = "from-file"\n[pools.chatbot]\nimage = "img"\ntarget_idle = 3\n')
    monkeypatch.setenv("GREENROOM_CONFIG", str(config))
    monkeypatch.setenv("GREENROOM_DEPLOYMENT", "from-env")
    settings = load_settings()
    assert settings.deployment == "from-env"  # the environment wins over the file
    assert settings.pools["chatbot"].target_idle == 3


def test_missing_config_file_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GREENROOM_CONFIG", "/nonexistent/greenroom.toml")
    with pytest.raises(ConfigError, match="not a file"):
        load_settings()


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"pools": {"my_pool": {"image": "x", "runtime": "kubernetes"}}}, "kubernetes pool name 'my_pool'"),
        ({"pools": {"p": {"image": "x", "runtime": "kubernetes"}}, "deployment": "prod-"}, "deployment 'prod-'"),
        ({"kubernetes_namespace": "Models"}, "kubernetes_namespace"),
    ],
)
def test_kubernetes_names_must_fit_pod_names_and_labels(overrides, problem):
    with pytest.raises(ConfigError, match=problem):
        load_settings(**overrides)


def test_kubernetes_settings_have_defaults_and_accept_a_kubeconfig():
    settings = load_settings(pools={"chat-bot": {"image": "x", "runtime": "kubernetes"}}, kubeconfig="/k/config")
    assert settings.kubernetes_namespace == "default" and settings.kubeconfig == "/k/config"
    assert load_settings(pools={"my_pool": {"image": "x"}}).pools["my_pool"].runtime == "auto"  # docker names stay
