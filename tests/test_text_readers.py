"""Text-benchmark readers on tiny fakes in each real layout: names, order, prompts, metrics, subsets, errors."""

from __future__ import annotations

import json

import pytest
from fakes.text_benchmarks import FAKE_LABELS, write_jsonl, write_olora, write_trace

from moram.data.benchmarks import DatasetCorruptError, DatasetNotFoundError
from moram.data.tasks import TaskSource
from moram.data.text import TextTask
from moram.data.text_benchmarks import (
    LONG_ORDERS,
    STANDARD_ORDERS,
    TRACE_METRICS,
    TRACE_ORDER,
    JsonlTasks,
    LongSequenceTasks,
    OLoRATasks,
    StandardCLTasks,
    TRACETasks,
    olora_prompt,
)

# ------------------------------------------------------------------------------------------------ TRACE


def test_trace_default_order_metrics_and_contents(tmp_path):
    write_trace(tmp_path, counts=(3, 2))
    source = TRACETasks(root=str(tmp_path))
    assert isinstance(source, TaskSource)
    assert source.num_tasks == 8
    tasks = source.build()
    assert [t.name for t in tasks] == [
        "C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten",
    ]
    assert all(isinstance(t, TextTask) for t in tasks)
    assert {t.name: t.metric for t in tasks} == {
        "C-STANCE": "accuracy", "FOMC": "accuracy", "MeetingBank": "rouge_l", "Py150": "edit_similarity",
        "ScienceQA": "choice_accuracy", "NumGLUE-cm": "accuracy", "NumGLUE-ds": "accuracy", "20Minuten": "sari",
    }
    fomc = tasks[1]
    assert (len(fomc.train), len(fomc.test)) == (3, 2)
    assert fomc.train[2] == {"prompt": "FOMC train prompt 2", "answer": "FOMC answer 2"}  # verbatim, file order
    assert fomc.test[0]["prompt"] == "FOMC test prompt 0"  # test.json, not eval.json
    assert "source" not in fomc.test[0]
    assert tasks[-1].test[1]["source"] == "20Minuten test prompt 1"  # SARI's source is the prompt, as in TRACE


def test_trace_custom_order_eval_split_and_options(tmp_path):
    write_trace(tmp_path, tasks=["Py150", "FOMC"], counts=(2, 1))
    (tmp_path / "FOMC" / "eval.json").write_text(json.dumps([{"prompt": "held-out", "answer": "dovish"}]))
    source = TRACETasks(root=str(tmp_path), order=["Py150", "FOMC"], test_split="eval", max_new_tokens=16,
                        metrics={"Py150": "exact_match"})
    assert source.num_tasks == 2
    py150, fomc = source.build()
    assert (py150.name, py150.metric, py150.max_new_tokens) == ("Py150", "exact_match", 16)
    assert fomc.test[0]["prompt"] == "held-out"


def test_trace_reads_from_the_data_root_environment_variable(tmp_path, monkeypatch):
    write_trace(tmp_path / "TRACE", tasks=["FOMC"])
    monkeypatch.setenv("MORAM_DATA", str(tmp_path))
    assert [t.name for t in TRACETasks(order=["FOMC"]).build()] == ["FOMC"]


def test_trace_option_errors():
    with pytest.raises(ValueError, match=r"unknown \['Papyrus-f'\]"):
        TRACETasks(root="x", order=["FOMC", "Papyrus-f"])
    with pytest.raises(ValueError, match="twice"):
        TRACETasks(root="x", order=["FOMC", "FOMC"])
    with pytest.raises(ValueError, match="test_split"):
        TRACETasks(root="x", test_split="dev")
    with pytest.raises(ValueError, match="max_train must be positive"):
        TRACETasks(root="x", max_train=0)
    with pytest.raises(ValueError, match="bleu"):
        TRACETasks(root="x", metrics={"FOMC": "bleu"})
    assert TRACETasks(root="x", order=["Papyrus-f"], metrics={"Papyrus-f": "rouge_l"}).num_tasks == 1
    assert list(TRACE_METRICS) == TRACE_ORDER


# ----------------------------------------------------------------------------------------------- O-LoRA


