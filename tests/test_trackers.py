"""Whatever logger a run configures receives its results: read back from TensorBoard, MLflow and W&B files.

Each run is the tiny CLIP through the real CLI with :class:`moram.callbacks.AtomUsageCallback`; what
the trackers hold is compared with the run's own ``continual_metrics.json`` and
``atom_usage/after_task<t>.json``: the per-task scores after every task (the matrix rows), Last,
Average, BWT, forgetting, the routing leakage, the accuracy matrix as an image after every task and
the resolved config. The tracker packages are the ``trackers`` extra (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from helpers import TINY, fit_args

from moram.cli import main

TASKS = ["synthetic 0", "synthetic 1"]


def fit(tmp_path: Path, loggers: str) -> tuple[dict, dict, Path]:
    tiny = tmp_path / "tiny_clip.json"
    tiny.write_text(json.dumps(TINY))
    config = tmp_path / "loggers.yaml"
    config.write_text(f"trainer:\n  logger:\n{loggers}")
    cli = main(fit_args(tmp_path, tiny, "--config", str(config),
                        "--trainer.callbacks+=moram.callbacks.AtomUsageCallback"))
    log_dir = Path(cli.trainer.log_dir)
    metrics = json.loads((log_dir / "continual_metrics.json").read_text())
    assert metrics["finished"] is True
    usage = json.loads((log_dir / "atom_usage" / "after_task2.json").read_text())
    return metrics, usage, log_dir


def expected_scalars(metrics: dict, usage: dict) -> dict[str, float]:
    """The final value each tracker must hold, from the run's own files."""
    want = {
        "continual/last": metrics["last"]["mean"], "continual/average": metrics["average"]["mean"],
        "continual/bwt": metrics["bwt"], "continual/forgetting": metrics["forgetting"],
    }
    want.update({f"atom_usage/leakage/{t}": usage["leakage"][j] for j, t in enumerate(TASKS)})
    return want


def check_history(history: dict[str, list[float]], metrics: dict, usage: dict) -> None:
    """``history``: every value logged under a key, in order."""
    for key, value in expected_scalars(metrics, usage).items():
        assert key in history, f"{key} not logged; got {sorted(history)}"
        assert history[key][-1] == pytest.approx(value, abs=1e-4), key
    for j, task in enumerate(TASKS):  # one value per task trained: the matrix's column j
        column = [row[j] for row in metrics["matrix"]]
        assert history[f"eval/score/{task}"] == pytest.approx(column, abs=1e-4), task
    assert len(history["continual/last"]) == len(TASKS)  # after every task


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def check_config(text: str) -> None:
    assert "class_path: moram.module.ContinualModule" in text
    assert "steps_per_task: 3" in text  # the resolved value (the config file says otherwise)


TENSORBOARD = """\
    - class_path: lightning.pytorch.loggers.TensorBoardLogger
      init_args: {{save_dir: {root}/tb, name: run}}
"""


def test_tensorboard_receives_scores_leakage_matrix_figure_and_config(tmp_path):
    pytest.importorskip("tensorboard", reason="the trackers extra: pip install 'moram[trackers]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, usage, log_dir = fit(tmp_path, TENSORBOARD.format(root=tmp_path))
    assert log_dir == tmp_path / "tb" / "run" / "version_0"
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()
    history = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    check_history(history, metrics, usage)
    for tag in ("continual/accuracy_matrix", "continual_metrics_task_agnostic/accuracy_matrix"):
        images = events.Images(tag)
        assert len(images) == len(TASKS), tag
        assert all(is_png(i.encoded_image_string) and i.width > 100 for i in images)
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    check_config(config)


MLFLOW = """\
    - class_path: lightning.pytorch.loggers.MLFlowLogger
      init_args: {{tracking_uri: "sqlite:///{root}/mlflow.db", experiment_name: moram,
                  artifact_location: "{root}/artifacts"}}
"""

WANDB = """\
    - class_path: lightning.pytorch.loggers.WandbLogger
      init_args: {{save_dir: "{root}", offline: true, project: moram}}
"""


@pytest.mark.slow  # MLflow creates its database and W&B starts its service: about a minute
def test_mlflow_and_wandb_receive_the_same_in_one_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the trackers extra: pip install 'moram[trackers]'")
    pytest.importorskip("wandb", reason="the trackers extra: pip install 'moram[trackers]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # W&B would wrap sys.stdout, pytest's too
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    metrics, usage, log_dir = fit(tmp_path, MLFLOW.format(root=tmp_path) + WANDB.format(root=tmp_path))
    wandb.finish()  # what the end of the `moram` process does: the run file is complete
    # neither keeps a run folder: the default CSV logger is put first, the folder is the usual one
    assert log_dir == tmp_path / "lightning_logs" / "version_0"
    assert (log_dir / "metrics.csv").exists()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("moram").experiment_id])
    history = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
               for key in run.data.metrics}
    check_history(history, metrics, usage)
    figures = client.list_artifacts(run.info.run_id, "continual/accuracy_matrix")
    assert len(figures) == len(TASKS)
    assert is_png(Path(client.download_artifacts(run.info.run_id, figures[-1].path, str(tmp_path))).read_bytes())
    check_config(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    history, config = read_wandb(next(run_dir.glob("run-*.wandb")))
    check_history({k: [v for v in values if isinstance(v, (int, float))] for k, values in history.items()},
                  metrics, usage)
    # an image is a history entry of several fields (W&B stores nested values by their key path)
    assert history["continual/accuracy_matrix/_type"] == ["image-file"] * len(TASKS)
    assert is_png((run_dir / "files" / history["continual/accuracy_matrix/path"][-1]).read_bytes())
    assert config["model"]["init_args"]["backbone"]["class_path"] == "moram.backbones.clip.CLIPBackbone"
    assert config["data"]["init_args"]["steps_per_task"] == 3


def wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B run file (``run-<id>.wandb``), each a serialized protobuf ``Record``.

    The file is W&B's record log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB
    blocks of chunks (CRC-32 of type and data, length, type: full / first / middle / last).
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    assert struct.unpack("<HB", data[4:7]) == (0xBEE1, 0)
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a chunk header: padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"bad chunk at byte {pos}"
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
        pos += 7 + length
    return records


def read_wandb(path: Path) -> tuple[dict[str, list], dict]:
    """Every history value by key (nested values by their key path), and the ``config`` entry, of a W&B run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    history: dict[str, list] = {}
    config: dict = {}
    for raw in wandb_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.HasField("history"):
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
        elif record.HasField("config"):
            config.update({i.key: json.loads(i.value_json) for i in record.config.update if i.key == "config"})
    return history, config.get("config", {})
