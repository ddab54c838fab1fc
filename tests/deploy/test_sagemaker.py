"""The SageMaker launcher (request building, sweep-flag checks, --dry-run) and the job's entry
point, all offline."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from spectra_interp import cli, settings
from spectra_interp.config import CONTROLS, SweepConfig
from spectra_interp.deploy.sagemaker import container, launcher
from spectra_interp.deploy.sagemaker import request as rq
from spectra_interp.errors import SpectraError

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "scripts/launch_sagemaker.py"
TOKEN = "hf_SpectraTestToken0123456789"
IMAGE_US_EAST_1 = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312"

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def dry_run(capsys, *argv: str) -> dict:
    assert launcher.main(["--dry-run", "--region", "us-east-1", *argv]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def run_launcher(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The refusal contract: exit 2, nothing on stdout, one `error:` line on stderr."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def validate_against_api(request: dict) -> None:
    """Check the request against botocore's CreateTrainingJob schema (no network)."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateTrainingJob").input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()


def test_headline_is_the_phase1_preset_file():
    path = ROOT / "spectra_interp/presets" / f"{cli.PHASE1_PRESET}.toml"
    preset = tomllib.loads(path.read_text())
    assert preset["device"] == "cuda"
    expected = {k.replace("_", "-"): str(v) for k, v in preset.items() if k != "device"}
    assert rq.headline_hyperparameters() == expected
    # The job runs the preset less its device, which the instance decides.
    config = launcher.sweep_config(rq.JobSpec())
    assert config == settings.build(SweepConfig, {k: v for k, v in preset.items() if k != "device"})
    assert config.controls == CONTROLS and config.device == "auto"