@pytest.mark.parametrize("order", [1, 2, 3])
def test_standard_cl_orders(tmp_path, order):
    write_olora(tmp_path, datasets=["agnews", "amazon", "dbpedia", "yahoo"], counts=(3, 2))
    source = StandardCLTasks(root=str(tmp_path), order=order)
    assert source.num_tasks == 4
    tasks = source.build()
    assert [t.name for t in tasks] == STANDARD_ORDERS[order]
    assert {t.metric for t in tasks} == {"exact_match"}
    assert [(len(t.train), len(t.test)) for t in tasks] == [(3, 2)] * 4


def test_standard_cl_order_lists_are_o_loras():
    assert STANDARD_ORDERS == {
        1: ["dbpedia", "amazon", "yahoo", "agnews"],
        2: ["dbpedia", "amazon", "agnews", "yahoo"],
        3: ["yahoo", "amazon", "agnews", "dbpedia"],
    }


@pytest.mark.parametrize("order", [4, 5, 6])
def test_long_sequence_orders(tmp_path, order):
    write_olora(tmp_path, counts=(2, 1))
    source = LongSequenceTasks(root=str(tmp_path), order=order)
    assert source.num_tasks == 15
    tasks = source.build()
    names = [t.name for t in tasks]
    assert names == LONG_ORDERS[order]
    assert sorted(names) == sorted(["agnews", "amazon", "dbpedia", "yahoo", "MNLI", "CB", "WiC", "COPA", "QQP",
                                    "BoolQA", "RTE", "IMDB", "yelp", "SST-2", "MultiRC"])


def test_long_sequence_order_lists_are_o_loras():
    # O-LoRA's paper (orders 4-6, from Progressive Prompts), with O-LoRA's CL_Benchmark folder names
    assert " ".join(LONG_ORDERS[4]) == ("MNLI CB WiC COPA QQP BoolQA RTE IMDB yelp amazon SST-2 dbpedia agnews "
                                        "MultiRC yahoo")
    assert " ".join(LONG_ORDERS[5]) == ("MultiRC BoolQA WiC MNLI CB COPA QQP RTE IMDB SST-2 dbpedia agnews yelp "
                                        "amazon yahoo")
    assert " ".join(LONG_ORDERS[6]) == ("yelp amazon MNLI CB COPA QQP RTE IMDB SST-2 dbpedia agnews yahoo MultiRC "
                                        "BoolQA WiC")


def test_olora_prompts_and_answers(tmp_path):
    write_olora(tmp_path, datasets=["agnews", "COPA", "MNLI"], counts=(2, 2))
    agnews, copa, mnli = OLoRATasks(["agnews", "COPA", "MNLI"], root=str(tmp_path)).build()
    assert agnews.train[1] == {
        "prompt": "Task:TC\nDataset:agnews\nWhat is the topic of the following paragraph? Choose one from the "
                  "option.\nOption: alpha, beta \nagnews train sentence 1\nAnswer:",
        "answer": FAKE_LABELS[1],
    }
    assert copa.test[0]["prompt"] == "Task:COPA\nDataset:COPA\nCOPA test sentence 0\nAnswer:"
    assert mnli.test[0]["prompt"].startswith(
        'Task:NLI\nDataset:MNLI\nWhat is the logical relationship between the "sentence 1" and the "sentence 2"?'
    )
    plain = olora_prompt("SST-2", ["negative", "positive"], "great film", task_prefix=False)
    assert plain == ("What is the sentiment of the following paragraph? Choose one from the option.\n"
                     "Option: negative, positive \ngreat film\nAnswer:")


def test_olora_option_errors():
    with pytest.raises(ValueError, match="one of \\[1, 2, 3\\]"):
        StandardCLTasks(root="x", order=4)
    with pytest.raises(ValueError, match="one of \\[4, 5, 6\\]"):
        LongSequenceTasks(root="x", order=1)


# ------------------------------------------------------------------------------------------- JSON Lines


def test_jsonl_tasks_from_a_root(tmp_path):
    write_jsonl(tmp_path, ["b_task", "a_task"], counts=(3, 2),
                settings={"b_task": {"metric": "rouge_l", "max_new_tokens": 7}})
    source = JsonlTasks(root=str(tmp_path))
    assert source.num_tasks == 2
    a, b = source.build()
    assert (a.name, a.metric, a.max_new_tokens) == ("a_task", "exact_match", None)  # sorted folder names
    assert (b.name, b.metric, b.max_new_tokens) == ("b_task", "rouge_l", 7)
    assert a.train[2] == {"prompt": "a_task train prompt 2", "answer": "answer 2"}
    ordered = JsonlTasks(root=str(tmp_path), tasks=["b_task", "a_task"], metrics={"b_task": "accuracy"}).build()
    assert [(t.name, t.metric) for t in ordered] == [("b_task", "accuracy"), ("a_task", "exact_match")]


