"""The serving engines' own parsers, read into the checked-in tables that CI checks emitted arguments against.

``tests/conformance/data/vllm_0.34.0.json`` and ``sglang_0.5.23.json`` are generated from the engines'
parsers, imported on a CPU in a separate virtual environment (the engines pin CUDA builds of PyTorch and
their kernels; the parsers need neither):

    python3.11 -m venv /tmp/s4/servevenv && . /tmp/s4/servevenv/bin/activate
    pip install torch==2.13.0+cpu (any CPU build), then --no-deps vllm==0.34.0 sglang==0.5.23, then
    regex cachetools psutil numpy requests tqdm "transformers>=5.16.1,<5.23" huggingface_hub pydantic msgspec
    pyyaml typing_extensions filelock cloudpickle pyzmq openai fastapi aiohttp orjson prometheus_client pillow
    cbor2 einops safetensors sentencepiece tokenizers blake3 py-cpuinfo setproctitle partial-json-parser
    pybase64 uvicorn uvloop python-multipart xxhash llguidance xgrammar IPython openai-harmony
    VLLM_TARGET_DEVICE=cpu PYTHONPATH=. python -m tests.conformance.serving_engines --refresh

(``VLLM_TARGET_DEVICE=cpu`` lets vLLM's CUDA wheel pick its CPU platform at import.)

TensorRT-LLM 1.2.1 is not importable here: its PyPI release is a stub that downloads the wheel from NVIDIA's
own index at install time, and its repository is too large to fetch. ``trtllm_1.2.1.json`` was therefore
written from the source of ``tensorrt_llm/commands/serve.py`` (click options of ``serve`` and
``disaggregated``) and ``tensorrt_llm/llmapi/llm_args.py`` (``TorchLlmArgs`` and the sub-configs the emitter
writes); :func:`trtllm_tables` regenerates it from a TensorRT-LLM source tree (``TRTLLM_ROOT`` at tag v1.2.1)
by reading those two files' syntax trees, without importing them.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
VLLM_FILE = DATA / "vllm_0.34.0.json"
SGLANG_FILE = DATA / "sglang_0.5.23.json"
TRTLLM_FILE = DATA / "trtllm_1.2.1.json"


def _kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "switch"
    return "values" if action.nargs in ("+", "*") else "value"


def option_table(parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    """``--flag -> {"kind": switch|value|values, "choices": [...] or None}`` for every long option."""
    table: dict[str, dict[str, Any]] = {}
    for action in parser._actions:
        choices = sorted(str(c) for c in action.choices) if action.choices else None
        for flag in action.option_strings:
            if flag.startswith("--"):
                table[flag] = {"kind": _kind(action), "choices": choices}
    return dict(sorted(table.items()))


def literal_values(tp: Any) -> list[str]:
    """The strings of a (nested) ``Literal``."""
    out: list[str] = []
    for arg in typing.get_args(tp):
        out += literal_values(arg) if typing.get_args(arg) else [arg] if isinstance(arg, str) else []
    return out


def vllm_tables() -> dict[str, Any]:
    """vLLM 0.34.0's ``vllm serve`` options, its ``--speculative-config`` and ``--kv-transfer-config`` fields and
    the choices its ``Literal`` types allow (``--kv-cache-dtype``, ``--quantization``, speculative methods, KV
    roles, KV connectors)."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    import vllm
    from vllm.config.cache import CacheDType
    from vllm.config.kv_transfer import KVRole, KVTransferConfig
    from vllm.config.speculative import SpeculativeConfig, SpeculativeMethod
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.model_executor.layers.quantization import QuantizationMethods
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    return {
        "engine": "vllm", "version": vllm.__version__,
        "source": "vllm.entrypoints.common.cli_args.make_arg_parser (vllm serve) with EngineArgs.add_cli_args",
        "options": option_table(parser),
        "value_choices": {"--kv-cache-dtype": literal_values(CacheDType),
                          "--quantization": literal_values(QuantizationMethods)},
        "json_options": {
            "--speculative-config": {"fields": sorted(f.name for f in dataclasses.fields(SpeculativeConfig)),
                                     "choices": {"method": literal_values(SpeculativeMethod)}},
            "--kv-transfer-config": {"fields": sorted(f.name for f in dataclasses.fields(KVTransferConfig)),
                                     "choices": {"kv_role": literal_values(KVRole),
                                                 "kv_connector": sorted(KVConnectorFactory._registry)}},
        },
    }


