"""Whether a run may continue from its checkpoint: the same tokenizer, the same data, a compatible config."""

from __future__ import annotations

from collections.abc import Callable

from jaxgpt.core.config import TrainConfig, resume_changes
from jaxgpt.data.tokenizers import Tokenizer, describe
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError


def check_tokenizer_unchanged(run_dir: RunDir, tokenizer: Tokenizer, data: str) -> None:
    """A resumed run reads tokens of the tokenizer it was trained with (a clearer error than the data's sha256)."""
    saved = run_dir.read_tokenizer()
    if saved.fingerprint() != tokenizer.fingerprint():
        raise UsageError(f"cannot resume {run_dir}: it was trained on {describe(saved, tokenizer)}, but {data} holds "
                         f"{describe(tokenizer, saved)}; resume with the data the run was trained on, or start a new "
                         "--out_dir")


def check_checkpoint(meta: dict, where: str, config: TrainConfig, data_sha256: str,
                     log: Callable[[str], None]) -> None:
    """Refuse a checkpoint (its `meta`, found `where`) of another model, optimizer or training text; log the
    settings that changed and make the continuation differ."""
    changed = resume_changes(TrainConfig.from_dict(meta["config"]), config, where)
    if meta["data_sha256"] != data_sha256:
        raise UsageError(f"cannot resume from {where}: the training text differs from the checkpoint's "
                         "(sha256 mismatch); use the same --data_path")
    if changed:
        log(f"resuming with changed settings: {', '.join(changed)}")