def test_dry_run_default(capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    req = dry_run(capsys, "--job-name", "spectra-test-1")
    assert req["TrainingJobName"] == "spectra-test-1"
    assert req["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    assert req["ResourceConfig"]["InstanceCount"] == 1
    assert req["AlgorithmSpecification"]["TrainingImage"] == IMAGE_US_EAST_1
    hps = req["HyperParameters"]
    headline = rq.headline_hyperparameters()
    assert (
        {k: hps[k] for k in headline}
        == headline
        == {
            "model": "llama-3-8b",
            "ctx": "4096",
            "dtype": "float16",
            "batch-size": "1",
            "max-windows": "64",
            "controls": "all",
        }
    )
    assert "device" not in hps and "out" not in hps
    assert hps["sagemaker_program"] == "scripts/sagemaker_entry.py"
    assert hps["sagemaker_submit_directory"].endswith("/code/spectra-test-1/sourcedir.tar.gz")
    assert "sagemaker_torch_distributed_enabled" not in hps
    assert "InputDataConfig" not in req
    run = rq.default_run_name(headline)
    assert req["CheckpointConfig"] == {
        "S3Uri": f"s3://<bucket>/spectra/{run}/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert req["OutputDataConfig"] == {
        "S3OutputPath": f"s3://<bucket>/spectra/{run}/output",
        "CompressionType": "NONE",
    }
    assert req["EnableManagedSpotTraining"] is False
    assert "HF_TOKEN" not in req["Environment"]
    validate_against_api(req)


def test_dry_run_two_instances_with_corpus_spot_and_token(capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    argv = [
        "--instance-count", "2", "--s3", "s3://my-bucket/spectra", "--corpus-s3",
        "s3://my-bucket/corpus/", "--spot", "--run-name", "llama-run", "--job-name", "job-2",
        "--", "--max-windows", "64", "--controls", "randomization,random-init", "--overwrite",
    ]  # fmt: skip
    assert launcher.main(["--dry-run", "--region", "eu-west-1", *argv]) == 0
    text = capsys.readouterr().out
    assert TOKEN not in text
    req = json.loads(text)
    assert req["Environment"]["HF_TOKEN"] == "****"
    assert req["Environment"]["TOKENIZERS_PARALLELISM"] == "false"
    assert req["ResourceConfig"] == {
        "InstanceType": "ml.g5.2xlarge",
        "InstanceCount": 2,
        "VolumeSizeInGB": 100,
    }
    assert req["AlgorithmSpecification"]["TrainingImage"] == IMAGE_US_EAST_1.replace(
        "us-east-1", "eu-west-1"
    )
    hps = req["HyperParameters"]
    assert hps["sagemaker_torch_distributed_enabled"] == "true"
    assert hps["sagemaker_instance_type"] == "ml.g5.2xlarge"
    assert hps["sagemaker_region"] == "eu-west-1"
    assert (hps["max-windows"], hps["controls"], hps["overwrite"]) == (
        "64",
        "randomization,random-init",
        "true",
    )
    assert "corpus" not in hps
    assert req["InputDataConfig"] == [
        {
            "ChannelName": "corpus",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": "s3://my-bucket/corpus/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "InputMode": "File",
        }
    ]
    assert req["CheckpointConfig"]["S3Uri"] == "s3://my-bucket/spectra/llama-run/checkpoints"
    assert req["OutputDataConfig"]["S3OutputPath"] == "s3://my-bucket/spectra/llama-run/output"
    assert hps["sagemaker_submit_directory"] == (
        "s3://my-bucket/spectra/llama-run/code/job-2/sourcedir.tar.gz"
    )
    assert req["EnableManagedSpotTraining"] is True
    stop = req["StoppingCondition"]
    assert stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"] == 24 * 3600
    validate_against_api(req)
    # The real request (before masking) carries the token to the job's environment.
    spec = rq.JobSpec(sweep_args=["--ctx", "64"], token=TOKEN, instance_count=2)
    assert rq.build_request(spec, "job-3")["Environment"]["HF_TOKEN"] == TOKEN


def test_multi_gpu_instance_is_distributed_and_can_be_switched_off(capsys):
    hps = dry_run(capsys, "--instance-type", "ml.g5.12xlarge")["HyperParameters"]
    assert hps["sagemaker_torch_distributed_enabled"] == "true"
    hps = dry_run(capsys, "--instance-type", "ml.g5.12xlarge", "--no-distributed")[
        "HyperParameters"
    ]
    assert "sagemaker_torch_distributed_enabled" not in hps


def test_script_dry_run_prints_json_and_masks_token():
    proc = run_launcher("--dry-run", "--ctx", "512", env={**os.environ, "HF_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    req = json.loads(proc.stdout)
    assert req["HyperParameters"]["ctx"] == "512"
    assert req["Environment"]["HF_TOKEN"] == "****"


def test_launcher_refuses_misspelt_sweep_flags():
    line = one_error_line(run_launcher("--dry-run", "--ctxx", "4096", "--modle", "foo"))
    assert "unrecognized arguments: --ctxx 4096 --modle foo" in line
    # Abbreviations too: the job finds --overwrite by name when it resumes after a restart.
    line = one_error_line(run_launcher("--dry-run", "--over"))
    assert "unrecognized arguments: --over" in line


def test_launcher_refuses_invalid_sweep_values(capsys):
    line = one_error_line(run_launcher("--dry-run", "--ctx", "0"))
    with pytest.raises(SpectraError) as raised:
        SweepConfig(ctx=0)
    assert line == f"error: {raised.value}"
    # Rules across settings are the config's too (random-init needs one device).
    assert launcher.main(["--dry-run", "--device-map", "auto"]) == 2
    assert "--device-map" in capsys.readouterr().err


def test_launcher_flags_do_not_shadow_sweep_flags():
    options = set(launcher.launcher_parser()._option_string_actions)
    assert options.isdisjoint(settings.flags(SweepConfig))
    assert options.isdisjoint({"--config", "--preset"})


def no_aws_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none-credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "none-config"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
        HOME=str(tmp_path),
    )
    return env


def test_launch_without_credentials_says_what_is_missing(tmp_path):
    line = one_error_line(run_launcher("--s3", "s3://b/p", env=no_aws_env(tmp_path)))
    assert line.startswith("error: No AWS credentials found")
    assert line.count(". ") == 0 and "--dry-run" in line


def test_launcher_rejects_out_and_local_corpus(tmp_path, capsys):
    assert launcher.main(["--dry-run", "--out", "x"]) == 2
    assert "--out is set by the job" in capsys.readouterr().err
    assert launcher.main(["--dry-run", "--corpus", str(tmp_path)]) == 2
    assert "--corpus-s3" in capsys.readouterr().err
    assert launcher.main(["--dry-run", "--corpus-s3", "s3://b/c", "--corpus", "bundled"]) == 2
    assert "not both" in capsys.readouterr().err
    assert launcher.main(["--dry-run", "--s3", "my-bucket"]) == 2
    assert "s3://" in capsys.readouterr().err


def test_config_file_travels_in_the_code_tarball(tmp_path, capsys):
    config = tmp_path / "headline.toml"
    config.write_text('max-windows = 8\ncontrols = "randomization"\n')
    req = dry_run(capsys, "--config", str(config))
    hps = req["HyperParameters"]
    assert hps["config"] == "job_config/headline.toml"
    # The file's settings win over the headline's, as a preset's would over the defaults.
    assert "max-windows" not in hps and "controls" not in hps and hps["ctx"] == "4096"
    spec = launcher.checked(rq.JobSpec(sweep_args=["--config", str(config)]))
    assert spec.local_config() == config
    assert spec.config_settings == {"max_windows", "controls"}
    swept = launcher.sweep_config(spec)
    assert (swept.max_windows, swept.controls, swept.ctx) == (8, ("randomization",), 4096)
    with tarfile.open(fileobj=io.BytesIO(launcher.source_tarball(ROOT, config))) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("requirements.txt").read().decode()
        assert tar.extractfile("job_config/headline.toml").read() == config.read_bytes()
    assert {"pyproject.toml", "scripts/sagemaker_entry.py", "spectra_interp/cli.py"} <= names
    assert "spectra_interp/deploy/sagemaker/container.py" in names
    assert f"spectra_interp/presets/{cli.PHASE1_PRESET}.toml" in names
    assert not any(n.startswith(("tests", "notebooks", ".venv")) for n in names)
    assert not any("__pycache__" in n for n in names)
    assert "transformer-lens" in requirements and "torch" in requirements
    # A config file with an unknown setting is refused before anything is sent.
    config.write_text("max-windowz = 8\n")
    assert launcher.main(["--dry-run", "--config", str(config)]) == 2
    assert "unknown setting 'max_windowz'" in capsys.readouterr().err


def test_hyperparameters_round_trip_through_the_toolkit_rendering():
    argv = ["--model", "x/y", "--seed", "-1", "--overwrite", "--corpus=a b.txt", "--ctx", "64"]
    hps = rq.sweep_hyperparameters(argv)
    assert hps == {
        "model": "x/y",
        "seed": "-1",
        "overwrite": "true",
        "corpus": "'a b.txt'",
        "ctx": "64",
    }
    assert rq.sweep_argv(hps) == [
        "--model", "x/y", "--seed", "-1", "--overwrite", "--corpus", "a b.txt", "--ctx", "64",
    ]  # fmt: skip
    # The toolkit renders JSON-decoded values: sorted keys, True for "true", ints as text; a
    # false boolean is the flag's --no- form.
    toolkit = ["--corpus", "'a b.txt'", "--ctx", "64", "--overwrite", "True", "--report", "False"]
    assert rq.sweep_argv(rq.sweep_hyperparameters(toolkit, encoded=True)) == [
        "--corpus", "a b.txt", "--ctx", "64", "--overwrite", "--no-report",
    ]  # fmt: skip
    with pytest.raises(SpectraError):
        rq.sweep_hyperparameters(["64"])


def test_image_uri_job_name_and_run_name():
    assert rq.image_uri("us-east-1") == IMAGE_US_EAST_1
    assert rq.image_uri("af-south-1").startswith("626614931356.dkr.ecr.af-south-1.amazonaws.com/")
    assert rq.image_uri("cn-north-1").startswith(
        "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/"
    )
    with pytest.raises(SpectraError, match="--image"):
        rq.image_uri("xx-nowhere-1")
    run = rq.default_run_name({"model": "meta-llama/Meta-Llama-3-8B", "ctx": "4096"})
    assert run.startswith("spectra-meta-llama-3-8b-")
    assert run == rq.default_run_name(
        {"ctx": "4096", "model": "meta-llama/Meta-Llama-3-8B", "overwrite": "true"}
    )
    # Settings that leave the numbers alone (identity=False in config.py) keep the name.
    assert run == rq.default_run_name(
        {"ctx": "4096", "model": "meta-llama/Meta-Llama-3-8B", "no-progress": "true"}
    )
    assert run != rq.default_run_name({"model": "meta-llama/Meta-Llama-3-8B", "ctx": "2048"})
    name = rq.job_name_for("x" * 80 + "_y", now=0)
    assert len(name) <= 63 and name.endswith("-19700101-000000")
    validate_against_api(rq.build_request(rq.JobSpec(), name))


def test_without_the_sdk_the_image_needs_naming(monkeypatch, capsys):
    for name in ("sagemaker", "sagemaker.core", "sagemaker.core.image_uris"):
        monkeypatch.setitem(sys.modules, name, None)
    assert launcher.main(["--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert len(line.splitlines()) == 1 and line.count(". ") == 0
    assert "pip install 'spectra_interp[sagemaker]'" in line and "--image" in line
    req = dry_run(capsys, "--image", "example.com/spectra:1")
    assert req["AlgorithmSpecification"]["TrainingImage"] == "example.com/spectra:1"


def fake_sagemaker_env(tmp_path: Path, corpus: Path | None = None) -> dict[str, str]:
    """SageMaker's container variables, with every /opt/ml folder inside tmp_path."""
    env = {
        "SM_MODEL_DIR": str(tmp_path / "opt/ml/model"),
        "SM_OUTPUT_DATA_DIR": str(tmp_path / "opt/ml/output/data"),
        "SM_NUM_GPUS": "0",
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "TRAINING_JOB_NAME": "spectra-test-job",
        container.CHECKPOINT_ENV: str(tmp_path / "opt/ml/checkpoints"),
    }
    if corpus is not None:
        env["SM_CHANNEL_CORPUS"] = str(corpus)
    return env


def test_entry_argv_maps_the_container_contract(tmp_path):
    env = container.SageMakerEnv.from_environ(
        {**fake_sagemaker_env(tmp_path, tmp_path / "in"), "SM_NUM_GPUS": "1"}
    )
    assert env.channels == {"corpus": tmp_path / "in"}
    args = container.entry_argv(["--model", "m", "--corpus", "bundled", "--overwrite"], env)
    assert args == [
        "--model", "m", "--corpus", str(tmp_path / "in"), "--overwrite", "--device", "cuda",
        "--out", str(tmp_path / "opt/ml/checkpoints/spectra-results"),
    ]  # fmt: skip
    restarted = container.entry_argv(["--model", "m", "--overwrite", "--device", "cpu"], env, True)
    assert "--overwrite" not in restarted and restarted[3] == "cpu"


def test_restart_marker_is_per_job(tmp_path):
    env = fake_sagemaker_env(tmp_path)
    first = container.SageMakerEnv.from_environ(env)
    assert not container.is_restart(first)
    container.mark_started(first)
    assert container.is_restart(first)
    other_job = container.SageMakerEnv.from_environ({**env, "TRAINING_JOB_NAME": "new"})
    assert not container.is_restart(other_job)
    assert not container.is_restart(container.SageMakerEnv.from_environ({**env, "RANK": "1"}))


ENTRY_ARGS = [
    "--model", "smollm2-135m", "--ctx", "64", "--max-windows", "2", "--controls",
    "randomization", "--n-boot", "20", "--no-progress", "--overwrite",
]  # fmt: skip


def run_entry(tmp_path: Path, corpus: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **fake_sagemaker_env(tmp_path, corpus), "HF_TOKEN": TOKEN}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, str(ROOT / rq.ENTRY_SCRIPT), *ENTRY_ARGS],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )


def files_containing(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.mark.slow
def test_entry_point_runs_publishes_and_resumes_without_leaking_the_token(tmp_path):
    corpus = tmp_path / "opt/ml/input/data/corpus"
    corpus.mkdir(parents=True)
    book = ROOT / "spectra_interp/assets/corpus/pg84-frankenstein.txt"
    (corpus / "book.txt").write_bytes(book.read_bytes()[:20000])
    model_dir = tmp_path / "opt/ml/model"
    results = tmp_path / "opt/ml/checkpoints" / container.RESULTS_SUBDIR

    first = run_entry(tmp_path, corpus)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("config.json", "head_stats.csv", "summary.json", "token_sample.parquet"):
        assert (model_dir / name).is_file(), name
        assert (results / name).is_file(), name
    shards = sorted((results / "shards/trained").glob("window_*.npz"))
    assert [p.name for p in shards] == ["window_00000.npz", "window_00001.npz"]
    assert sorted(p.name for p in (model_dir / "shards/trained").iterdir()) == [
        p.name for p in shards
    ]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["config"]["corpus"] == str(corpus)
    assert config["config"]["out"] == str(results)
    assert files_containing(tmp_path / "opt/ml", TOKEN) == []
    assert TOKEN not in first.stdout + first.stderr

    # The same job starting again (a spot restart) finds its checkpoints and resumes, even
    # though its arguments say --overwrite.
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    (model_dir / "head_stats.csv").unlink()
    second = run_entry(tmp_path, corpus)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 windows already done" in second.stdout
    assert "--overwrite" not in second.stdout.splitlines()[0]
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes
    assert (model_dir / "head_stats.csv").is_file()
    assert files_containing(tmp_path / "opt/ml", TOKEN) == []
    assert TOKEN not in second.stdout + second.stderr


def test_launch_with_credentials_but_no_role_or_bucket_says_which(tmp_path, monkeypatch, capsys):
    for key, value in no_aws_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    assert launcher.main(["--s3", "s3://b/p"]) == 2
    assert capsys.readouterr().err.startswith("error: Pass --role")
    assert launcher.main(["--role", "arn:aws:iam::123456789012:role/r"]) == 2
    assert capsys.readouterr().err.startswith("error: Pass --s3")