def sglang_tables() -> dict[str, Any]:
    """SGLang 0.5.23's ``sglang.launch_server`` options (``ServerArgs.add_cli_args``)."""
    import sglang
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return {"engine": "sglang", "version": sglang.__version__,
            "source": "sglang.srt.server_args.ServerArgs.add_cli_args (python -m sglang.launch_server)",
            "options": option_table(parser)}


# --- TensorRT-LLM from its source, without importing it ---------------------------------------------------------

TRTLLM_MODELS = ("TorchLlmArgs", "BaseLlmArgs", "KvCacheConfig", "CudaGraphConfig", "CacheTransceiverConfig",
                 "MoeConfig", "MTPDecodingConfig", "Eagle3DecodingConfig", "EagleDecodingConfig", "NGramDecodingConfig",
                 "DecodingBaseConfig")
"""The pydantic models whose fields the emitted YAML may name."""


def click_options(tree: ast.Module, command: str) -> dict[str, dict[str, Any]]:
    """``--flag -> {"kind", "choices"}`` of the ``@click.option`` decorators of the click command named ``command``."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        decorators = [d for d in node.decorator_list if isinstance(d, ast.Call)]
        names = [d.args[0].value for d in decorators if getattr(d.func, "attr", "") == "command" and d.args
                 and isinstance(d.args[0], ast.Constant)]
        if command not in names:
            continue
        table = {}
        for d in decorators:
            if getattr(d.func, "attr", "") != "option":
                continue
            flags = [a.value for a in d.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
            keywords = {k.arg: k.value for k in d.keywords}
            switch = isinstance(keywords.get("is_flag"), ast.Constant) and keywords["is_flag"].value is True
            choices = None
            kind_node = keywords.get("type")
            if isinstance(kind_node, ast.Call) and kind_node.args and isinstance(kind_node.args[0], (ast.List, ast.Tuple)):
                choices = sorted(e.value for e in kind_node.args[0].elts if isinstance(e, ast.Constant))
            for flag in flags:
                table[flag] = {"kind": "switch" if switch else "value", "choices": choices}
        return dict(sorted(table.items()))
    raise LookupError(f"no click command {command!r}")


def pydantic_fields(tree: ast.Module) -> dict[str, list[str]]:
    """Field names of each class of :data:`TRTLLM_MODELS`, its bases' fields included (annotated assignments in
    the class body, ``ClassVar`` excluded)."""
    classes = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}

    def own(name: str) -> list[str]:
        node = classes.get(name)
        if node is None:
            return []
        names = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                 and "ClassVar" not in ast.unparse(s.annotation) and not s.target.id.startswith("_")]
        for base in node.bases:
            names += own(ast.unparse(base).split(".")[-1])
        return names

    return {name: sorted(set(own(name))) for name in TRTLLM_MODELS if name in classes}


def trtllm_tables(root: Path) -> dict[str, Any]:
    """TensorRT-LLM's ``trtllm-serve`` options and LLM-API fields from the source tree at ``root``."""
    serve = ast.parse((root / "tensorrt_llm" / "commands" / "serve.py").read_text())
    args = ast.parse((root / "tensorrt_llm" / "llmapi" / "llm_args.py").read_text())
    version = ast.parse((root / "tensorrt_llm" / "version.py").read_text())
    number = next(n.value.value for n in version.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", "") == "__version__")
    return {"engine": "trtllm", "version": number,
            "source": "tensorrt_llm/commands/serve.py (click) and tensorrt_llm/llmapi/llm_args.py (pydantic), by syntax tree",
            "options": click_options(serve, "serve"), "disaggregated_options": click_options(serve, "disaggregated"),
            "models": pydantic_fields(args)}


def write(path: Path, table: dict[str, Any]) -> None:
    path.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")


def refresh(engines: tuple[str, ...] = ("vllm", "sglang")) -> None:
    """Regenerate the checked-in tables of ``engines`` (``trtllm`` needs ``TRTLLM_ROOT``)."""
    if "vllm" in engines:
        write(VLLM_FILE, vllm_tables())
    if "sglang" in engines:
        write(SGLANG_FILE, sglang_tables())
    if "trtllm" in engines:
        write(TRTLLM_FILE, trtllm_tables(Path(os.environ["TRTLLM_ROOT"])))


if __name__ == "__main__":
    if "--refresh" in sys.argv:
        refresh(tuple(a for a in sys.argv[2:] if not a.startswith("-")) or ("vllm", "sglang"))
