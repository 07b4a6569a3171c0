"""Model folders a hostile publisher could ship, built from the tiny checkpoints of `tests.tiny`.

- `hostile_index_model`: the weights merged in `model.safetensors` (what transformers loads), beside a
  shard index whose shard names point at a file outside the folder (`victim_file`).
- `foreign_code_model`: a checkpoint carrying its own Python (a tokenizer, a config, a `modeling_*.py`,
  even a `modeling_fwdprune.py` of fwdprune's name) registered in `auto_map`; importing any of it writes
  `FOREIGN_CODE_MARKER` beside the folder, so a test sees whether it ever ran.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tests.tiny import make_tiny_causal_lm

VICTIM_NAME = "model-00002-of-00007.safetensors"
FOREIGN_CODE_MARKER = "foreign-code-ran"
FOREIGN_FILES = ("tokenization_evil.py", "configuration_evil.py", "modeling_evil.py", "modeling_fwdprune.py")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def victim_file(directory: Path, like: Path) -> Path:
    """A safetensors file outside any model folder, holding the tensors of the model in `like` (a folder
    with a merged `model.safetensors`): what an export that trusted the index would read and rewrite."""
    directory.mkdir(parents=True, exist_ok=True)
    victim = directory / VICTIM_NAME
    shutil.copyfile(like / "model.safetensors", victim)
    return victim


def hostile_index_model(out_dir: Path, shard_name: str) -> Path:
    """A tiny Llama with its weights merged in `model.safetensors`, and beside it an index mapping every
    tensor to `shard_name` (an absolute path, `../x.safetensors`, ...)."""
    make_tiny_causal_lm(out_dir, "llama", max_shard_size="10MB")
    assert (out_dir / "model.safetensors").is_file()
    from safetensors import safe_open

    with safe_open(out_dir / "model.safetensors", framework="pt") as handle:
        names = list(handle.keys())
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, shard_name)}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def foreign_code_model(out_dir: Path, **tiny: Any) -> Path:
    """A tiny sharded Llama shipping code of its own, named in config.json's and tokenizer_config.json's
    `auto_map` (and a `custom_pipelines` entry); each of its modules writes FOREIGN_CODE_MARKER beside the
    folder when imported. `tiny`: make_tiny_causal_lm's shape settings."""
    make_tiny_causal_lm(out_dir, "llama", **tiny)
    marker = out_dir.parent / FOREIGN_CODE_MARKER
    for name in FOREIGN_FILES:
        (out_dir / name).write_text(
            f"from pathlib import Path\n\nPath({str(marker)!r}).write_text({name!r})\n"
            "raise ImportError('foreign code ran')\n"
        )
    tokenizer_config = json.loads((out_dir / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    config = json.loads((out_dir / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
        "AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"],
    }
    config["custom_pipelines"] = {"text-generation": {"impl": "modeling_evil.EvilPipeline", "pt": []}}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def assert_no_foreign_code(out: Path, source: Path) -> None:
    """`out` (an export of `source`, a `foreign_code_model`) carries no code of the input's and names
    none: the only .py file is fwdprune's own modeling code, which is the only module `auto_map` names;
    loading the checkpoint's tokenizer and config with trust_remote_code=True runs nothing of the input's."""
    from transformers import AutoConfig, AutoTokenizer

    from pruning.export.remote_code import modeling_decilm, modeling_fwdprune

    ours = {
        "modeling_fwdprune.py": Path(modeling_fwdprune.__file__).read_bytes(),
        "modeling_decilm.py": Path(modeling_decilm.__file__).read_bytes(),
    }
    code = sorted(p.name for p in out.iterdir() if p.suffix in (".py", ".pyc", ".so"))
    assert all(name in ours for name in code), code
    for name in code:
        assert (out / name).read_bytes() == ours[name], name
    for path in out.glob("*.json"):
        content = json.loads(path.read_text())
        if not isinstance(content, dict):
            continue
        assert "custom_pipelines" not in content, path.name
        auto_map = content.get("auto_map")
        if path.name != "config.json":
            assert auto_map is None, (path.name, auto_map)
        elif auto_map is not None:
            assert {target.split(".")[0] + ".py" for target in auto_map.values()} <= set(code), auto_map
    AutoConfig.from_pretrained(out, trust_remote_code=True)
    AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert not (source.parent / FOREIGN_CODE_MARKER).exists()