def test_jsonl_tasks_from_files_keep_source(tmp_path):
    train, test = tmp_path / "tr.jsonl", tmp_path / "te.json"
    train.write_text('{"prompt": "simplify: a long b", "answer": "a b", "source": "a long b"}\n\n')
    test.write_text(json.dumps([{"prompt": "p", "answer": "q", "source": "s"}]))  # a JSON list is read too
    source = JsonlTasks(files={"simplify": {"train": str(train), "test": str(test), "metric": "sari"}})
    [task] = source.build()
    assert task.metric == "sari"
    assert task.train[0]["source"] == "a long b"
    assert task.test[0] == {"prompt": "p", "answer": "q", "source": "s"}


def test_jsonl_option_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        JsonlTasks()
    with pytest.raises(ValueError, match="'train' and 'test'"):
        JsonlTasks(files={"t": {"train": "a"}})
    with pytest.raises(ValueError, match="not one of"):
        JsonlTasks(root=str(tmp_path), default_metric="bleu")
    with pytest.raises(ValueError, match="no task folders"):
        JsonlTasks(root=str(tmp_path)).num_tasks  # noqa: B018
    write_jsonl(tmp_path, ["t"], settings={"t": {"metrc": "rouge_l"}})
    with pytest.raises(DatasetCorruptError, match=r"task\.json.*keys among"):
        JsonlTasks(root=str(tmp_path)).build()
    (tmp_path / "t" / "task.json").write_text('{"metric": "bleu"}')
    with pytest.raises(ValueError, match="metric 'bleu' is not one of"):
        JsonlTasks(root=str(tmp_path)).build()


# ---------------------------------------------------------------------------------------------- subsets


def _prompts(tasks):
    return [[e["prompt"] for e in t.train] + [e["prompt"] for e in t.test] for t in tasks]


def test_subsets_are_seeded_sized_and_in_file_order(tmp_path):
    write_trace(tmp_path, tasks=["FOMC", "Py150"], counts=(20, 10))
    first = TRACETasks(root=str(tmp_path), order=["FOMC", "Py150"], max_train=5, max_test=3, seed=1).build()
    again = TRACETasks(root=str(tmp_path), order=["FOMC", "Py150"], max_train=5, max_test=3, seed=1).build()
    other = TRACETasks(root=str(tmp_path), order=["FOMC", "Py150"], max_train=5, max_test=3, seed=2).build()
    assert [(len(t.train), len(t.test)) for t in first] == [(5, 3), (5, 3)]
    assert _prompts(first) == _prompts(again)
    assert _prompts(first) != _prompts(other)
    indices = [int(e["prompt"].rsplit(" ", 1)[1]) for e in first[0].train]
    assert indices == sorted(indices)  # kept in file order
    fomc_kept = [int(e["prompt"].rsplit(" ", 1)[1]) for e in first[0].train]
    py150_kept = [int(e["prompt"].rsplit(" ", 1)[1]) for e in first[1].train]
    assert fomc_kept != py150_kept  # each task draws its own subset
    bigger = TRACETasks(root=str(tmp_path), order=["FOMC"], max_train=100).build()[0]
    assert len(bigger.train) == 20  # a limit above the size keeps everything


def test_subsets_in_olora_and_jsonl(tmp_path):
    write_olora(tmp_path / "olora", datasets=["agnews", "amazon", "dbpedia", "yahoo"], counts=(10, 6))
    tasks = StandardCLTasks(root=str(tmp_path / "olora"), max_train=4, max_test=2, seed=0).build()
    assert [(len(t.train), len(t.test)) for t in tasks] == [(4, 2)] * 4
    write_jsonl(tmp_path / "jsonl", ["t"], counts=(10, 6))
    [task] = JsonlTasks(root=str(tmp_path / "jsonl"), max_train=3, max_test=1, seed=5).build()
    [same] = JsonlTasks(root=str(tmp_path / "jsonl"), max_train=3, max_test=1, seed=5).build()
    assert (len(task.train), len(task.test)) == (3, 1)
    assert _prompts([task]) == _prompts([same])


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: TRACETasks(root=root), r"<task>/train\.json.*C-STANCE"),
        (lambda root: StandardCLTasks(root=root), r"<group>/<dataset>.*labels\.json"),
        (lambda root: JsonlTasks(root=root, tasks=["t"]), r"<task>/train\.jsonl"),
    ],
)
def test_missing_root_names_the_path_and_the_layout(tmp_path, make, expected):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=expected) as info:
        make(str(missing)).build()
    assert isinstance(info.value, DatasetNotFoundError)
    assert str(missing) in str(info.value)


