"""kb.report.clean_report: what a pasted issue keeps and loses before it is searched."""

from __future__ import annotations

import pytest

from kb.report import SHORT_QUERY_CHARS, clean_report

ISSUE = """\
### Reminder

- [X] I have read the README and searched the existing issues.

### System Info

- `llamafactory` version: 0.9.2
- Python version: 3.11.9
- PyTorch version: 2.5.1+cu124 (GPU)
- Transformers version: 4.49.0
- GPU type: NVIDIA H100 80GB HBM3
- GPU number: 8

### Reproduction

Full SFT of our 14B model: after the first save the run crashes on every node.

```
[rank5]: Traceback (most recent call last):
[rank5]:   File "/usr/local/lib/python3.11/site-packages/transformers/trainer.py", line 2241, in train
[rank5]:     return inner_training_loop(
[rank5]:            ^^^^^^^^^^^^^^^^^^^^
[rank5]:   File "/workspace/LLaMA-Factory/src/llamafactory/train/sft/workflow.py", line 88, in run_sft
[rank5]:     train_result = trainer.train(resume_from_checkpoint=ckpt)
[rank5]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error
```

### Expected behavior

保存 checkpoint 之后训练应该继续。

### Others

_No response_
"""


def test_issue_keeps_description_versions_and_final_error() -> None:
    cleaned = clean_report(ISSUE)
    assert "Full SFT of our 14B model: after the first save the run crashes on every node." in cleaned
    assert "- `llamafactory` version: 0.9.2" in cleaned and "- GPU number: 8" in cleaned
    assert "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error" in cleaned
    assert "保存 checkpoint 之后训练应该继续。" in cleaned


@pytest.mark.parametrize(
    "gone",
    [
        "Reminder", "I have read the README", "System Info", "Reproduction", "Expected behavior", "Others",
        "No response", "Traceback", 'File "', "inner_training_loop", "^^^", "train_result", "[rank5]",
        "site-packages", "/workspace", "```",
    ],
)
def test_issue_loses_template_frames_paths_and_rank_tags(gone: str) -> None:
    assert gone not in clean_report(ISSUE)


def test_chained_tracebacks_keep_each_final_line() -> None:
    paste = """\
the optimizer step fails when offloading
Traceback (most recent call last):
  File "train.py", line 10, in <module>
    step()
KeyError: 'exp_avg'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "train.py", line 12, in <module>
    recover()
RuntimeError: optimizer state could not be restored
"""
    assert clean_report(paste).splitlines() == [
        "the optimizer step fails when offloading",
        "KeyError: 'exp_avg'",
        "RuntimeError: optimizer state could not be restored",
    ]


def test_traceback_pasted_without_indentation() -> None:
    paste = 'Traceback (most recent call last):\nFile "run.py", line 3, in <module>\nmodel.generate(ids)\ntorch.OutOfMemoryError: CUDA out of memory.\nit happens at batch 1'
    assert clean_report(paste).splitlines() == ["torch.OutOfMemoryError: CUDA out of memory.", "it happens at batch 1"]


def test_log_prefixes_timestamps_ansi_and_addresses() -> None:
    paste = (
        "[2025-03-04 09:15:27,441] [INFO] [logging.py:128:log_dist] [Rank 0] step=200, skipped=3\n"
        "03/04/2025 09:15:30 - WARNING - trainer - gradient overflow, loss scale halved\n"
        "node7:9911:9950 [2] NCCL INFO Channel 00/0 : 2[2] -> 3[3] via P2P/IPC\n"
        "\x1b[1;31mERROR\x1b[0m segfault at 0x7fa3c19e20b0 id 3f9a0c2e7d41b8a6\n"
    )
    assert clean_report(paste).splitlines() == [
        "step=200, skipped=3",
        "trainer - gradient overflow, loss scale halved",
        "NCCL INFO Channel 00/0 : 2[2] -> 3[3] via P2P/IPC",
        "segfault at id",
    ]


@pytest.mark.parametrize(
    "query",
    [
        "gemma3 loss 70 zero3",
        "预训练 loss 停在 2.8 不降",
        "Windows 上装 CUDA 驱动报错 0x80070005",
        "Qwen/Qwen2.5-7B-Instruct lora: loss 0 after step 10, lr 2e-5, 4x3090",
        "loss/acc plots look odd: tokens/s drop and/or grad norm spikes - _No response_",
        "### Reproduction",
    ],
)
def test_short_query_is_unchanged(query: str) -> None:
    assert clean_report(query) == query


@pytest.mark.parametrize(
    "query,expected",
    [
        ("[Rank 3] NCCL watchdog timeout", "NCCL watchdog timeout"),
        ("[rank1]: RuntimeError: CUDA error: an illegal memory access", "RuntimeError: CUDA error: an illegal memory access"),
        ('File "/opt/conda/lib/python3.10/site-packages/...", line 12', 'File "", line 12'),
        ("crash in ./src/train_bash.py:57 with zero3", "crash in with zero3"),
        (r"error in C:\Users\me\envs\torch\lib\site-packages\bitsandbytes\cuda_setup.py on start", "error in on start"),
        ("loading /data/ckpt/Meta-Llama-3-8B fails", "loading Meta-Llama-3-8B fails"),
    ],
)
def test_short_query_loses_rank_tags_and_paths(query: str, expected: str) -> None:
    assert clean_report(query) == expected


def test_urls_keep_their_path_and_lose_the_query_string() -> None:
    paste = "same as https://github.com/org/repo/issues/42?utm_source=chat#issuecomment-1 but on npu\nsecond line"
    assert clean_report(paste).splitlines()[0] == "same as https://github.com/org/repo/issues/42 but on npu"


def test_long_single_line_is_cleaned_like_a_paste() -> None:
    line = "[2025-01-02 03:04:05] " + "loss stays at 2.3 " * (SHORT_QUERY_CHARS // 10)
    assert clean_report(line).startswith("loss stays at 2.3")


@pytest.mark.parametrize(
    "text",
    ["", "\n\n\n", "### \n" * 50, " " * 5000, "-" * 5000, "/" * 5000, "a/" * 3000 + ".py", "#" * 4000 + "x"],
)
def test_degenerate_input_does_not_break(text: str) -> None:
    assert isinstance(clean_report(text), str)
