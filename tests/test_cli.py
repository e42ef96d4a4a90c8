"""The command line: every option documented, bad input gives a clear message and exit code 2."""

from __future__ import annotations

import dataclasses

import pytest

from inweights import SynthConfig, TrainConfig
from inweights.cli import build_parser, main


@pytest.mark.parametrize("argv", [[], ["learn"], ["ask"], ["eval"], ["demo"], ["memories"], ["history"],
                                  ["serve"], ["keys"], ["export"]])
def test_help_describes_every_option(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: inweights" in capsys.readouterr().out


def test_every_argument_of_every_command_has_help():
    parser = build_parser()
    commands = [a for a in parser._actions if a.dest == "command"][0].choices
    for name, sub in [("inweights", parser), *commands.items()]:
        for action in sub._actions:
            assert action.help, f"{name}: {action.dest} has no help text"


def test_learn_help_lists_every_config_field_with_its_help(capsys):
    with pytest.raises(SystemExit):
        main(["learn", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for cls in (SynthConfig, TrainConfig):
        for field in dataclasses.fields(cls):
            assert "--" + field.name.replace("_", "-") in out
    assert "Peak learning rate" in out and "comma-separated" in out


def test_boolean_options_parse_both_ways():
    from inweights.cli import _collect

    parser = build_parser()
    on = parser.parse_args(["learn", "d", "--memory", "m", "--statements"])
    off = parser.parse_args(["learn", "d", "--memory", "m", "--no-statements"])
    unset = parser.parse_args(["learn", "d", "--memory", "m"])
    assert _collect(on, SynthConfig, "synth").statements is True
    assert _collect(off, SynthConfig, "synth").statements is False
    assert _collect(unset, SynthConfig, "synth").statements is SynthConfig().statements


def test_list_options_parse_their_items_type():
    from inweights.cli import _collect

    args = build_parser().parse_args(["learn", "d", "--memory", "m", "--layers", "0, 3", "--target-modules",
                                      "q_proj,v_proj"])
    train = _collect(args, TrainConfig, "train")
    assert train.layers == (0, 3) and train.target_modules == ("q_proj", "v_proj")


def test_learn_with_missing_documents_exits_2_with_a_message(tmp_path, workspace, tiny_model_dir, capsys):
    code = main(["learn", str(tmp_path / "nothing-here"), "--memory", "acme", "--base", str(tiny_model_dir),
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nothing-here" in err and "Traceback" not in err


def test_bad_memory_name_and_bad_config_values_exit_2(tmp_path, workspace, capsys):
    (tmp_path / "a.txt").write_text("Some text here.")
    assert main(["learn", str(tmp_path), "--memory", "../evil", "--no-progress"]) == 2
    assert "invalid memory name" in capsys.readouterr().err
    assert main(["learn", str(tmp_path), "--memory", "ok", "--strategies", "telepathy", "--no-progress"]) == 2
    assert "unknown strategies" in capsys.readouterr().err


def test_ask_an_unknown_memory_exits_2(workspace, capsys):
    assert main(["ask", "ghost", "Who?"]) == 2
    assert "no memory named 'ghost'" in capsys.readouterr().err


def test_cli_learn_ask_history(tmp_path, workspace, tiny_model_dir, capsys):
    (tmp_path / "doc.md").write_text("Fjordlight was founded by Ingrid Vassbotn in 2011. It makes TideLog sensors.")
    assert main(["learn", str(tmp_path), "--memory", "acme", "--base", str(tiny_model_dir), "--strategies", "cloze",
                 "--epochs", "1", "--replay-fraction", "0", "--no-progress"]) == 0
    assert "memory acme@1 written" in capsys.readouterr().out
    assert main(["ask", "acme", "Who founded Fjordlight?", "--max-new-tokens", "4"]) == 0
    capsys.readouterr()  # a random tiny model answers with noise; the path is what is tested
    assert main(["history", "acme"]) == 0
    assert capsys.readouterr().out.startswith("v1")
    assert main(["memories"]) == 0
    assert capsys.readouterr().out.startswith("acme  v1  lora")

    (tmp_path / "doc.md").write_text("Fjordlight was founded by Ingrid Vassbotn in 2012. It makes TideLog sensors.")
    (tmp_path / "more.md").write_text("The Bergen office opened in April 2016.")
    assert main(["learn", str(tmp_path), "--memory", "acme", "--base", str(tiny_model_dir), "--strategies", "cloze",
                 "--epochs", "1", "--replay-fraction", "0", "--no-progress", "--update"]) == 0
    assert "memory acme@2 written" in capsys.readouterr().out
    assert main(["forget", "acme", "more.md", "--no-progress", "--check", "2"]) == 0
    assert "memory acme@3 written" in capsys.readouterr().out
    assert main(["history", "acme"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "update from v1  2 documents  +1 ~1 -0 documents" in lines[1]
    assert "forget from v2" in lines[2] and "-1 documents" in lines[2]


@pytest.mark.parametrize("module, argv, fix", [
    ("fastapi", ["serve"], "pip install 'fastapi>=0.165'"),
    ("faiss", ["eval", "acme", "q.jsonl", "--docs", "d"], "pip install 'faiss-cpu>=1.15'"),
])
def test_a_missing_dependency_is_one_line_with_the_fix(module, argv, fix, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were not installed
    for name in [n for n in sys.modules if n.startswith(("inweights.serve.", "inweights.evaluate.rag"))
                 and n != "inweights.serve.config"]:
        monkeypatch.delitem(sys.modules, name)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fix in err and "Traceback" not in err and err.count("\n") == 1


def test_a_missing_module_we_do_not_depend_on_is_a_bug_with_its_traceback():
    from inweights.errors import missing_dependency

    assert missing_dependency(ModuleNotFoundError("no", name="not_a_dependency_of_ours")) is None


def test_demo_on_the_wiki_corpus_reports_each_question_form(tmp_path, workspace, tiny_model_dir, capsys):
    import json

    out = tmp_path / "demo.json"
    assert main(["demo", "--corpus", "wiki", "--base", str(tiny_model_dir), "--epochs", "1", "--replay-fraction",
                 "0", "--max-steps", "2", "--no-progress", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["corpus"] == "wiki" and result["memory"] == "demo-wiki@1" and result["questions"] == 40
    assert set(result["accuracy_by_form"]) == {"copied", "paraphrased", "reversed", "two-hop"}
    assert sum(f["n"] for f in result["accuracy_by_form"].values()) == 40
    assert "two-hop" in capsys.readouterr().out


def test_eval_takes_the_perplexity_over_the_wikitext_tokens_asked_for(tmp_path, monkeypatch, capsys):
    from inweights.evaluate import harness

    seen = []

    def fake_eval_memory(memory, questions, docs, conditions, limit, limits, data, out, **kwargs):
        seen.append(limits)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text("report\n")

    monkeypatch.setattr(harness, "eval_memory", fake_eval_memory)
    out = tmp_path / "eval"
    assert main(["eval", "acme", "q.jsonl", "--out", str(out)]) == 0
    assert main(["eval", "acme", "q.jsonl", "--out", str(out), "--wikitext-tokens", "16384"]) == 0
    assert [limits.wikitext_tokens for limits in seen] == [4096, 16384]
    assert main(["eval", "acme", "q.jsonl", "--out", str(out), "--wikitext-tokens", "-1"]) == 2
    assert "--wikitext-tokens" in capsys.readouterr().err and len(seen) == 2