def test_missing_split_and_task_folders(tmp_path):
    write_trace(tmp_path / "trace", tasks=["FOMC"])
    (tmp_path / "trace" / "FOMC" / "test.json").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"FOMC/test\.json' does not exist\. Expected layout"):
        TRACETasks(root=str(tmp_path / "trace"), order=["FOMC"]).build()
    with pytest.raises(DatasetNotFoundError, match=r"trace/Py150' does not exist"):
        TRACETasks(root=str(tmp_path / "trace"), order=["Py150"]).build()
    write_olora(tmp_path / "olora", datasets=["agnews"])
    with pytest.raises(DatasetNotFoundError, match=r"olora/TC/dbpedia' does not exist"):  # order 1 starts there
        StandardCLTasks(root=str(tmp_path / "olora")).build()
    (tmp_path / "olora" / "TC" / "agnews" / "labels.json").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"TC/agnews/labels\.json"):
        OLoRATasks(["agnews"], root=str(tmp_path / "olora")).build()
    write_jsonl(tmp_path / "jsonl", ["t"])
    (tmp_path / "jsonl" / "t" / "train.jsonl").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"t/train\.jsonl"):
        JsonlTasks(root=str(tmp_path / "jsonl")).build()


def test_bad_json_names_file_and_line(tmp_path):
    write_trace(tmp_path, tasks=["FOMC"])
    path = tmp_path / "FOMC" / "train.json"
    path.write_text('[{"prompt": "a", "answer": "b"},\n {"prompt": "c" "answer": "d"}]')
    with pytest.raises(DatasetCorruptError, match=r"FOMC/train\.json' is not valid JSON: .* line 2"):
        TRACETasks(root=str(tmp_path), order=["FOMC"]).build()
    path.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c", \n')
    with pytest.raises(DatasetCorruptError, match=r"train\.json' line 2 is not valid JSON"):
        TRACETasks(root=str(tmp_path), order=["FOMC"]).build()
    path.write_text('[{"prompt": "a", "answer": "b"}, ["c", "d"]]')
    with pytest.raises(DatasetCorruptError, match="item 1 is a list, expected a JSON object"):
        TRACETasks(root=str(tmp_path), order=["FOMC"]).build()
    path.write_text('[{"prompt": "a", "answer": "b"}, {"prompt": "c", "label": "d"}]')
    with pytest.raises(ValueError, match=r"train\.json: example 1 has no string 'answer' field"):
        TRACETasks(root=str(tmp_path), order=["FOMC"]).build()


def test_bad_olora_files(tmp_path):
    write_olora(tmp_path, datasets=["agnews"])
    folder = tmp_path / "TC" / "agnews"
    (folder / "test.json").write_text(json.dumps([{"label": "alpha", "text": "no sentence"}]))
    with pytest.raises(DatasetCorruptError, match=r"test\.json' item 0 has no string 'sentence' field"):
        OLoRATasks(["agnews"], root=str(tmp_path)).build()
    (folder / "labels.json").write_text('{"0": "alpha"}')
    with pytest.raises(DatasetCorruptError, match=r"labels\.json' must be a non-empty JSON list"):
        OLoRATasks(["agnews"], root=str(tmp_path)).build()


def test_empty_task_names_task_and_file(tmp_path):
    write_jsonl(tmp_path / "jsonl", ["t"])
    (tmp_path / "jsonl" / "t" / "test.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"task 't' has no test examples \(.*t/test\.jsonl\)"):
        JsonlTasks(root=str(tmp_path / "jsonl")).build()
    write_trace(tmp_path / "trace", tasks=["FOMC"])
    (tmp_path / "trace" / "FOMC" / "train.json").write_text("[]")
    with pytest.raises(ValueError, match=r"task 'FOMC' has no training examples \(.*FOMC/train\.json\)"):
        TRACETasks(root=str(tmp_path / "trace"), order=["FOMC"]).build()
